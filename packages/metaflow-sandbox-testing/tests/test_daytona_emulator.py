"""The Daytona emulator, driven by the REAL, unmodified `daytona` SDK (its async client, as the backend uses it)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest

pytest.importorskip("aiohttp", reason='needs metaflow-sandbox-testing[daytona] (pip install ".[daytona]")')
daytona = pytest.importorskip("daytona", reason='needs the daytona SDK (pip install ".[daytona]")')

from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator  # noqa: E402
from metaflow_sandbox_testing.local_web import REACH_PROBE, EgressTargets  # noqa: E402

pytest_plugins = ["metaflow_sandbox_testing.daytona_emulator.fixtures"]  # daytona_env, daytona_emulator

T = TypeVar("T")
#: An interpreter without metaflow for the sandboxes' `python3`, as a slim image would have.
IMAGE_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


@pytest.fixture(scope="module")
def server() -> Iterator[DaytonaEmulator]:
    with DaytonaEmulator(python=IMAGE_PYTHON) as emulator:
        yield emulator


@pytest.fixture
def emulator(server: DaytonaEmulator) -> Iterator[DaytonaEmulator]:
    server.reset_faults()
    yield server
    server.reset_faults()
    assert server.live_sandboxes() == [], "a scenario left sandboxes behind"


def drive(
    emulator: DaytonaEmulator, scenario: Callable[[Any], Awaitable[T]], api_key: str | None = None
) -> T:
    """Run `scenario(client)` with a fresh AsyncDaytona pointed at the emulator."""
    env = emulator.env()

    async def main() -> T:
        config = daytona.DaytonaConfig(
            api_key=api_key or env["DAYTONA_API_KEY"], api_url=env["DAYTONA_API_URL"]
        )
        async with daytona.AsyncDaytona(config) as client:
            return await scenario(client)

    return asyncio.run(main())


async def start(sandbox: Any, command: str, session: str = "s") -> str:
    await sandbox.process.create_session(session)
    request = daytona.SessionExecuteRequest(command=command, run_async=True)
    return str((await sandbox.process.execute_session_command(session, request)).cmd_id)


async def follow(sandbox: Any, command_id: str, session: str = "s") -> list[tuple[str, str, float]]:
    """Every chunk of a command's log stream as (stream, text, arrival time)."""
    chunks: list[tuple[str, str, float]] = []
    await sandbox.process.get_session_command_logs_async(
        session,
        command_id,
        lambda text: chunks.append(("stdout", text, time.monotonic())),
        lambda text: chunks.append(("stderr", text, time.monotonic())),
    )
    return chunks


def joined(chunks: list[tuple[str, str, float]], stream: str) -> str:
    return "".join(text for name, text, _ in chunks if name == stream)


# -- control plane ----------------------------------------------------------------------------------------


def test_create_get_list_by_labels_and_delete(emulator: DaytonaEmulator) -> None:
    async def scenario(client: Any) -> None:
        params = daytona.CreateSandboxFromSnapshotParams(labels={"suite": "emulator", "case": "crud"})
        sandbox = await client.create(params)
        other = await client.create(daytona.CreateSandboxFromSnapshotParams(labels={"suite": "emulator"}))
        assert sandbox.state == daytona.SandboxState.STARTED
        assert (await client.get(sandbox.id)).labels["case"] == "crud"

        async def ids(labels: dict[str, str]) -> set[str]:
            return {found.id async for found in client.list(daytona.ListSandboxesQuery(labels=labels))}

        assert await ids({"case": "crud"}) == {sandbox.id}
        assert await ids({"suite": "emulator"}) == {sandbox.id, other.id}
        assert {item["id"] for item in emulator.live_sandboxes()} == {sandbox.id, other.id}
        await sandbox.delete()
        await client.delete(other)
        assert await ids({"suite": "emulator"}) == set()
        with pytest.raises(daytona.DaytonaNotFoundError) as missing:
            await client.get(sandbox.id)
        assert missing.value.status_code == 404 and missing.value.source == "DAYTONA_API"

    drive(emulator, scenario)


