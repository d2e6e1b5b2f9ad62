"""Scope-checked return path for a sandboxed task's datastore files and metadata."""

from .datastore_ingest import apply_to_datastore
from .local_metadata import apply_local_metadata
from .scope import RelayRefusedError, TaskScope
from .service_replay import ServiceReplayError, replay_to_service
from .sources import LocalStaging, S3Staging
from .staging import Limits, StagedTask, collect_staged_task

__version__ = "0.1.0"

__all__ = [
    "Limits",
    "LocalStaging",
    "RelayRefusedError",
    "S3Staging",
    "ServiceReplayError",
    "StagedTask",
    "TaskScope",
    "apply_local_metadata",
    "apply_to_datastore",
    "collect_staged_task",
    "replay_to_service",
]
