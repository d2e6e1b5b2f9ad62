"""In-sandbox bootstrap: run one Metaflow step as a plan says, with live mflog-formatted output.

Usage: python -I -S bootstrap.py PLAN.json

Standard library only, and self-contained: this file is shipped into the sandbox on its own, before
the code package (which carries metaflow) is available. It
  1. checks that the endpoints the step needs (the datastore) are reachable, naming any that is not,
  2. makes the code package available (an extracted directory, an archive, or a URL — e.g. a short-lived
     presigned one, so no credential is needed to fetch it), extracted once,
  3. fetches libraries the step needs but the image lacks (e.g. the datastore client), when the plan offers them
     (a plan with `prepare_only` stops here: a sandbox made ready ahead of its task; with `then_plan` too, it
     prints `PREPARED`, waits until that plan is written whole and goes on with it: the sandbox is armed),
  4. fetches the files the plan lists (e.g. an environment's package cache, through presigned URLs) and runs
     its setup commands (e.g. Metaflow's @conda/@pypi bootstrap), their output treated like the step's,
  5. runs the step with the plan's argv, environment and working directory,
  6. decorates every output line as an mflog record (`[MFLOG|0|<utc>Z|task|<id>]line`), writes it to
     its own stdout/stderr at once (the launcher streams it) and appends it to the task's log files,
  7. uploads files and directories the plan lists (logs, local metadata) to their (presigned) URLs,
  8. exits with the step's exit code (128 + N when the step was killed by signal N).
"""

import json
import os
import selectors
import signal
import subprocess
import sys
import time

# Modules only some plans need (fetching, archives, endpoint checks) are imported where they are used: every
# task pays this file's start-up, and they are most of it.

MAX_LINE = 1 << 20  # a longer line is cut into records of this size
READ_SIZE = 1 << 16
EXTRACTED_MARKER = ".metaflow-sandbox-extracted"
EXIT_UNREACHABLE = 202  # an infrastructure failure: Metaflow does not retry it
DRAIN_SECONDS = 0.5  # how long to keep reading after the step exited while its pipes stay open
#: The line an armed bootstrap prints once prepared (plan.PREPARED); nothing it runs has printed before it.
PREPARED = "metaflow-sandbox: prepared"
#: How often an armed bootstrap looks for its plan: often while a task is likely to come soon, then less.
PLAN_POLL = ((10.0, 0.005), (60.0, 0.025), (None, 0.1))
#: The niceness of the work a sandbox does ahead of its task (extracting, probing): where sandboxes share CPUs
#: with running steps, work for a later task must not slow them.
AHEAD_NICENESS = 10
_AHEAD = []  # type: list[bool]  # non-empty while a prepare_only plan runs


def _child_options():
    """Options for the children of the bootstrap's own work: lower priority while preparing ahead."""
    if not _AHEAD or not hasattr(os, "setpriority"):
        return {}

    def lower():
        try:
            os.setpriority(os.PRIO_PROCESS, 0, AHEAD_NICENESS)
        except OSError:
            pass

    return {"preexec_fn": lower}


#: From the sandbox's (backend-made) environment; the proxy settings are how a sandbox with filtered egress
#: reaches anything (bubblewrap's egress proxy).
INHERITED = (
    "PATH",
    "HOME",
    "LANG",
    "TMPDIR",
    "USER",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "http_proxy",
    "https_proxy",
    "ALL_PROXY",
    "NO_PROXY",
    "no_proxy",
)


def _extract_package(archive, dest):
    """Extract a launcher-built .tgz once: with the image's `tar` when it has one (4x faster than tarfile
    for a code package of ~1,000 files), else with tarfile."""
    if os.path.exists(os.path.join(dest, EXTRACTED_MARKER)):
        return
    os.makedirs(dest, exist_ok=True)
    if not _extract_with_tar(archive, dest):
        _extract_with_tarfile(archive, dest)
    open(os.path.join(dest, EXTRACTED_MARKER), "w").close()


def _extract_with_tar(archive, dest):
    import shutil

    tar = shutil.which("tar")
    if tar is None:
        return False
    # -o: never restore the archive's owners (GNU and busybox alike).
    done = subprocess.run(
        [tar, "-x", "-z", "-o", "-f", archive, "-C", dest],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_child_options(),
    )
    if done.returncode == 0:
        return True
    shutil.rmtree(dest, ignore_errors=True)  # start again with tarfile
    os.makedirs(dest, exist_ok=True)
    return False