def test_image_build_carries_sizes_and_settings(emulator: DaytonaEmulator) -> None:
    async def scenario(client: Any) -> None:
        params = daytona.CreateSandboxFromImageParams(
            image="python:3.12-slim",
            resources=daytona.Resources(cpu=2, memory=3, disk=5),
            env_vars={"GREETING": "hi"},
            network_block_all=True,
        )
        sandbox = await client.create(params)
        try:
            assert (sandbox.cpu, sandbox.memory, sandbox.disk) == (2, 3, 5)
            assert sandbox.network_block_all is True and sandbox.env == {"GREETING": "hi"}
            assert sandbox.build_info.dockerfile_content == "FROM python:3.12-slim\n"
        finally:
            await sandbox.delete()

    drive(emulator, scenario)


def test_home_dir_clean_environment_and_image_python(emulator: DaytonaEmulator, monkeypatch: Any) -> None:
    async def scenario(client: Any) -> None:
        sandbox = await client.create(
            daytona.CreateSandboxFromSnapshotParams(env_vars={"SANDBOX_VAR": "x y"})
        )
        try:
            home = await sandbox.get_user_home_dir()
            assert os.path.isabs(home) and os.path.isdir(home)
            assert await sandbox.get_work_dir() == home
            command = await start(
                sandbox, "env -0; python3 -c 'import sys; print(sys.executable)' >&2; pwd >&2"
            )
            chunks = await follow(sandbox, command)
            env = dict(entry.split("=", 1) for entry in joined(chunks, "stdout").split("\0") if entry)
            assert set(env) == {"PATH", "HOME", "LANG", "SANDBOX_VAR", "PWD"}
            assert env["HOME"] == home and env["SANDBOX_VAR"] == "x y"
            interpreter, cwd = joined(chunks, "stderr").split()
            assert os.path.realpath(interpreter) == os.path.realpath(IMAGE_PYTHON)
            assert cwd == home
        finally:
            await sandbox.delete()

    monkeypatch.setenv("EMULATOR_TEST_CANARY", "must-not-leak")  # the emulator was started before: irrelevant
    drive(emulator, scenario)


def test_each_sandbox_has_its_own_copy_of_the_image_and_login_shells_find_it(
    emulator: DaytonaEmulator,
) -> None:
    """What one sandbox installs into its Python is gone for the next; `bash -lc` finds python3 and pip."""
    install = "python3 -c \"import site; open(site.getsitepackages()[0] + '/planted.py', 'w').write('')\""
    probe = "python3 -c 'import planted' 2>/dev/null && echo found || echo missing"

    async def scenario(client: Any) -> None:
        first, second = await client.create(), await client.create()
        try:
            assert (await first.process.exec(f"{install} && {probe}")).result.strip() == "found"
            assert (await second.process.exec(probe)).result.strip() == "missing"
            login = await second.process.exec("bash -lc 'command -v python3 pip'")
            assert login.exit_code == 0
            home = next(s["home"] for s in emulator.live_sandboxes() if s["id"] == second.id)
            found = login.result.split()
            assert [os.path.basename(path) for path in found] == ["python3", "pip"]
            assert all(path.startswith(os.path.dirname(home) + os.sep) for path in found)  # its own copy
        finally:
            await first.delete()
            await second.delete()

    drive(emulator, scenario)


def test_host_paths_open_the_file_api_beyond_home(tmp_path: Any) -> None:
    """A client that writes its script to the sandbox's /tmp (the predecessor does) needs `host_paths`."""
    outside = tmp_path / "scratch"
    outside.mkdir()

    async def scenario(client: Any) -> None:
        sandbox = await client.create()
        try:
            await sandbox.fs.upload_file(b"echo via-host-path", str(outside / "script.sh"))
            ran = await sandbox.process.exec(f"sh {outside / 'script.sh'}")
            assert ran.result.strip() == "via-host-path"
            with pytest.raises(daytona.DaytonaError):
                await sandbox.fs.upload_file(b"x", str(tmp_path / "not-listed.txt"))
        finally:
            await sandbox.delete()

    with DaytonaEmulator(python=IMAGE_PYTHON, host_paths=(str(outside),)) as emulator:
        drive(emulator, scenario)
        assert emulator.live_sandboxes() == []


