"""The boxlite REST emulator: its wire behaviour from boxlite's OpenAPI spec (raw HTTP), and the REAL boxlite
SDK's REST client against it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("aiohttp", reason='needs metaflow-sandbox-testing[boxlite] (pip install ".[boxlite]")')
boxlite = pytest.importorskip("boxlite", reason='needs the boxlite SDK (pip install ".[boxlite]")')

from metaflow_sandbox_testing.boxlite_emulator import BoxliteEmulator  # noqa: E402
from metaflow_sandbox_testing.local_web import REACH_PROBE, EgressTargets  # noqa: E402

PREFIX = "org-1/team"  # a multi-segment routing slot


@pytest.fixture(scope="module")
def server() -> Iterator[BoxliteEmulator]:
    with BoxliteEmulator(python=sys.executable, prefix=PREFIX) as emulator:
        yield emulator


@pytest.fixture
def emulator(server: BoxliteEmulator) -> Iterator[BoxliteEmulator]:
    server.reset_faults()
    yield server
    server.reset_faults()
    for box in server.live_boxes():
        server.kill_box(box["box_id"])


def http(
    emulator: BoxliteEmulator, method: str, path: str, body: Any = None, key: str | None = "ok"
) -> tuple[int, Any]:
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {emulator.api_key if key == 'ok' else key}"
    request = urllib.request.Request(emulator.url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw and raw[:1] in b"{[" else raw
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def run(coroutine: Any) -> Any:
    async def settle() -> Any:
        try:
            return await coroutine
        finally:
            await asyncio.sleep(0.2)  # the SDK's threads settle before the loop closes

    return asyncio.run(settle())


def test_config_needs_no_key_and_everything_else_does(emulator: BoxliteEmulator) -> None:
    status, config = http(emulator, "GET", "/v1/config", key=None)
    assert status == 200 and config["capabilities"]["streaming_enabled"] is True
    status, error = http(emulator, "GET", f"/v1/{PREFIX}/boxes", key=None)
    assert status == 401 and error["error"]["code"] == "unauthenticated"
    status, me = http(emulator, "GET", "/v1/me")
    assert status == 200 and me["path_prefix"] == PREFIX


def test_routes_and_create_request_follow_the_spec(emulator: BoxliteEmulator) -> None:
    assert http(emulator, "GET", "/v1/boxes")[0] == 404  # boxes live under the routing slot
    status, error = http(emulator, "POST", f"/v1/{PREFIX}/boxes", {"image": "x", "isolation": "none"})
    assert status == 400 and error["error"]["type"] == "InvalidArgumentError"  # additionalProperties: false
    status, error = http(emulator, "POST", f"/v1/{PREFIX}/boxes", {"cpus": 64})
    assert status == 400
    status, box = http(emulator, "POST", f"/v1/{PREFIX}/boxes", {"name": "b-1", "cpus": 2})
    assert status == 201 and box["status"] == "configured"
    assert {"box_id", "status", "created_at", "updated_at", "image", "cpus", "memory_mib"} <= set(box)
    assert http(emulator, "POST", f"/v1/{PREFIX}/boxes", {"name": "b-1"})[0] == 409
    assert http(emulator, "GET", f"/v1/{PREFIX}/boxes/b-1")[1]["box_id"] == box["box_id"]  # by name too
    assert http(emulator, "DELETE", f"/v1/{PREFIX}/boxes/{box['box_id']}")[0] == 204
    status, error = http(emulator, "GET", f"/v1/{PREFIX}/boxes/{box['box_id']}")
    assert status == 404 and error["error"]["code"] == "not_found"  # a removed box is gone


def test_files_as_tar_only_inside_the_box(emulator: BoxliteEmulator) -> None:
    _, box = http(emulator, "POST", f"/v1/{PREFIX}/boxes", {})
    (record,) = emulator.live_boxes()
    home = os.path.join(record["root"], "root")
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        info = tarfile.TarInfo("a/b.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    base = f"/v1/{PREFIX}/boxes/{box['box_id']}/files?path="
    assert http(emulator, "PUT", base + home, archive.getvalue())[0] == 204
    status, raw = http(emulator, "GET", base + f"{home}/a/b.txt")
    assert status == 200
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        assert tar.extractfile("b.txt").read() == b"abc"  # type: ignore[union-attr]
    assert http(emulator, "PUT", base + "/tmp/x", archive.getvalue())[0] == 400  # outside the box's disk
    assert http(emulator, "GET", base + f"{home}/missing")[0] == 404


def test_faults_are_validated_and_fire_on_events(emulator: BoxliteEmulator) -> None:
    with pytest.raises(ValueError, match="kill_marker"):
        emulator.faults(kill_on_marker=1)
    with pytest.raises(ValueError, match="unknown fault"):
        emulator.faults(after_seconds=3)
    emulator.faults(fail_creates=1, fail_status=429, retry_after=2)
    status, error = http(emulator, "POST", f"/v1/{PREFIX}/boxes", {})
    assert status == 429 and error["error"]["code"] == "resource_exhausted"
    assert http(emulator, "POST", f"/v1/{PREFIX}/boxes", {})[0] == 201  # only the next one failed


def test_real_sdk_streams_apart_and_sees_exit_codes(emulator: BoxliteEmulator) -> None:
    options = boxlite.BoxliteRestOptions(
        url=emulator.url, credential=boxlite.ApiKeyCredential(emulator.api_key), path_prefix=PREFIX
    )

    async def scenario() -> tuple[list[str], list[str], int, bool]:
        runtime = boxlite.Boxlite.rest(options)
        box = await runtime.create(boxlite.BoxOptions(env=[("BOX_ENV", "1")]), name="sdk-box")
        execution = await box.exec(
            "sh", ["-c", 'echo "o:$BOX_ENV:$RUN_ENV"; echo e >&2; printf "é"; exit 7'], env=[("RUN_ENV", "2")]
        )

        async def drain(stream: Any) -> list[str]:
            return [item async for item in stream]

        out, err = await asyncio.gather(drain(execution.stdout()), drain(execution.stderr()))
        code = (await execution.wait()).exit_code
        await runtime.remove(box.id, force=True)
        return out, err, code, await runtime.get_info(box.id) is None

    out, err, code, gone = run(scenario())
    assert "".join(out) == "o:1:2\né" and err == ["e\n"] and code == 7 and gone


def test_a_client_that_leaves_loses_no_output_and_can_reattach(emulator: BoxliteEmulator) -> None:
    """One attach at a time (409 for a second); the execution goes on when the client leaves, and the next
    attach gets the rest, then the exit frame."""
    import aiohttp

    _, box = http(emulator, "POST", f"/v1/{PREFIX}/boxes", {})
    base = f"{emulator.url}/v1/{PREFIX}/boxes/{box['box_id']}"
    _, started = http(
        emulator,
        "POST",
        f"/v1/{PREFIX}/boxes/{box['box_id']}/exec",
        {"command": "sh", "args": ["-c", "for i in 1 2 3 4; do echo $i; sleep 0.2; done; exit 3"]},
    )
    attach = f"{base}/executions/{started['execution_id']}/attach"
    headers = {"Authorization": f"Bearer {emulator.api_key}"}

    async def scenario() -> tuple[bytes, bytes, int, dict[str, Any]]:
        async with aiohttp.ClientSession(headers=headers) as session:
            first = await session.ws_connect(attach)
            try:
                await session.ws_connect(attach)
                second = 0
            except aiohttp.WSServerHandshakeError as error:
                second = error.status
            message = await first.receive()
            await first.close()
            rest, exit_frame = b"", {}
            async with session.ws_connect(attach) as again:
                async for frame in again:
                    if frame.type == aiohttp.WSMsgType.BINARY:
                        rest += frame.data[1:]
                    elif frame.type == aiohttp.WSMsgType.TEXT:
                        exit_frame = json.loads(frame.data)
            return message.data, rest, second, exit_frame

    first, rest, second, exit_frame = asyncio.run(scenario())
    assert second == 409
    assert first[:1] == b"\x01" and first[1:] + rest == b"1\n2\n3\n4\n"
    assert exit_frame == {"type": "exit", "exit_code": 3}


def test_egress_is_what_the_create_request_allows(emulator: BoxliteEmulator) -> None:
    """Outbound `allow_net`: an empty network namespace whose one way out is a proxy allowing those hosts (any
    port); `mode: disabled`: nothing; no rules: the host's network. The proxy ends with the box."""
    options = boxlite.BoxliteRestOptions(
        url=emulator.url, credential=boxlite.ApiKeyCredential(emulator.api_key), path_prefix=PREFIX
    )
    with EgressTargets() as targets:

        async def scenario() -> tuple[dict[str, list[str]], ...]:
            runtime = boxlite.Boxlite.rest(options)
            seen = []
            for outbound in (
                boxlite.OutboundNetworkSpec(mode="enabled", allow_net=["localhost", "127.0.0.1"]),
                boxlite.OutboundNetworkSpec(mode="disabled"),
                None,
            ):
                network = {} if outbound is None else {"network": boxlite.NetworkSpec(outbound=outbound)}
                box = await runtime.create(boxlite.BoxOptions(**network))
                execution = await box.exec("/usr/bin/python3", ["-I", "-c", REACH_PROBE, *targets.urls])
                out = [item async for item in execution.stdout()]
                assert (await execution.wait()).exit_code == 0
                seen.append(json.loads("".join(out)))
                (record,) = [b for b in emulator.live_boxes() if b["box_id"] == box.id]
                await runtime.remove(box.id, force=True)
                if record["egress"]["socket"]:
                    assert not os.path.exists(record["egress"]["socket"]), "the proxy outlived its box"
            return tuple(seen)

        targets.check(*run(scenario()))
