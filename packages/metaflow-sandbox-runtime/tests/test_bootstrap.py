import json
import re
import subprocess
import sys
import tarfile
import time

from metaflow_sandbox_runtime import Plan, bootstrap_path

MFLOG = re.compile(rb"^\[MFLOG\|0\|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z\|task\|[^\]]+\](.*)$")


def run_plan(tmp_path, code, **kw):
    plan = Plan(
        python=sys.executable,
        argv=["-c", code],
        package_dir=str(tmp_path / "pkg"),
        workdir=str(tmp_path / "w"),
        log_paths={"stdout": str(tmp_path / "out.log"), "stderr": str(tmp_path / "err.log")},
        **kw,
    )
    (tmp_path / "plan.json").write_text(plan.to_json())
    return subprocess.Popen(
        plan.command(bootstrap_path(), str(tmp_path / "plan.json")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_streams_mflog_lines_and_persists(tmp_path):
    proc = run_plan(
        tmp_path,
        "import sys,time\nprint('one', flush=True)\ntime.sleep(1.5)\nprint('two')\nprint('err', file=sys.stderr)\nsys.exit(3)",
    )
    start = time.monotonic()
    first = proc.stdout.readline()
    assert time.monotonic() - start < 1.2  # arrived while the step still ran
    assert MFLOG.match(first.rstrip(b"\n")).group(1) == b"one"
    rest, err = proc.communicate()
    assert proc.returncode == 3
    assert [MFLOG.match(line).group(1) for line in rest.splitlines()] == [b"two"]
    assert MFLOG.match(err.rstrip(b"\n")).group(1) == b"err"
    assert (tmp_path / "out.log").read_bytes() == first + rest
    assert (tmp_path / "err.log").read_bytes() == err


def test_signal_exit_code_and_env_and_archive(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("VALUE = 'from package'\n")
    with tarfile.open(tmp_path / "pkg.tgz", "w:gz") as tar:
        tar.add(src / "mod.py", arcname="mod.py")
    code = "import os, mod; print(mod.VALUE, os.environ['ONLY'], flush=True); os.kill(os.getpid(), 9)"
    proc = run_plan(
        tmp_path,
        code,
        package_archive=str(tmp_path / "pkg.tgz"),
        env={"ONLY": "this", "PYTHONPATH": str(tmp_path / "pkg")},
    )
    out, err = proc.communicate()
    assert proc.returncode == 137, err
    assert out.rstrip().endswith(b"from package this")


def test_plan_round_trip():
    plan = Plan(python="p", argv=["a"], package_dir="/d", workdir="/w", env={"A": "1"})
    assert Plan.from_dict(json.loads(plan.to_json())) == plan


def test_fetches_package_by_url_uploads_results_and_names_unreachable_endpoints(tmp_path):
    import gzip
    import http.server
    import io
    import threading

    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("VALUE = 'fetched'\n")
    with tarfile.open(tmp_path / "pkg.tgz", "w:gz") as tar:
        tar.add(src / "mod.py", arcname="mod.py")
    archive = (tmp_path / "pkg.tgz").read_bytes()
    received = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(archive)

        def do_PUT(self):
            received[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    out_dir = tmp_path / "meta"
    out_dir.mkdir()
    (out_dir / "record.json").write_text("{}")
    try:
        plan = Plan(
            python=sys.executable,
            argv=["-c", "import mod; print(mod.VALUE)"],
            package_dir=str(tmp_path / "pkg"),
            workdir=str(tmp_path / "w"),
            env={"PYTHONPATH": str(tmp_path / "pkg")},
            package_url=base + "/pkg",
            log_paths={"stdout": str(tmp_path / "out.log")},
            endpoints=[{"host": "127.0.0.1", "port": str(server.server_address[1]), "what": "the datastore"}],
            uploads=[
                {"path": str(tmp_path / "out.log"), "url": base + "/log"},
                {"path": str(out_dir), "url": base + "/meta"},
            ],
        )
        (tmp_path / "plan.json").write_text(plan.to_json())
        done = subprocess.run(
            plan.command(bootstrap_path(), str(tmp_path / "plan.json")), capture_output=True
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.rstrip().endswith(b"fetched")
        assert received["/log"] == (tmp_path / "out.log").read_bytes()
        with tarfile.open(fileobj=io.BytesIO(received["/meta"])) as tar:
            assert "./record.json" in tar.getnames()
        assert gzip.decompress(received["/meta"])  # a real .tgz
    finally:
        server.shutdown()
    plan.endpoints = [{"host": "127.0.0.1", "port": "1", "what": "the datastore"}]
    (tmp_path / "plan.json").write_text(plan.to_json())
    done = subprocess.run(plan.command(bootstrap_path(), str(tmp_path / "plan.json")), capture_output=True)
    assert done.returncode == 202
    assert b"cannot reach the datastore at 127.0.0.1:1" in done.stderr


def test_libraries_are_fetched_only_when_the_image_cannot_import_them(tmp_path):
    import http.server
    import threading

    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "bundled_client.py").write_text("WHERE = 'bundle'\n")
    with tarfile.open(tmp_path / "lib.tgz", "w:gz") as tar:
        tar.add(lib / "bundled_client.py", arcname="bundled_client.py")
    archive = (tmp_path / "lib.tgz").read_bytes()
    fetches = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            fetches.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(archive)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/lib.tgz"
    try:
        code = "import bundled_client, sys; print(bundled_client.WHERE, [p for p in sys.path if 'pkg' in p or 'libs' in p])"
        offered = [{"modules": ["bundled_client"], "url": url, "dir": str(tmp_path / "libs")}]
        proc = run_plan(tmp_path, code, libraries=offered, env={"PYTHONPATH": str(tmp_path / "pkg")})
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        # Fetched once, appended after the code package on the step's path.
        assert fetches == ["/lib.tgz"]
        assert out.rstrip().endswith(f"bundle ['{tmp_path / 'pkg'}', '{tmp_path / 'libs'}']".encode())

        present = [{"modules": ["json"], "url": url, "dir": str(tmp_path / "unused")}]
        proc = run_plan(tmp_path, "import json", libraries=present)
        assert proc.wait(timeout=60) == 0
        assert fetches == ["/lib.tgz"] and not (tmp_path / "unused").exists()

        # A bundle naming no modules (the step's locked dependencies) is always provided, whatever the image has.
        always = [{"modules": [], "url": url, "dir": str(tmp_path / "env"), "what": "the uv environment"}]
        proc = run_plan(
            tmp_path, "import bundled_client, sys; print(bundled_client.__file__)", libraries=always
        )
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert fetches == ["/lib.tgz", "/lib.tgz"] and str(tmp_path / "env").encode() in out
    finally:
        server.shutdown()


def test_a_missing_object_exits_202_with_one_line_naming_it(tmp_path):
    """A code package the store no longer holds (a bucket emptied, a fresh server): one line, no traceback."""
    import http.server
    import threading

    class Missing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Missing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        plan = Plan(
            python=sys.executable,
            argv=["-c", "print('never')"],
            package_dir=str(tmp_path / "pkg"),
            workdir=str(tmp_path / "w"),
            package_url=f"http://127.0.0.1:{server.server_address[1]}/bucket/pkg.tgz?X-Amz-Signature=secret",
        )
        (tmp_path / "plan.json").write_text(plan.to_json())
        done = subprocess.run(
            plan.command(bootstrap_path(), str(tmp_path / "plan.json")), capture_output=True, text=True
        )
    finally:
        server.shutdown()
    assert done.returncode == 202
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert "could not fetch the code package from http://127.0.0.1" in lines[0]
    assert "/bucket/pkg.tgz: HTTP 404 (the object is missing from the datastore" in lines[0]
    assert "secret" not in lines[0]


def _bootstrap_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bootstrap_under_test", bootstrap_path())
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_extracts_with_tar_and_falls_back_to_tarfile(tmp_path, monkeypatch):
    bootstrap = _bootstrap_module()
    src = tmp_path / "src" / "pkg"
    src.mkdir(parents=True)
    (src / "mod.py").write_text("VALUE = 1\n")
    with tarfile.open(tmp_path / "pkg.tgz", "w:gz") as tar:
        tar.add(src, arcname="pkg")
    bootstrap._extract_package(str(tmp_path / "pkg.tgz"), str(tmp_path / "with-tar"))
    assert (tmp_path / "with-tar" / "pkg" / "mod.py").read_text() == "VALUE = 1\n"

    # An image whose tar fails (or is missing) still gets the package, through tarfile.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "tar").write_text('#!/bin/sh\necho partial > "$7/leftover"\nexit 2\n')
    (fake / "tar").chmod(0o755)
    monkeypatch.setenv("PATH", str(fake))
    bootstrap._extract_package(str(tmp_path / "pkg.tgz"), str(tmp_path / "fallback"))
    assert sorted(p.name for p in (tmp_path / "fallback").iterdir()) == [
        ".metaflow-sandbox-extracted",
        "pkg",
    ]
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    bootstrap._extract_package(str(tmp_path / "pkg.tgz"), str(tmp_path / "no-tar"))
    assert (tmp_path / "no-tar" / "pkg" / "mod.py").exists()


def test_endpoint_check_asks_the_egress_proxy_for_a_tunnel_when_there_is_one(monkeypatch):
    import importlib.util
    import socket
    import threading

    spec = importlib.util.spec_from_file_location("bootstrap_under_test", bootstrap_path())
    bootstrap = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bootstrap)
    server = socket.create_server(("127.0.0.1", 0))
    asked = []

    def answer():
        for _ in range(2):
            connection, _ = server.accept()
            with connection:
                request = connection.recv(4096).decode()
                asked.append(request.split("\r\n", 1)[0])
                ok = "allowed.example" in request
                connection.sendall(b"HTTP/1.1 200 OK\r\n\r\n" if ok else b"HTTP/1.1 403 Forbidden\r\n\r\n")

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:%d" % server.getsockname()[1])
    assert bootstrap._check_endpoints([{"host": "allowed.example", "port": "443"}]) is None
    problem = bootstrap._check_endpoints([{"host": "other.example", "port": "9000", "what": "the datastore"}])
    assert "cannot reach the datastore at other.example:9000" in problem and "403" in problem
    assert asked == ["CONNECT allowed.example:443 HTTP/1.1", "CONNECT other.example:9000 HTTP/1.1"]
    server.close()


def test_uploads_go_at_once_and_a_failed_one_is_reported_as_infrastructure(tmp_path):
    import http.server
    import threading

    together = threading.Barrier(2, timeout=10)  # broken (500) unless both PUTs are in flight together
    received = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_PUT(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            try:
                together.wait()
            except threading.BrokenBarrierError:
                self.send_response(500)
            else:
                received[self.path] = body
                self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    for name in ("out.log", "err.log", "lost.log"):
        (tmp_path / name).write_text(name)
    plan = Plan(
        python=sys.executable,
        argv=["-c", "pass"],
        package_dir=str(tmp_path / "pkg"),
        workdir=str(tmp_path / "w"),
        uploads=[
            {"path": str(tmp_path / "out.log"), "url": base + "/out"},
            {"path": str(tmp_path / "err.log"), "url": base + "/err"},
            {"path": str(tmp_path / "lost.log"), "url": "http://127.0.0.1:1/lost"},
        ],
    )
    (tmp_path / "plan.json").write_text(plan.to_json())
    try:
        done = subprocess.run(
            plan.command(bootstrap_path(), str(tmp_path / "plan.json")), capture_output=True
        )
    finally:
        server.shutdown()
    assert received == {"/out": b"out.log", "/err": b"err.log"}
    assert done.returncode == 202
    assert f"could not upload {tmp_path / 'lost.log'}".encode() in done.stderr


def test_files_then_setup_then_the_step_under_the_interpreter_setup_made(tmp_path):
    """The @conda/@pypi shape: files fetched, a setup command (argv[0] "python" is the plan's) makes an
    interpreter under the workdir, the step runs under it; all output is one mflog stream, in order."""
    import http.server
    import threading

    objects = {"/pkg-a": b"AAA", "/tool": b"#!/bin/sh\necho tool\n"}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = objects.get(self.path.split("?")[0])
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    cache = tmp_path / "cache"
    make_env = (
        "import os, sys; assert open(os.environ['CACHE'] + '/a/pkg-a').read() == 'AAA';"
        "os.makedirs('env/bin'); os.symlink(sys.executable, 'env/bin/python');"
        "print('setup out', flush=True); print('setup err', file=sys.stderr)"
    )
    try:
        proc = run_plan(
            tmp_path,
            "import sys; print('step', sys.flags.no_user_site, sys.executable.endswith('env/bin/python'))",
            files=[
                {"url": base + "/pkg-a?sig=1", "path": str(cache / "a" / "pkg-a")},
                {
                    "url": base + "/tool",
                    "path": str(tmp_path / "w" / "tool" / "bin" / "tool"),
                    "executable": True,
                },
            ],
            setup=[
                {"argv": ["python", "-c", make_env], "env": {"CACHE": str(cache)}, "what": "the environment"},
                {"argv": [str(tmp_path / "w" / "tool" / "bin" / "tool")], "env": {}, "what": "the tool"},
            ],
            step_python=["env/bin/python", "-s"],
        )
        out, err = proc.communicate()
    finally:
        server.shutdown()
    assert proc.returncode == 0, err
    lines = [MFLOG.match(line).group(1) for line in out.splitlines()]
    assert lines == [b"setup out", b"tool", b"step 1 True"]
    assert [MFLOG.match(line).group(1) for line in err.splitlines()] == [b"setup err"]
    ids = [re.search(rb"\|task\|([^\]]+)\]", line).group(1) for line in out.splitlines()]
    assert len(set(ids)) == len(ids), "records of the setup and the step must not share an id"
    assert (tmp_path / "out.log").read_bytes() == out


def test_a_failed_setup_ends_the_task_before_the_step_and_a_missing_file_is_infrastructure(tmp_path):
    proc = run_plan(
        tmp_path,
        "print('the step ran')",
        setup=[
            {"argv": ["python", "-c", "import sys; sys.exit(7)"], "env": {}, "what": "the conda environment"}
        ],
    )
    out, err = proc.communicate()
    assert proc.returncode == 7
    assert b"the step ran" not in out
    assert b"setting up the conda environment failed (exit 7)" in err
    proc = run_plan(
        tmp_path,
        "print('the step ran')",
        files=[{"url": "http://127.0.0.1:1/x", "path": str(tmp_path / "x"), "what": "a cached package"}],
    )
    out, err = proc.communicate()
    assert proc.returncode == 202 and b"the step ran" not in out
    assert b"could not fetch a cached package from http://127.0.0.1:1/x" in err


def test_an_armed_bootstrap_prepares_says_so_then_runs_the_plan_it_is_given(tmp_path):
    """prepare_only + then_plan: the package is extracted, PREPARED is the first line, nothing runs until the
    plan is written whole, then that plan's step runs with its own environment."""
    from metaflow_sandbox_runtime.plan import PREPARED

    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("VALUE = 'from package'\n")
    with tarfile.open(tmp_path / "pkg.tgz", "w:gz") as tar:
        tar.add(src / "mod.py", arcname="mod.py")
    later = tmp_path / "task.json"
    proc = run_plan(
        tmp_path,
        "raise SystemExit('the prepare plan ran its argv')",
        package_archive=str(tmp_path / "pkg.tgz"),
        prepare_only=True,
        then_plan=str(later),
        then_wait=60,
    )
    assert proc.stdout.readline() == PREPARED + b"\n"
    assert (tmp_path / "pkg" / "mod.py").exists()
    task = Plan(
        python=sys.executable,
        argv=["-c", "import os, mod; print(mod.VALUE, os.environ['ONLY']); raise SystemExit(4)"],
        package_dir=str(tmp_path / "pkg"),
        workdir=str(tmp_path / "w"),
        env={"ONLY": "the task's", "PYTHONPATH": str(tmp_path / "pkg")},
    )
    text = task.to_json()
    later.write_text(text[:-1])  # being written: every prefix of the plan fails to parse
    time.sleep(0.3)
    assert proc.poll() is None, "the bootstrap ran a plan that was not whole"
    later.write_text(text)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 4, err
    assert [MFLOG.match(line).group(1) for line in out.splitlines()] == [b"from package the task's"]


def test_an_armed_bootstrap_left_waiting_exits_quietly_and_a_failed_preparation_never_says_prepared(tmp_path):
    proc = run_plan(
        tmp_path, "pass", prepare_only=True, then_plan=str(tmp_path / "never.json"), then_wait=0.2
    )
    out, err = proc.communicate(timeout=30)
    assert (proc.returncode, out) == (0, b"metaflow-sandbox: prepared\n"), err
    proc = run_plan(
        tmp_path,
        "pass",
        package_url="http://127.0.0.1:9/missing.tgz",
        prepare_only=True,
        then_plan=str(tmp_path / "never.json"),
        then_wait=60,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 202 and out == b"", (out, err)


def test_the_prepared_marker_is_the_same_on_both_sides():
    from metaflow_sandbox_runtime.plan import PREPARED

    assert _bootstrap_module().PREPARED.encode() == PREPARED


def test_work_ahead_of_a_task_runs_at_low_priority_and_the_task_at_its_own(tmp_path):
    """A prepared-ahead sandbox may share CPUs with running steps: its extraction runs niced; a task's own does
    not. A stand-in `tar` records its niceness, then fails, so tarfile extracts."""
    import os

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "niceness"
    tar = bin_dir / "tar"
    tar.write_text(
        f"#!{sys.executable}\nimport os\nopen({str(record)!r}, 'a').write('%d\\n' % os.nice(0))\nraise SystemExit(1)\n"
    )
    tar.chmod(0o755)
    src = tmp_path / "src"
    src.mkdir()
    (src / "mod.py").write_text("VALUE = 1\n")
    with tarfile.open(tmp_path / "pkg.tgz", "w:gz") as tar_file:
        tar_file.add(src / "mod.py", arcname="mod.py")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for ahead, name in ((True, "ahead"), (False, "own")):
        plan = Plan(
            python=sys.executable,
            argv=["-c", "pass"],
            package_dir=str(tmp_path / name),
            package_archive=str(tmp_path / "pkg.tgz"),
            workdir=str(tmp_path / "w"),
            prepare_only=ahead,
        )
        (tmp_path / f"{name}.json").write_text(plan.to_json())
        done = subprocess.run(
            plan.command(bootstrap_path(), str(tmp_path / f"{name}.json")), env=env, check=False
        )
        assert done.returncode == 0 and (tmp_path / name / "mod.py").exists()
    base = os.nice(0)
    assert [int(n) for n in record.read_text().split()] == [min(base + 10, 19), base]
