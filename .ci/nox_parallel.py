"""Run nox sessions a few at a time and print how long each took.

    python .ci/nox_parallel.py [-j N] [nox selection, default -t ci] [-- args for every session]

Each session runs as its own `nox -s NAME` with its output in .nox/logs/NAME.log; a line is printed as each
one ends, then the end of the log of any that failed, then a table of every session's status, duration and
CPU time (user + system, of the session's processes and the children they waited for: a sum far below
jobs x wall time means the cores were idle).
Sessions start longest first: by the durations of the last run here (.nox/logs/durations.json), else of the
reference run (.ci/durations.json); a session in neither counts as long if it is an integration row with
local metadata (the full flow behaviours), shorter if it is another integration row.

N (default 2, or MFS_CI_JOBS) sessions run at once: an integration row keeps well under one core busy (its
flows mostly wait on subprocesses, S3 and sockets), so two at a time use a 2-core machine. Exit status: 0 when
every session succeeded (or was skipped), 1 otherwise.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOGS = ROOT / ".nox" / "logs"
HISTORY = LOGS / "durations.json"
#: Durations measured on a 2-core machine (`./dev test`), for the order of a first run (CI's fresh checkout).
BASELINE = ROOT / ".ci" / "durations.json"
#: Lines of a failed session's log shown at the end: all of it in CI (where the files are gone afterwards).
TAIL = None if os.environ.get("CI") else 150


def sessions(nox: list[str], selection: list[str]) -> list[str]:
    listed = subprocess.run(
        [*nox, "--list", "--json", *selection], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return [entry["session"] for entry in json.loads(listed.stdout)]


def guess(session: str) -> float:
    """Seconds a session may take when there is no history (only the order matters)."""
    if session.startswith("integration("):
        return 900.0 if session.endswith("-local)") else 300.0
    return 120.0 if session == "typecheck" or session.startswith("unit(") else 30.0


def clock(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def log_name(session: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", session).strip("-") + ".log"


def main(argv: list[str]) -> int:
    posargs: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, posargs = argv[:cut], argv[cut + 1 :]
    jobs = int(os.environ.get("MFS_CI_JOBS", "2"))
    selection = []
    words = iter(argv)
    for word in words:
        if word in ("-j", "--jobs"):
            jobs = int(next(words))
        elif word.startswith("--jobs="):
            jobs = int(word.split("=", 1)[1])
        else:
            selection.append(word)
    nox = [sys.executable, "-m", "nox"]
    todo = sessions(nox, selection or ["-t", "ci"])
    history = json.loads((HISTORY if HISTORY.exists() else BASELINE).read_text())
    todo.sort(key=lambda name: -float(history.get(name, guess(name))))
    LOGS.mkdir(parents=True, exist_ok=True)
    print(f"==> {len(todo)} sessions, {jobs} at a time; logs in {LOGS.relative_to(ROOT)}/", flush=True)

    lock = threading.Lock()
    results: dict[str, tuple[str, float, float]] = {}
    queue = list(todo)
    started = time.monotonic()

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                session = queue.pop(0)
                print(f"    start {session}", flush=True)
            begun = time.monotonic()
            with open(LOGS / log_name(session), "w") as log:
                command = [*nox, "-s", session]
                process = subprocess.Popen(
                    [*command, "--", *posargs] if posargs else command,
                    cwd=ROOT,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
                # wait4: this session's own CPU time (its processes and the children they waited for).
                _, wait_status, usage = os.wait4(process.pid, 0)
                process.returncode = code = os.waitstatus_to_exitcode(wait_status)
            took = time.monotonic() - begun
            cpu = usage.ru_utime + usage.ru_stime
            text = (LOGS / log_name(session)).read_text(errors="replace")
            status = "ok" if code == 0 else "FAILED"
            if code == 0 and re.search(r"Session .* skipped", text):
                status = "skipped"
            with lock:
                results[session] = (status, took, cpu)
                done = len(results)
                print(f"[{done}/{len(todo)}] {status:7} {clock(took):>7}  {session}", flush=True)

    threads = [threading.Thread(target=worker) for _ in range(max(1, jobs))]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            thread.join()
    except KeyboardInterrupt:  # the running sessions got the SIGINT too; start no more
        with lock:
            queue.clear()
        for thread in threads:
            thread.join()
    wall = time.monotonic() - started
    for name in todo:
        results.setdefault(name, ("not run", 0.0, 0.0))

    failed = [name for name in todo if results[name][0] == "FAILED"]
    for name in failed:
        lines = (LOGS / log_name(name)).read_text(errors="replace").splitlines()
        shown = lines if TAIL is None else lines[-TAIL:]
        print(f"\n==> {name} FAILED; {len(shown)} of {len(lines)} lines of .nox/logs/{log_name(name)}:")
        print("\n".join(shown))
    width = max(len(name) for name in todo)
    print(f"\n{'session':{width}}  status   duration       cpu")
    for name in todo:
        status, took, cpu = results[name]
        print(f"{name:{width}}  {status:7}  {clock(took):>8}  {clock(cpu):>8}")
    busy = sum(took for _, took, _ in results.values())
    cpu = sum(cpu for _, _, cpu in results.values())
    print(
        f"{'wall time':{width}}  {'':7}  {clock(wall):>8}  {clock(cpu):>8}  (sessions: {clock(busy)} together)"
    )
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for name in todo:
        log = LOGS / log_name(name)
        summaries = (
            re.findall(r"^=* ?((?:\d+ \w+(?:, )?)+) in [\d.]+s", log.read_text(errors="replace"), re.M)
            if log.exists()
            else []
        )
        for count, label in re.findall(
            r"(\d+) (passed|failed|skipped|errors?)", summaries[-1] if summaries else ""
        ):
            counts["failed" if label.startswith("error") else label] += int(count)
    # The plain closing line CI reads: every pytest run of every session, added up.
    print(f"tests: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped")
    history.update({name: round(took, 1) for name, (status, took, _) in results.items() if status == "ok"})
    HISTORY.write_text(json.dumps(history, indent=1, sort_keys=True))
    return 1 if failed or any(status == "not run" for status, _, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
