"""Scope-checked return path for a sandboxed task's datastore files and metadata."""

from .artifact_check import SAFE_GLOBALS, artifact_problems, pickle_problem, trust_rule
from .datastore_ingest import apply_to_datastore
from .local_metadata import apply_local_metadata
from .scope import RelayRefusedError, TaskScope
from .service_replay import ServiceReplayError, replay_to_service
from .sources import LocalStaging, S3Staging
from .staging import Limits, StagedTask, collect_staged_task

__version__ = "0.1.0"

__all__ = [
    "SAFE_GLOBALS",
    "Limits",
    "LocalStaging",
    "RelayRefusedError",
    "S3Staging",
    "ServiceReplayError",
    "StagedTask",
    "TaskScope",
    "apply_local_metadata",
    "apply_to_datastore",
    "artifact_problems",
    "collect_staged_task",
    "pickle_problem",
    "replay_to_service",
    "trust_rule",
]