def _extract_with_tarfile(archive, dest):
    import tarfile

    with tarfile.open(archive, "r:*") as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # pragma: no cover - Python < 3.8.17
            for member in tar.getmembers():
                target = os.path.realpath(os.path.join(dest, member.name))
                if not target.startswith(os.path.realpath(dest) + os.sep):
                    raise SystemExit("unsafe path in code package: %r" % member.name)
            tar.extractall(dest)


_REACHED = []  # type: list[dict]  # endpoints already reached (an armed bootstrap's second plan skips them)


def _check_endpoints(endpoints):
    """Return an error message naming the first endpoint that cannot be reached, or None. With an HTTPS
    proxy in the environment (a sandbox whose egress is filtered), the check asks the proxy for a tunnel."""
    import socket

    proxy = os.environ.get("https_proxy") or os.environ.get("HTTPS_PROXY")
    for endpoint in endpoints:
        if endpoint in _REACHED:
            continue
        host, port = endpoint["host"], int(endpoint["port"])
        try:
            if proxy:
                _tunnel(proxy, host, port)
            else:
                socket.create_connection((host, port), timeout=10).close()
        except OSError as error:
            return (
                "the sandbox cannot reach %s at %s:%s (%s); check the endpoint and the step's network= setting"
                % (endpoint.get("what", "an endpoint"), host, port, error)
            )
        _REACHED.append(endpoint)
    return None