# -- sessions and streaming -------------------------------------------------------------------------------


def test_command_streams_stdout_and_stderr_apart_in_order_and_live(emulator: DaytonaEmulator) -> None:
    async def scenario(client: Any) -> None:
        sandbox = await client.create()
        try:
            script = "for i in 1 2 3; do echo out$i; echo err$i >&2; done; sleep 1.5; echo last-out; exit 5"
            command = await start(sandbox, script)
            begun = time.monotonic()
            chunks = await follow(sandbox, command)
            ended = time.monotonic()
            assert joined(chunks, "stdout") == "out1\nout2\nout3\nlast-out\n"
            assert joined(chunks, "stderr") == "err1\nerr2\nerr3\n"
            assert chunks[0][2] - begun < 1.0 and ended - chunks[0][2] > 1.0, "output arrived only at the end"
            status = await sandbox.process.get_session_command("s", command)
            assert status.exit_code == 5 and status.command == script
        finally:
            await sandbox.delete()

    drive(emulator, scenario)


@pytest.mark.parametrize(("script", "code"), [("true", 0), ("exit 3", 3), ("kill -9 $$", 137)])
def test_exit_codes(emulator: DaytonaEmulator, script: str, code: int) -> None:
    async def scenario(client: Any) -> None:
        sandbox = await client.create()
        try:
            command = await start(sandbox, script)
            await follow(sandbox, command)
            assert (await sandbox.process.get_session_command("s", command)).exit_code == code
        finally:
            await sandbox.delete()

    drive(emulator, scenario)


def test_deleting_a_session_kills_its_processes(emulator: DaytonaEmulator) -> None:
    async def scenario(client: Any) -> None:
        sandbox = await client.create()
        try:
            command = await start(sandbox, "sh -c 'echo $$; sleep 60' & wait")
            while (status := await sandbox.process.get_session_command("s", command)).exit_code is None:
                logs = await sandbox.process.get_session_command_logs("s", command)
                if logs.stdout.strip():
                    break
                await asyncio.sleep(0.05)
            child = int(logs.stdout.split()[0])
            await sandbox.process.delete_session("s")
            assert _gone(child), "the session's background process survived its deletion"
            with pytest.raises(daytona.DaytonaNotFoundError):
                await sandbox.process.get_session_command("s", command)
            assert status.exit_code is None
        finally:
            await sandbox.delete()

    drive(emulator, scenario)


