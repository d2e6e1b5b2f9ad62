"""Scope-checked return path for a sandboxed task's datastore files and metadata."""

from .artifact_check import SAFE_GLOBALS, TrustRule, artifact_problems, pickle_problem, trust_rule
from .blob_check import BlobRefused, Budget, blob_matches_name, copy_verified_blob
from .datastore_ingest import apply_to_datastore
from .local_metadata import apply_local_metadata
from .pickle_scan import PickleRefused, scan_pickle
from .scope import RelayRefusedError, TaskScope
from .service_replay import ServiceReplayError, replay_to_service
from .sources import LocalStaging, S3Staging, StagedTree, extract_bounded
from .staging import Limits, StagedTask, collect_staged_task
from .stores import Datastore, LocalDatastore, S3Datastore, each
from .vetting import TaskPolicy, VettedTask, input_files, parent_artifacts, vet_task

__version__ = "0.1.0"

__all__ = [
    "SAFE_GLOBALS",
    "BlobRefused",
    "Budget",
    "Datastore",
    "Limits",
    "LocalDatastore",
    "LocalStaging",
    "PickleRefused",
    "RelayRefusedError",
    "S3Datastore",
    "S3Staging",
    "ServiceReplayError",
    "StagedTask",
    "StagedTree",
    "TaskPolicy",
    "TaskScope",
    "TrustRule",
    "VettedTask",
    "apply_local_metadata",
    "apply_to_datastore",
    "artifact_problems",
    "blob_matches_name",
    "collect_staged_task",
    "copy_verified_blob",
    "each",
    "extract_bounded",
    "input_files",
    "parent_artifacts",
    "pickle_problem",
    "replay_to_service",
    "scan_pickle",
    "trust_rule",
    "vet_task",
]
