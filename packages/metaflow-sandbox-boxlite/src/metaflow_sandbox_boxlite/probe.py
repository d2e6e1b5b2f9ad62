"""The boot probe: can this host boot a boxlite VM at all? (boxlite's own KVM check passes on hosts with
software nested virtualization, where every real boot then fails after 11-26 s.)

`boot_problem()` boots a tiny box running `/bin/true` in a child process (`python -m
metaflow_sandbox_boxlite.probe`) with a private boxlite home, bounded in time; the child's process group is
killed on time-out and its home removed, so no box, shim or disk outlives the probe. The answer is cached per
host, kernel and boxlite version, with its reason, in `<state_dir>/boot-probe.json`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from .oci_layout import write_layout

CACHE = "boot-probe.json"
DEFAULT_TIMEOUT = 60.0
#: Lines of boxlite's logs that name why a guest died.
CLUES = ("KVM_EXIT", "INTERNAL_ERROR", "failed to start", "Permission denied")


def probe_key(version: str) -> str:
    return f"{platform.node()} | {platform.system()} {platform.release()} | boxlite {version}"


def boot_problem(state_dir: str, version: str, timeout: float = DEFAULT_TIMEOUT) -> str | None:
    """Why no boxlite VM boots on this host (cached), or None when one does."""
    cache = os.path.join(state_dir, CACHE)
    key = probe_key(version)
    try:
        with open(cache) as found:
            cached = json.load(found)
        if cached.get("key") == key:
            return cached.get("problem")
    except (OSError, ValueError):
        pass
    problem = _run_probe(state_dir, timeout)
    os.makedirs(state_dir, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=state_dir, delete=False) as out:
        json.dump({"key": key, "problem": problem, "at": time.time()}, out)
    os.replace(out.name, cache)
    return problem


def _probe_image(state_dir: str) -> str:
    """An OCI layout holding this host's `/bin/true` and the libraries it loads (built once)."""
    layout = os.path.join(state_dir, "probe-image")
    if os.path.exists(os.path.join(layout, "index.json")):
        return layout
    true = shutil.which("true") or "/bin/true"
    needed = [true]
    ldd = subprocess.run(["ldd", true], capture_output=True, text=True, check=False)
    needed += [part for line in ldd.stdout.splitlines() for part in line.split() if part.startswith("/")]
    with tempfile.TemporaryDirectory() as rootfs:
        for path in needed:
            target = os.path.join(rootfs, path.lstrip("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.realpath(path), target)
        os.makedirs(os.path.join(rootfs, "bin"), exist_ok=True)
        if not os.path.exists(os.path.join(rootfs, "bin", "true")):
            shutil.copy2(os.path.realpath(true), os.path.join(rootfs, "bin", "true"))
        write_layout(rootfs, layout, cmd=["/bin/true"])
    return layout


def _run_probe(state_dir: str, timeout: float) -> str | None:
    home = tempfile.mkdtemp(prefix="probe-home-", dir=_mkdir(state_dir))
    try:
        image = _probe_image(state_dir)
        child = subprocess.Popen(
            [sys.executable, "-m", "metaflow_sandbox_boxlite.probe", home, image],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            out, _ = child.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            out = b""
            problem: str | None = f"no VM had booted after {timeout:g} s"
        else:
            lines = out.decode(errors="replace").strip().splitlines()
            try:
                problem = json.loads(lines[-1])["problem"]
            except (IndexError, ValueError, KeyError):
                problem = f"the probe exited with code {child.returncode} and no answer"
        finally:
            try:
                os.killpg(child.pid, signal.SIGKILL)  # the probe and any shim it started
            except ProcessLookupError:
                pass
            child.wait()
        return problem
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _mkdir(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _clues(home: str) -> str:
    for directory, _, files in os.walk(home):
        for name in files:
            if name.endswith((".log", ".txt")) or "log" in name:
                try:
                    with open(os.path.join(directory, name), errors="replace") as log:
                        for line in log:
                            if any(clue in line for clue in CLUES):
                                return line.strip()[-200:]
                except OSError:
                    continue
    return ""


async def _boot(home: str, image: str) -> str | None:
    import boxlite

    runtime = boxlite.Boxlite(boxlite.Options(home_dir=home))
    options = boxlite.BoxOptions(
        rootfs_path=image,
        cpus=1,
        memory_mib=256,
        network=boxlite.NetworkSpec(outbound=boxlite.OutboundNetworkSpec(mode="disabled")),
        advanced=boxlite.AdvancedBoxOptions(security=boxlite.SecurityOptions.standard()),
    )
    box = None
    try:
        box = await runtime.create(options)
        execution = await box.exec("/bin/true")
        code = (await execution.wait()).exit_code
        return None if code == 0 else f"/bin/true exited with {code} in the guest"
    except Exception as error:
        text = " ".join(str(error).split())[:300] or type(error).__name__
        clue = _clues(home)
        return f"{type(error).__name__}: {text}" + (f"; {clue}" if clue and clue not in text else "")
    finally:
        if box is not None:
            try:
                await runtime.remove(box.id, force=True)
            except Exception:
                pass


def main(argv: list[str]) -> int:
    problem = asyncio.run(_boot(argv[0], argv[1]))
    print(json.dumps({"problem": problem}), flush=True)
    os._exit(0)  # the SDK's threads may abort a normal interpreter exit


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