def _tunnel(proxy, host, port):
    """Ask the HTTP proxy at `proxy` (a URL) for a CONNECT tunnel to host:port; OSError if it refuses."""
    import socket
    from urllib.parse import urlsplit

    url = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    target = "[%s]:%s" % (host, port) if ":" in host else "%s:%s" % (host, port)
    with socket.create_connection((url.hostname, url.port or 80), timeout=10) as connection:
        connection.sendall(("CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target, target)).encode())
        status = connection.recv(4096).split(b"\r\n", 1)[0].decode("latin-1", "replace")
    if status.split(" ")[1:2] != ["200"]:
        raise OSError("the egress proxy answered %r" % status)


class FetchError(Exception):
    """Something the plan names could not be fetched; the message names it and the likely cause."""


def _fetch(url, path, what):
    import urllib.error
    import urllib.request

    os.makedirs(os.path.dirname(path), exist_ok=True)
    shown = url.split("?", 1)[0]  # never print a presigned URL's signature
    try:
        with urllib.request.urlopen(url, timeout=300) as response, open(path, "wb") as out:
            while True:
                chunk = response.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
    except urllib.error.HTTPError as error:
        cause = {
            403: "the link expired or the store refused it",
            404: "the object is missing from the datastore (removed by a clean-up or lifecycle rule, or "
            "another store answers at that endpoint); run the flow again to publish it",
        }.get(error.code, "the store answered with an error")
        raise FetchError("could not fetch %s from %s: HTTP %s (%s)" % (what, shown, error.code, cause))
    except (OSError, ValueError) as error:
        raise FetchError("could not fetch %s from %s: %s" % (what, shown, error))


_PROBE = "import importlib.util as u, sys; sys.exit(any(u.find_spec(m) is None for m in sys.argv[1:]))"


def _provide_libraries(python, env, libraries):
    """For each offered bundle whose modules the step's Python cannot import (every bundle that names no
    modules, e.g. the step's locked dependencies): fetch it, extract it once, and append it to the step's
    PYTHONPATH (so the code package stays first)."""
    for library in libraries:
        directory = library["dir"]
        if os.path.exists(os.path.join(directory, EXTRACTED_MARKER)):  # this sandbox's prepare step found
            _append_path(env, directory)  # the modules missing and extracted the bundle
            continue
        if library["modules"] and _importable(python, env, library["modules"]):
            continue
        archive = directory + ".tgz"
        _fetch(library["url"], archive, library.get("what", "the datastore client bundle"))
        _extract_package(archive, directory)
        os.unlink(archive)
        _append_path(env, directory)


def _importable(python, env, modules):
    probe = subprocess.run(
        [python, "-c", _PROBE, *modules],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        **_child_options(),
    )
    return probe.returncode == 0


def _append_path(env, directory):
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([*paths, directory])


def _upload(item):
    """PUT a file, or a directory as a .tgz, to its URL. Missing sources are skipped."""
    import io
    import tarfile
    import urllib.request

    path = item["path"]
    if not os.path.exists(path):
        return
    if os.path.isdir(path):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(path, arcname=".")
        body = buffer.getvalue()
    else:
        with open(path, "rb") as f:
            body = f.read()
    request = urllib.request.Request(
        item["url"], data=body, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()


class _LineDecorator:
    """Turns raw output chunks into mflog records, line by line, with bounded memory."""

    def __init__(self, source, out_fd, log_file):
        self._prefix = b"|" + source.encode("ascii") + b"|"
        self._out_fd = out_fd
        self._log = log_file
        self._pending = b""
        self._counter = 0
        self._id = ("%x-" % os.getpid()).encode("ascii")

    def feed(self, chunk):
        data = self._pending + chunk
        lines = data.split(b"\n")
        self._pending = lines.pop()
        while len(self._pending) > MAX_LINE:
            lines.append(self._pending[:MAX_LINE])
            self._pending = self._pending[MAX_LINE:]
        if lines:
            self._emit(lines)

    def close(self):
        if self._pending:
            self._emit([self._pending])
            self._pending = b""

    def _emit(self, lines):
        now = time.time()
        stamp = b"%s.%06d" % (time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode(), now % 1 * 1e6)
        head = b"[MFLOG|0|" + stamp + b"Z" + self._prefix
        records = []
        for line in lines:
            self._counter += 1
            records.append(b"%s%s%d]%s\n" % (head, self._id, self._counter, line))
        blob = b"".join(records)
        if self._log is not None:
            self._log.write(blob)
        view = memoryview(blob)
        while view:
            written = os.write(self._out_fd, view)
            view = view[written:]


def _open_log(path):
    if not path:
        return None
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    return open(path, "ab", buffering=0)


def run(plan):
    """Execute `plan` (a dict) and return the step's exit code."""
    unreachable = _check_endpoints(plan.get("endpoints") or [])
    if unreachable:
        sys.stderr.write("[sandbox] %s\n" % unreachable)
        return EXIT_UNREACHABLE
    package = plan.get("package") or {}
    workdir = plan.get("workdir") or os.getcwd()
    os.makedirs(workdir, exist_ok=True)
    # The sandbox's own basics (set by the backend, never the launcher's), then the step's environment.
    env = {k: os.environ[k] for k in INHERITED if k in os.environ}
    env.update(plan.get("env") or {})
    python = plan["python"]
    if os.sep not in python:  # e.g. "python3" from the image: resolve it on the sandbox's PATH
        import shutil

        python = shutil.which(python, path=env.get("PATH")) or python
    try:
        if package.get("url"):
            package["archive"] = package.get("archive") or os.path.join(
                package["dir"] + ".download", "package.tgz"
            )
            if not os.path.exists(os.path.join(package["dir"], EXTRACTED_MARKER)):
                _fetch(package["url"], package["archive"], "the code package")
        if package.get("archive"):
            _extract_package(package["archive"], package["dir"])
        _provide_libraries(python, env, plan.get("libraries") or [])
        if plan.get("prepare_only"):
            return 0
        if plan.get("files"):
            _fetch_files(plan["files"])
    except FetchError as error:
        sys.stderr.write("[sandbox] %s\n" % error)
        return EXIT_UNREACHABLE
    source = plan.get("log_source", "task")
    logs = plan.get("log_paths") or {}
    # One decorator per stream for the setup commands and the step: their records share one counter.
    decorators = (
        _LineDecorator(source, 1, _open_log(logs.get("stdout"))),
        _LineDecorator(source, 2, _open_log(logs.get("stderr"))),
    )
    code = 0
    for command in plan.get("setup") or []:
        argv = list(command["argv"])
        if argv and argv[0] == "python":
            argv[0] = python
        code = _run_streamed(argv, workdir, dict(env, **(command.get("env") or {})), decorators)
        if code != 0:
            sys.stderr.write(
                "[sandbox] setting up %s failed (exit %d)\n" % (command.get("what", "the step"), code)
            )
            break
    if code == 0:
        step_python = list(plan.get("step_python") or [python])
        if not os.path.isabs(step_python[0]) and os.sep in step_python[0]:
            step_python[0] = os.path.join(workdir, step_python[0])
        code = _run_streamed([*step_python, *plan["argv"]], workdir, env, decorators)
    for item, problem in _upload_all(plan.get("uploads") or []):
        sys.stderr.write("[sandbox] could not upload %s: %s\n" % (item["path"], problem))
        code = code or EXIT_UNREACHABLE
    return code


def _fetch_files(files):
    """Fetch every file the plan lists, a few at once (each is a round trip of its own)."""
    from concurrent.futures import ThreadPoolExecutor

    def fetch(item):
        _fetch(item["url"], item["path"], item.get("what", os.path.basename(item["path"])))
        if item.get("executable"):
            os.chmod(item["path"], 0o755)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in pool.map(fetch, files):  # re-raises the first FetchError
            pass


def _run_streamed(argv, workdir, env, decorators):
    """Run `argv`, its output decorated as mflog records as it comes; return its exit code (128 + N when
    killed by signal N). Termination signals sent to the bootstrap are forwarded to it."""
    process = subprocess.Popen(
        argv,
        cwd=workdir,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    def forward(signum, _frame):
        try:
            process.send_signal(signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    assert process.stdout is not None and process.stderr is not None
    by_fd = {process.stdout.fileno(): decorators[0], process.stderr.fileno(): decorators[1]}
    selector = selectors.DefaultSelector()
    for fd in by_fd:
        os.set_blocking(fd, False)
        selector.register(fd, selectors.EVENT_READ)
    open_fds = set(by_fd)
    drain_until = None
    while open_fds:
        for key, _ in selector.select(timeout=0.2):
            fd = key.fd
            try:
                chunk = os.read(fd, READ_SIZE)
            except BlockingIOError:
                continue
            if chunk:
                by_fd[fd].feed(chunk)
            else:
                selector.unregister(fd)
                open_fds.discard(fd)
        if drain_until is None and process.poll() is not None:
            # The process is gone; one it left behind may hold the pipes open. Take what is
            # there, then stop: the sandbox (and that process) is destroyed when we return.
            drain_until = time.monotonic() + DRAIN_SECONDS
        if drain_until is not None and time.monotonic() > drain_until:
            break
    selector.close()
    for decorator in decorators:
        decorator.close()
    process.stdout.close()
    process.stderr.close()
    code = process.wait()
    return 128 - code if code < 0 else code


def _upload_all(items):
    """PUT every item at once (each is a round trip of its own); (item, error) of each that failed."""
    import threading

    failed = []

    def put(item):
        try:
            _upload(item)
        except OSError as error:
            failed.append((item, error))

    threads = [threading.Thread(target=put, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failed


def _not_dumpable():
    """PR_SET_DUMPABLE 0: the step (same user) can then neither ptrace this process nor open its
    /proc/PID/fd, /proc/PID/mem (it could forge the lines the launcher reads). The step's own exec makes it
    dumpable again. Best effort: a no-op off Linux."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE
    except (OSError, AttributeError):
        pass


def _load(path):
    with open(path, "rb") as f:
        plan = json.load(f)
    if plan.get("version") != 1:
        raise ValueError("unsupported plan version %r" % plan.get("version"))
    return plan


def _await_plan(path, wait):
    """The plan at `path` once the launcher has written it whole, or None after `wait` seconds. A plan is one
    JSON object with nothing after it, so no part of one being written parses."""
    started = time.monotonic()
    while True:
        waited = time.monotonic() - started
        if os.path.exists(path):
            try:
                return _load(path)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if waited > wait:
                    raise ValueError("the plan at %s is not JSON" % path)
        elif waited > wait:
            return None
        time.sleep(next(pause for until, pause in PLAN_POLL if until is None or waited < until))


def main(argv):
    _not_dumpable()
    if len(argv) != 2:
        sys.stderr.write("usage: bootstrap.py PLAN.json\n")
        return 2
    try:
        plan = _load(argv[1])
    except ValueError as error:  # JSON errors included
        sys.stderr.write("bootstrap.py: %s\n" % error)
        return 2
    if plan.get("prepare_only"):
        _AHEAD.append(True)
    code = run(plan)
    del _AHEAD[:]
    if code != 0 or not plan.get("then_plan"):
        return code
    sys.stdout.write(PREPARED + "\n")
    sys.stdout.flush()
    try:
        plan = _await_plan(plan["then_plan"], float(plan.get("then_wait") or 600))
    except ValueError as error:
        sys.stderr.write("bootstrap.py: %s\n" % error)
        return 2
    return 0 if plan is None else run(plan)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
