"""The E2B emulator against the real e2b SDK (AsyncSandbox), route by route: what the backend relies on."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest

pytest.importorskip("aiohttp", reason="the emulator needs metaflow-sandbox-testing[e2b]")
e2b = pytest.importorskip("e2b", reason="needs the e2b SDK (Python 3.11+)")

from metaflow_sandbox_testing.e2b_emulator import E2BEmulator  # noqa: E402
from metaflow_sandbox_testing.local_web import REACH_PROBE, EgressTargets  # noqa: E402


@pytest.fixture(scope="module")
def emulator() -> Iterator[E2BEmulator]:
    saved = dict(os.environ)
    with E2BEmulator() as server:
        os.environ.update(server.env())
        yield server
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def clean(emulator: E2BEmulator) -> Iterator[None]:
    emulator.reset_faults()
    yield
    emulator.reset_faults()
    assert emulator.live_sandboxes() == []


def run(coroutine):  # type: ignore[no-untyped-def]
    return asyncio.run(coroutine)


def test_create_stream_files_and_kill():
    async def scenario() -> None:
        sandbox = await e2b.AsyncSandbox.create(timeout=60, metadata={"t": "1"}, envs={"X": "a b"})
        out: list[str] = []
        err: list[str] = []
        result = await sandbox.commands.run(
            "echo $X; echo oops >&2; pwd", on_stdout=out.append, on_stderr=err.append, timeout=0
        )
        assert result.exit_code == 0 and "".join(out) == "a b\n/home/user\n" and "".join(err) == "oops\n"
        with pytest.raises(e2b.CommandExitException) as failed:
            await sandbox.commands.run("exit 7")
        assert failed.value.exit_code == 7
        await sandbox.files.write("/home/user/d/f.bin", b"\x00\xffdata")
        assert bytes(await sandbox.files.read("/home/user/d/f.bin", format="bytes")) == b"\x00\xffdata"
        with pytest.raises(e2b.FileNotFoundException):
            await sandbox.files.read("/home/user/missing")
        handle = await sandbox.commands.run("sleep 30", background=True)
        assert await sandbox.commands.kill(handle.pid)
        with pytest.raises(e2b.CommandExitException) as killed:
            await handle.wait()
        assert killed.value.exit_code == -1  # envd (Go): killed by a signal
        assert await sandbox.kill() is True
        assert await e2b.AsyncSandbox.kill(sandbox.sandbox_id) is False
        with pytest.raises(e2b.NotFoundException):
            await e2b.AsyncSandbox.get_info(sandbox.sandbox_id)

    run(scenario())


def test_list_filters_by_metadata_and_pages(emulator):
    async def scenario() -> None:
        made = [await e2b.AsyncSandbox.create(metadata={"group": "g", "i": str(i)}) for i in range(3)]
        await e2b.AsyncSandbox.create(metadata={"group": "other"})
        pages = e2b.AsyncSandbox.list(query=e2b.SandboxQuery(metadata={"group": "g"}), limit=2)
        found = []
        while pages.has_next:
            found += [info.sandbox_id for info in await pages.next_items()]
        assert sorted(found) == sorted(s.sandbox_id for s in made)
        for info in emulator.live_sandboxes():
            await e2b.AsyncSandbox.kill(info["sandboxID"])

    run(scenario())


def test_sandbox_ends_at_its_timeout_and_set_timeout_moves_it(emulator):
    async def scenario() -> None:
        short = await e2b.AsyncSandbox.create(timeout=1)
        kept = await e2b.AsyncSandbox.create(timeout=1)
        await kept.set_timeout(30)
        await asyncio.sleep(1.5)
        assert not await short.is_running()
        assert await kept.is_running()
        await kept.kill()

    run(scenario())
    assert emulator.stats()["sandboxes_expired"] >= 1


def test_dropped_stream_and_reattach(emulator):
    async def scenario() -> None:
        sandbox = await e2b.AsyncSandbox.create()
        emulator.faults(drop_stream_after_lines=1)
        handle = await sandbox.commands.run("echo one; sleep 1; echo two", background=True, timeout=0)
        with pytest.raises(Exception):  # noqa: B017 - the SDK's error for a cut stream
            await handle.wait()
        again = await sandbox.commands.connect(handle.pid, timeout=0)
        assert "two" in (await again.wait()).stdout
        with pytest.raises(e2b.NotFoundException):
            await sandbox.commands.connect(handle.pid)
        await sandbox.kill()

    run(scenario())


def test_envd_needs_the_sandbox_token_and_answers_502_for_missing_sandboxes(emulator):
    def health(headers: dict[str, str]) -> int:
        request = urllib.request.Request(f"{emulator.url}/health", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    async def create() -> str:
        return str((await e2b.AsyncSandbox.create()).sandbox_id)

    sandbox_id = run(create())
    (record,) = emulator.live_sandboxes()
    assert health({"E2b-Sandbox-Id": sandbox_id, "X-Access-Token": record["envdAccessToken"]}) == 204
    assert health({"E2b-Sandbox-Id": sandbox_id, "X-Access-Token": "wrong"}) == 401
    emulator.kill_sandbox(sandbox_id)
    assert health({"E2b-Sandbox-Id": sandbox_id}) == 502


def test_wrong_key_and_create_faults(emulator, monkeypatch):
    monkeypatch.setenv("E2B_API_KEY", "e2b_wrong")
    with pytest.raises(e2b.AuthenticationException):
        run(e2b.AsyncSandbox.create())
    monkeypatch.setenv("E2B_API_KEY", emulator.api_key)
    emulator.faults(fail_creates=4, fail_status=503, retry_after=0)
    with pytest.raises(e2b.ServiceBusyException):
        run(e2b.AsyncSandbox.create())
    assert emulator.stats()["creates_failed_by_fault"] >= 4
    with pytest.raises(ValueError, match="unknown fault knob"):
        emulator.faults(bogus=1)
    assert json.loads(json.dumps(emulator.faults()))["fail_creates"] == 0
    started = time.monotonic()
    emulator.faults(hold_creates=1)

    async def held() -> None:
        task = asyncio.ensure_future(e2b.AsyncSandbox.create())
        await asyncio.sleep(0.5)
        assert not task.done()
        await asyncio.get_running_loop().run_in_executor(None, emulator.release_creates)
        await (await task).kill()

    run(held())
    assert time.monotonic() - started < 10


def test_egress_is_what_the_create_request_allows(emulator):
    """`denyOut: [0.0.0.0/0]` with `allowOut`: an empty network namespace whose one way out is a proxy allowing
    those hosts (any port); `allow_internet_access=False`: nothing; no policy: the host's network. The proxy
    ends with the sandbox."""
    with EgressTargets() as targets:
        probe = f"/usr/bin/python3 -I -c {shlex.quote(REACH_PROBE)} {' '.join(targets.urls)}"

        async def scenario() -> tuple[dict[str, list[str]], ...]:
            seen = []
            for options in (
                {"network": {"deny_out": ["0.0.0.0/0"], "allow_out": ["localhost", "127.0.0.1"]}},
                {"allow_internet_access": False},
                {},
            ):
                sandbox = await e2b.AsyncSandbox.create(timeout=60, **options)
                result = await sandbox.commands.run(probe)
                seen.append(json.loads(result.stdout))
                (record,) = [s for s in emulator.live_sandboxes() if s["sandboxID"] == sandbox.sandbox_id]
                await sandbox.kill()
                if record["egress"]["socket"]:
                    assert not os.path.exists(record["egress"]["socket"]), "the proxy outlived its sandbox"
            return tuple(seen)

        targets.check(*run(scenario()))


def test_a_network_request_the_emulator_cannot_enforce_is_refused(emulator):
    """Never a wider network than asked: an allow-list entry it cannot parse, or a `denyOut` of some addresses
    only (not modelled), is a 400 and no sandbox exists."""

    async def scenario() -> None:
        for network, why in (
            ({"deny_out": ["0.0.0.0/0"], "allow_out": ["exa mple.com"]}, "400: network.allowOut: "),
            ({"deny_out": ["10.0.0.0/8"]}, "400: the emulator models denyOut ['0.0.0.0/0'] only"),
        ):
            with pytest.raises(e2b.SandboxException) as refused:
                await e2b.AsyncSandbox.create(timeout=60, network=network)
            assert str(refused.value).startswith(why)

    run(scenario())
    assert emulator.live_sandboxes() == []
