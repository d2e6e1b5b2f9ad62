"""Replaying a staged task's metadata to a Metaflow metadata service."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping


class ServiceReplayError(Exception):
    """The metadata service did not accept the records."""


def _post(url: str, payload: list, headers: Mapping[str, str], attempts: int = 3) -> None:
    body = json.dumps(payload).encode("utf-8")
    request_headers = {"Content-Type": "application/json", **headers}
    for attempt in range(attempts):
        request = urllib.request.Request(url, data=body, headers=request_headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                response.read()
                return
        except urllib.error.HTTPError as error:
            if error.code < 500 or attempt == attempts - 1:
                raise ServiceReplayError(f"POST {url} answered {error.code}: {error.read()[:200]!r}")
        except OSError as error:
            if attempt == attempts - 1:
                raise ServiceReplayError(f"cannot reach the metadata service at {url}: {error}")
        time.sleep(0.5 * 2**attempt)


def replay_to_service(
    records: list[tuple[str, dict]],
    task_path: tuple[str, ...],
    service_url: str,
    headers: Mapping[str, str] | None = None,
) -> int:
    """POST the task's (vetted) artifact and metadata records; return how many records were sent.

    The task itself (`_self`) was registered by the launcher's runtime, so it is not replayed.
    """
    quoted = [urllib.parse.quote(part, safe="") for part in task_path]
    base = "{}/flows/{}/runs/{}/steps/{}/tasks/{}".format(service_url.rstrip("/"), *quoted)
    artifacts = [record for name, record in records if "_artifact_" in name]
    metadata = [record for name, record in records if name.startswith("sysmeta_")]
    if artifacts:
        _post(base + "/artifact", artifacts, headers or {})
    if metadata:
        _post(base + "/metadata", metadata, headers or {})
    return len(artifacts) + len(metadata)
