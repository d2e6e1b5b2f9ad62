"""The in-sandbox half of filtered egress: a forwarder from 127.0.0.1:`PROXY_PORT` to the proxy's unix socket.

`FORWARDER_SOURCE` runs (as `python3 -I -S -c SOURCE socket_path -- argv...`) at the start of every command of a
sandbox with filtered egress: it listens, detaches a server (re-parented to bwrap's init, so it dies with the
command's pid namespace and no command ever waits for it), then becomes the command. The caller must give each
such command a pid namespace of its own (bwrap `--unshare-pid`), or the server outlives it. Standard library
only; it forwards bytes and decides nothing (`egress_proxy.EgressProxy` does).
"""

from __future__ import annotations

#: Where the forwarder listens inside the sandbox's own network namespace.
PROXY_PORT = 3128
#: Where bubblewrap binds the proxy's socket directory inside its sandboxes (read-only).
SOCKET_DIR = "/run/metaflow-sandbox-egress"
SOCKET_NAME = "proxy.sock"
#: The interpreter that runs the forwarder (the host's /usr is bound read-only into every sandbox).
FORWARDER_PYTHON = "/usr/bin/python3"

FORWARDER_SOURCE = (
    r"""
import os, socket, sys, threading
path, argv = sys.argv[1], sys.argv[3:]
listener = socket.socket()
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind(("127.0.0.1", %d))
listener.listen(128)
def copy(source, target):
    try:
        while True:
            chunk = source.recv(65536)
            if not chunk:
                break
            target.sendall(chunk)
    except OSError:
        pass
    try:
        target.shutdown(socket.SHUT_WR)
    except OSError:
        pass
def serve(client):
    upstream = socket.socket(socket.AF_UNIX)
    try:
        upstream.connect(path)
    except OSError:
        client.close()
        return
    threading.Thread(target=copy, args=(upstream, client), daemon=True).start()
    copy(client, upstream)
child = os.fork()
if child == 0:
    if os.fork():
        os._exit(0)
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    while True:
        client, _ = listener.accept()
        threading.Thread(target=serve, args=(client,), daemon=True).start()
os.waitpid(child, 0)
listener.close()
try:
    os.execvp(argv[0], argv)
except OSError as error:
    sys.stderr.write("bwrap: execvp %%s: %%s\n" %% (argv[0], error.strerror))
    os._exit(127 if isinstance(error, FileNotFoundError) else 126)
"""
    % PROXY_PORT
)


def proxy_env() -> dict[str, str]:
    """What makes clients (urllib, requests, botocore, curl, pip) use the forwarder for every destination."""
    url = f"http://127.0.0.1:{PROXY_PORT}"
    env = {name: url for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")}
    env.update({"NO_PROXY": "", "no_proxy": ""})
    return env


def forwarder_argv(argv: list[str], socket_path: str = f"{SOCKET_DIR}/{SOCKET_NAME}") -> list[str]:
    """`argv` run behind the forwarder to the proxy at `socket_path` (a path as the sandbox sees it)."""
    return [FORWARDER_PYTHON, "-I", "-S", "-c", FORWARDER_SOURCE, socket_path, "--", *argv]
