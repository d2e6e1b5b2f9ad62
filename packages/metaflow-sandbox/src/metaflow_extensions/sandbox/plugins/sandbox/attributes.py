"""The decorator attributes and their defaults (no imports: loaded inside sandboxes too)."""

ATTRIBUTE_DEFAULTS = {
    "backend": None,
    "image": None,
    "cpu": None,
    "memory": None,
    "gpu": None,
    "disk": None,
    "timeout": None,
    "env": None,
    "network": None,
    "options": None,
    "trusted_types": None,
}

#: Set inside a sandbox to the task's private staging directory (its local metadata; for the local
#: datastore also its datastore writes).
STAGING_ENV = "METAFLOW_SANDBOX_STAGING"
#: Set inside a sandbox to the staging root of a remote datastore (an s3:// prefix).
DATASTORE_STAGING_ENV = "METAFLOW_SANDBOX_DATASTORE_STAGING"