def _gone(pid: int, within: float = 5.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().split(")")[-1].split()[0] == "Z":
                    return True
        except OSError:
            return True
        time.sleep(0.05)
    return False


# -- files ------------------------------------------------------------------------------------------------


def test_upload_download_round_trip(emulator: DaytonaEmulator) -> None:
    blob = os.urandom(3 * 1024 * 1024 + 11) + b"\x01\x01\x01\x02\x02\x02\r\n--boundary--\r\n"

    async def scenario(client: Any) -> None:
        sandbox = await client.create()
        try:
            home = await sandbox.get_user_home_dir()
            await sandbox.fs.upload_file(blob, f"{home}/deep/er/blob.bin")
            await sandbox.fs.upload_file(b"relative", "rel/file.txt")
            assert await sandbox.fs.download_file(f"{home}/deep/er/blob.bin") == blob
            assert await sandbox.fs.download_file(f"{home}/rel/file.txt") == b"relative"
            with open(os.path.join(home, "deep", "er", "blob.bin"), "rb") as on_disk:
                assert on_disk.read() == blob
            results = await sandbox.fs.download_files(
                [
                    daytona.FileDownloadRequest(source="rel/file.txt"),
                    daytona.FileDownloadRequest(source="nope"),
                ]
            )
            assert results[0].result == b"relative" and results[1].error
            with pytest.raises(daytona.DaytonaFileNotFoundError):
                await sandbox.fs.download_file(f"{home}/missing.bin")
            with pytest.raises(daytona.DaytonaError, match="outside"):
                await sandbox.fs.download_file("/etc/hostname")
            with pytest.raises(daytona.DaytonaError, match="403"):
                await sandbox.fs.upload_file(b"x", f"{home}/../escape.txt")
            assert not os.path.exists(os.path.join(os.path.dirname(home), "escape.txt"))
        finally:
            await sandbox.delete()

    drive(emulator, scenario)


# -- faults -----------------------------------------------------------------------------------------------


def test_fault_fail_creates_with_503_then_success(emulator: DaytonaEmulator) -> None:
    emulator.faults(fail_creates=2, fail_status=503)

    async def scenario(client: Any) -> None:
        for _ in range(2):
            with pytest.raises(daytona.DaytonaError) as failed:
                await client.create()
            assert failed.value.status_code == 503
        await (await client.create()).delete()

    drive(emulator, scenario)
    assert emulator.stats()["creates_failed_by_fault"] >= 2


def test_fault_fail_creates_with_429_and_retry_after(emulator: DaytonaEmulator) -> None:
    emulator.faults(fail_creates=1, fail_status=429, retry_after=7)

    async def scenario(client: Any) -> None:
        with pytest.raises(daytona.DaytonaRateLimitError) as limited:
            await client.create()
        assert limited.value.headers.get("Retry-After") == "7"
        assert limited.value.code == "TOO_MANY_REQUESTS" and limited.value.source == "DAYTONA_API"
        await (await client.create()).delete()

    drive(emulator, scenario)


def test_fault_create_polls_keep_a_new_sandbox_creating_for_that_many_reads(
    emulator: DaytonaEmulator,
) -> None:
    emulator.faults(create_polls=3)

    async def scenario(client: Any) -> None:
        sandbox = await client.create(daytona.CreateSandboxFromImageParams(image="debian:12"))
        assert sandbox.state == daytona.SandboxState.STARTED  # the SDK polled through the 3 pending reads
        await sandbox.delete()
        # Read by hand: exactly 2 reads answer `creating`, then `started`.
        emulator.faults(create_polls=2)
        created = _http(emulator, "POST", "/api/sandbox", json.dumps({"snapshot": "any"}).encode())
        states = [_http(emulator, "GET", f"/api/sandbox/{created['id']}")["state"] for _ in range(3)]
        assert created["state"] == "creating" and states == ["creating", "creating", "started"]
        _http(emulator, "DELETE", f"/api/sandbox/{created['id']}")

    drive(emulator, scenario)


def _http(emulator: DaytonaEmulator, method: str, path: str, body: bytes | None = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", emulator.port, timeout=30)
    try:
        headers = {"Authorization": f"Bearer {emulator.api_key}", "Content-Type": "application/json"}
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        payload = response.read()
        assert response.status < 400, (response.status, payload)
        return json.loads(payload)
    finally:
        connection.close()


@pytest.mark.parametrize("state", ["build_failed", "error"])
def test_fault_broken_creates_end_in_failed_state(emulator: DaytonaEmulator, state: str) -> None:
    emulator.faults(broken_creates=1, broken_state=state)

    async def scenario(client: Any) -> None:
        name = f"broken-{state}"
        with pytest.raises(daytona.DaytonaError, match=f"entered error state: .*{state}"):
            await client.create(daytona.CreateSandboxFromSnapshotParams(name=name))
        broken = await client.get(name)
        assert broken.state.value == state and "fault injection" in broken.error_reason
        await broken.delete()

    drive(emulator, scenario)


def test_fault_kill_on_marker_kills_only_the_sandbox_that_prints_it(emulator: DaytonaEmulator) -> None:
    """The first sandbox to print the marker dies there (exit 137, gone); the next one prints it unharmed."""

    async def scenario(client: Any) -> None:
        first, second = await client.create(), await client.create()
        try:
            emulator.faults(kill_on_marker=1, kill_marker="STEP-MARKER")
            # The marker arrives in two writes (split across reads), after a line that must stay logged.
            script = "echo $$; echo before; printf STEP-; sleep 0.2; echo MARKER; sleep 30; echo never"
            command = await start(first, script)
            chunks = await follow(first, command)
            out = joined(chunks, "stdout")
            assert out.split("\n")[1:] == ["before", "STEP-MARKER", ""], out
            assert _gone(int(out.split()[0]))
            with pytest.raises(daytona.DaytonaNotFoundError):
                await first.process.get_session_command("s", command)
            with pytest.raises(daytona.DaytonaNotFoundError):
                await client.get(first.id)
            assert emulator.faults()["kill_on_marker"] == 0
            # A later sandbox (a retry's) prints the same marker and finishes.
            command = await start(second, "echo STEP-MARKER; exit 3")
            assert joined(await follow(second, command), "stdout") == "STEP-MARKER\n"
            assert (await second.process.get_session_command("s", command)).exit_code == 3
        finally:
            await second.delete()

    before = emulator.stats()["sandboxes_killed_by_fault"]
    drive(emulator, scenario)
    assert emulator.stats()["sandboxes_killed_by_fault"] == before + 1


def test_fault_drop_logs_after_lines_cuts_the_stream_while_the_command_runs(
    emulator: DaytonaEmulator,
) -> None:
    async def scenario(client: Any) -> None:
        sandbox = await client.create()
        try:
            emulator.faults(drop_logs_after_lines=2)
            # Three lines in one write: the cut is by lines, not by how the output was read.
            command = await start(sandbox, "printf 'one\\ntwo\\nthree\\n'; echo err >&2; sleep 1; exit 4")
            received: list[str] = []
            with pytest.raises(daytona.DaytonaError, match="1011"):
                await sandbox.process.get_session_command_logs_async(
                    "s", command, received.append, received.append
                )
            assert "".join(received) == "one\ntwo\n"
            assert (await sandbox.process.get_session_command("s", command)).exit_code is None
            while (status := await sandbox.process.get_session_command("s", command)).exit_code is None:
                await asyncio.sleep(0.1)
            assert status.exit_code == 4
            logs = await sandbox.process.get_session_command_logs("s", command)  # all of it, without follow
            assert logs.stdout == "one\ntwo\nthree\n" and logs.stderr == "err\n"
        finally:
            await sandbox.delete()

    before = emulator.stats()["log_streams_dropped_by_fault"]
    drive(emulator, scenario)
    assert emulator.stats()["log_streams_dropped_by_fault"] == before + 1


def test_faults_are_validated_and_settable_at_start() -> None:
    with DaytonaEmulator(faults={"fail_creates": 1, "fail_status": 500}) as emulator:
        assert emulator.faults()["fail_creates"] == 1
        with pytest.raises(ValueError, match="unknown fault"):
            emulator.faults(explode=True)
        with pytest.raises(ValueError, match="broken_state"):
            emulator.faults(broken_state="melted")
        with pytest.raises(ValueError, match="needs kill_marker"):
            emulator.faults(kill_on_marker=1)
        with pytest.raises(ValueError, match=r"was removed .* kill_on_marker"):
            emulator.faults(kill_after=4)
        assert emulator.faults()["kill_on_marker"] == 0  # a refused change changes nothing

        async def scenario(client: Any) -> None:
            with pytest.raises(daytona.DaytonaError) as failed:
                await client.create()
            assert failed.value.status_code == 500

        drive(emulator, scenario)


# -- scale, auth, HTTP hygiene ----------------------------------------------------------------------------


def test_300_concurrent_sandboxes(emulator: DaytonaEmulator) -> None:
    count = 300

    async def scenario(client: Any) -> float:
        begun = time.monotonic()
        sandboxes = await asyncio.gather(
            *(
                client.create(daytona.CreateSandboxFromSnapshotParams(labels={"fan": "out"}))
                for _ in range(count)
            )
        )
        assert len({sandbox.id for sandbox in sandboxes}) == count
        assert len(emulator.live_sandboxes()) == count
        await asyncio.gather(*(sandbox.delete() for sandbox in sandboxes))
        return time.monotonic() - begun

    elapsed = drive(emulator, scenario)
    assert elapsed < 30, f"300 creates and deletes took {elapsed:.1f} s"


def test_wrong_or_missing_key_is_401(emulator: DaytonaEmulator) -> None:
    async def scenario(client: Any) -> None:
        with pytest.raises(daytona.DaytonaAuthenticationError) as rejected:
            await client.create()
        assert rejected.value.status_code == 401

    drive(emulator, scenario, api_key="wrong-key")
    status, body = _request(emulator, "GET", "/api/sandbox")
    assert status == 401 and body["statusCode"] == 401 and body["source"] == "DAYTONA_API"
    assert {"message", "code"} <= set(body)


def test_unmatched_routes_read_the_body_and_keep_the_connection(emulator: DaytonaEmulator) -> None:
    url = urllib.parse.urlsplit(emulator.base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    headers = {"Authorization": f"Bearer {emulator.api_key}", "Content-Type": "application/json"}
    try:
        connection.request("POST", "/api/no-such-route", body=b"x" * 300_000, headers=headers)
        response = connection.getresponse()
        assert response.status == 404 and json.loads(response.read())["statusCode"] == 404
        # Same connection, chunked body: a whole create request must arrive intact.
        body = iter([b'{"labels": {"via": ', b'"chunked"}}'])
        connection.request("POST", "/api/sandbox", body=body, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        created = json.loads(response.read())
        assert response.status == 200 and created["labels"] == {"via": "chunked"}
        connection.request("DELETE", f"/api/sandbox/{created['id']}", headers=headers)
        assert connection.getresponse().status == 200
    finally:
        connection.close()


def _request(emulator: DaytonaEmulator, method: str, path: str) -> tuple[int, dict[str, Any]]:
    url = urllib.parse.urlsplit(emulator.base_url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_emulator_dies_with_the_process_that_started_it(tmp_path: Any) -> None:
    starter = textwrap.dedent(
        """
        import os, sys, time
        from metaflow_sandbox_testing.daytona_emulator import DaytonaEmulator
        emulator = DaytonaEmulator().start()
        print(emulator._process.pid, flush=True)
        time.sleep(60)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", starter], stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    emulator_pid = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    parent.stdout.close()
    assert _gone(emulator_pid, within=15), "the emulator outlived the process that started it"


def test_pytest_fixtures_set_the_sdk_environment(daytona_env: DaytonaEmulator) -> None:
    assert (
        os.environ["DAYTONA_API_URL"] == daytona_env.url
        and os.environ["DAYTONA_API_KEY"] == daytona_env.api_key
    )
    assert daytona_env.faults()["fail_creates"] == 0

    async def scenario() -> None:
        async with daytona.AsyncDaytona() as client:  # configured from the environment alone
            await (await client.create()).delete()

    asyncio.run(scenario())
    assert daytona_env.live_sandboxes() == []


# -- network ----------------------------------------------------------------------------------------------


def test_egress_is_what_the_create_request_allows(emulator: DaytonaEmulator) -> None:
    """`domainAllowList`/`networkAllowList`: an empty network namespace whose one way out is a proxy allowing
    those hosts (any port); `networkBlockAll`: nothing; neither: the host's network. The proxy ends with the
    sandbox."""
    with EgressTargets() as targets:
        probe = f"{IMAGE_PYTHON} -I -c {shlex.quote(REACH_PROBE)} {' '.join(targets.urls)}"

        async def scenario(client: Any) -> tuple[dict[str, list[str]], ...]:
            seen = []
            for params in (
                daytona.CreateSandboxFromSnapshotParams(
                    domain_allow_list="localhost", network_allow_list="127.0.0.1/32"
                ),
                daytona.CreateSandboxFromSnapshotParams(network_block_all=True),
                daytona.CreateSandboxFromSnapshotParams(),
            ):
                sandbox = await client.create(params)
                result = await sandbox.process.exec(probe)
                assert result.exit_code == 0, result.result
                seen.append(json.loads(result.result))
                record = {s["id"]: s for s in emulator.live_sandboxes()}[sandbox.id]["egress"]
                await sandbox.delete()
                if record["socket"]:
                    assert not os.path.exists(record["socket"]), "the proxy outlived its sandbox"
            return tuple(seen)

        targets.check(*drive(emulator, scenario))
