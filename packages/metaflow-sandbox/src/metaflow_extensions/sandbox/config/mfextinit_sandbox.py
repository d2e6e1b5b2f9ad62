"""Configuration of metaflow-sandbox. Each name X here is read from METAFLOW_X (or Metaflow's config file)."""

from metaflow.metaflow_config_funcs import from_conf

# Backend used by @sandbox when the decorator names none (else the strongest local isolation that works).
SANDBOX_BACKEND = from_conf("SANDBOX_BACKEND")
# Where extracted code packages and staging trees live on the launcher (default ~/.cache/metaflow-sandbox).
SANDBOX_CACHE_DIR = from_conf("SANDBOX_CACHE_DIR")
# Where a sandboxed task's executor runs: "host" (default): in the user's warm sandbox host, the task process
# being its thin client; "process": in the task process itself (a light launcher that does not import
# metaflow or the flow; "fast" is the old name); "cli": `python flow.py sandbox step ...`, like @batch.
SANDBOX_LAUNCHER = from_conf("SANDBOX_LAUNCHER", "host")
# Seconds the sandbox host waits without a task before it exits (METAFLOW_SANDBOX_HOST_IDLE; default 600).
SANDBOX_HOST_IDLE = from_conf("SANDBOX_HOST_IDLE", 600)
# The interpreter a sandbox runs the step with (default: the launcher's own; for bubblewrap it may be any
# Python environment on this machine, e.g. a clean venv without metaflow).
SANDBOX_PYTHON = from_conf("SANDBOX_PYTHON")
# A micromamba binary for remote sandboxes running @pypi/@conda steps (default: the launcher's own, when the
# launcher is the sandbox's platform); it reaches the sandbox through the datastore, never the internet.
SANDBOX_MICROMAMBA = from_conf("SANDBOX_MICROMAMBA")
# How a sandbox gets S3 datastore credentials: "sts" (short-lived, scoped to the flow's prefix; default),
# "forward" (the launcher's own keys; warned about), "none".
SANDBOX_S3_CREDENTIALS = from_conf("SANDBOX_S3_CREDENTIALS", "sts")
# What one sandboxed task's results may cost the launcher to check: bytes read plus bytes inflated (default
# 16 GiB), and seconds (default 1800). A task past either fails (exit 202) and nothing of it is applied.
SANDBOX_MAX_RESULT_BYTES = from_conf("SANDBOX_MAX_RESULT_BYTES", 16 << 30)
SANDBOX_RELAY_TIMEOUT = from_conf("SANDBOX_RELAY_TIMEOUT", 1800)
# The largest artifact (bytes, as pickled) a sandboxed step without memory= may return (default 1 GiB); with
# memory= the bound is the step's memory, where the artifact was pickled.
SANDBOX_MAX_ARTIFACT_BYTES = from_conf("SANDBOX_MAX_ARTIFACT_BYTES", 1 << 30)
# Comma-separated names or shell patterns added to the built-in deny list of variables that never enter a
# sandbox (env_denylist.DEFAULT_DENYLIST).
SANDBOX_ENV_DENYLIST = from_conf("SANDBOX_ENV_DENYLIST", "")
# Create the sandboxes of a foreach's next tasks while earlier ones run (at most --max-workers ahead; each still
# serves exactly one task attempt). 0 turns it off.
SANDBOX_PREWARM = from_conf("SANDBOX_PREWARM", 1)
# Print each sandboxed task's phase timings (prepare, sandbox, relay, cleanup).
SANDBOX_TIMINGS = from_conf("SANDBOX_TIMINGS", False)
