"""Configuration of metaflow-sandbox. Each name X here is read from METAFLOW_X (or Metaflow's config file)."""

from metaflow.metaflow_config_funcs import from_conf

# Backend used by @sandbox when the decorator names none (else the strongest local isolation that works).
SANDBOX_BACKEND = from_conf("SANDBOX_BACKEND")
# Where extracted code packages and staging trees live on the launcher (default ~/.cache/metaflow-sandbox).
SANDBOX_CACHE_DIR = from_conf("SANDBOX_CACHE_DIR")
# "fast": the runtime spawns a light launcher that does not import metaflow or the flow (default);
# "cli": it spawns `python flow.py sandbox step ...` like @batch does.
SANDBOX_LAUNCHER = from_conf("SANDBOX_LAUNCHER", "fast")
