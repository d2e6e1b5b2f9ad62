"""Runs at the end of `import metaflow`. Inside a sandbox it stages datastore writes before any task code
runs, whatever decorators the flow has there. Exports nothing."""

import os as _os

if _os.environ.get("METAFLOW_SANDBOX_STAGING"):
    from metaflow_extensions.sandbox.plugins.sandbox.staged_storage import install_staged_storage as _install

    _install(_os.environ["METAFLOW_SANDBOX_STAGING"], _os.environ.get("METAFLOW_SANDBOX_DATASTORE_STAGING"))
