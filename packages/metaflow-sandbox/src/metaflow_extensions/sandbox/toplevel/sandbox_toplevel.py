"""Runs at the end of `import metaflow`. Inside a sandbox it stages datastore writes before any task code
runs, whatever decorators the flow has there. Exports nothing."""

import os as _os

from metaflow_extensions.sandbox.plugins.sandbox.attributes import DATASTORE_STAGING_ENV as _DATASTORE_STAGING
from metaflow_extensions.sandbox.plugins.sandbox.attributes import STAGING_ENV as _STAGING

if _os.environ.get(_STAGING):
    from metaflow_extensions.sandbox.plugins.sandbox.staged_storage import install_staged_storage as _install

    _install(_os.environ[_STAGING], _os.environ.get(_DATASTORE_STAGING))
