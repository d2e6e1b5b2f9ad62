"""`--environment=pypi` / `--environment=conda` (@pypi, @conda) for sandboxed steps.

Metaflow resolves and builds these environments on the launcher (`init_environment`, with micromamba) and,
with a remote datastore, caches every resolved package under `<sysroot>/conda` (as it does for @batch).
- A backend that shares this machine's userland (bubblewrap) runs the step with that environment's
  interpreter, its prefix mounted read-only: nothing installs per task.
- A remote backend runs what Metaflow's `bootstrap_commands` run in a @batch task
  (`python -m metaflow.plugins.pypi.bootstrap FLOW ID DATASTORE`) as a setup command of the plan, then the step
  under `environment.executable(step)`. The sandbox never reaches an index nor the internet: the launcher
  presigns exactly the cached objects the environment's manifest names (its scoped credentials read none of
  `<sysroot>/conda`), the bootstrap fetches them into a per-sandbox directory and Metaflow's bootstrap reads them
  from there as a local package cache; micromamba, which Metaflow's bootstrap would download, comes from the
  launcher through the datastore.

Metaflow's conda decorator points the task's entrypoint at that interpreter unless it sees @batch/@kubernetes;
`keep_sandbox_entrypoint` makes sure a sandboxed task still goes through the sandbox launcher.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
from typing import Any

from metaflow_sandbox_core import ConfigError

ENVIRONMENT_TYPES = ("conda", "pypi")
DECORATORS = ("conda", "pypi")
SANDBOX_COMMANDS = ["sandbox", "step"]
#: The module Metaflow's `bootstrap_commands` run in a remote task to create the environment offline.
BOOTSTRAP_MODULE = "metaflow.plugins.pypi.bootstrap"
#: Per sandbox, below the plan's workdir: where the cached packages are fetched (a local package root).
CACHE_DIR = ".sandbox-conda-cache"


def uses_environment(environment: Any, flow: Any, step: str) -> bool:
    """Whether `step` runs in a Metaflow-built @conda/@pypi environment."""
    if getattr(environment, "TYPE", None) not in ENVIRONMENT_TYPES:
        return False
    graph_step = next((s for s in flow if s.name == step), None)
    return graph_step is not None and not environment.is_disabled(graph_step)


def package_root(datastore_type: str) -> str:
    """Where Metaflow caches the environment's packages (`METAFLOW_CONDA_PACKAGE_<TYPE>ROOT`, else
    `<sysroot>/conda`), as Metaflow computes it."""
    from metaflow.plugins import DATASTORES
    from metaflow.plugins.pypi import _datastore_packageroot

    datastore = next(d for d in DATASTORES if datastore_type == d.TYPE)
    return str(_datastore_packageroot(datastore, lambda *args, **kwargs: None))


def check_package_cache(
    backend: str, datastore_type: str, datastore_root: str, cache_root: str | None
) -> None:
    """A remote sandbox reads the package cache only through presigned reads under its datastore root: refuse
    (before any sandbox exists) a cache it cannot read, naming the fix."""
    if datastore_type != "s3":
        raise ConfigError(
            "@pypi/@conda on the %r backend needs a package cache the sandbox's credentials cannot read with the "
            "%s datastore (Metaflow caches packages only in a remote one); run with --datastore=s3."
            % (backend, datastore_type)
        )
    root = datastore_root.rstrip("/")
    if not cache_root or not cache_root.rstrip("/").startswith(root + "/"):
        raise ConfigError(
            "@pypi/@conda packages are cached at %s, a package cache the sandbox's credentials cannot read (they "
            "cover only %s); unset METAFLOW_CONDA_PACKAGE_S3ROOT so Metaflow caches them under %s/conda."
            % (cache_root, root, root)
        )


def _setup_command(environment: Any, step: str) -> tuple[dict[str, str], list[str]]:
    """The environment's own bootstrap command for `step` (from `bootstrap_commands`), as (env, argv)."""
    for command in environment.bootstrap_commands(step, environment.datastore_type):
        if f"-m {BOOTSTRAP_MODULE} " not in command:
            continue
        words = shlex.split(command)
        at = words.index("python")
        env = dict(word.split("=", 1) for word in words[:at])
        return env, words[at:]
    raise ConfigError(
        "This Metaflow's @pypi/@conda bootstrap does not run %s, which sandboxed steps on remote backends rely "
        "on; use the Metaflow version this extension supports (see its requirements)." % BOOTSTRAP_MODULE
    )


def remote_environment(
    environment: Any, flow: Any, step: str, platform: str, cache_dir: str, micromamba: str | None
) -> dict:
    """What a remote sandbox needs to build `step`'s environment offline (a TaskLaunch carries it)."""
    graph_step = next(s for s in flow if s.name == step)
    id_ = environment.get_environment(graph_step)["id_"]
    packages: list[str] = []
    for type_ in ("conda", "pypi"):
        for package in environment.read_from_environment_manifest([id_, platform, type_]) or []:
            if not package.get("path"):
                raise ConfigError(
                    "@pypi/@conda: %s is not in the package cache the sandbox reads (Metaflow caches packages "
                    "only with a remote datastore); run with --datastore=s3." % package.get("url")
                )
            packages.append(package["path"])
    if not packages:
        raise ConfigError(
            "@pypi/@conda: the environment of step %s was not resolved for %s; run the flow again (Metaflow "
            "resolves for the sandbox decorator's target_platform)." % (step, platform)
        )
    from metaflow.metaflow_config import DATASTORE_LOCAL_DIR

    env, argv = _setup_command(environment, step)
    argv[-1] = "local"  # the fetched copy of the cache, a local package root (below)
    interpreter = shlex.split(environment.executable(step).replace("$MF_ARCH", platform))
    return {
        "id": id_,
        "platform": platform,
        "package_root": package_root(environment.datastore_type),
        # Below METAFLOW_DATASTORE_SYSROOT_LOCAL, where Metaflow's local datastore keeps its package cache.
        "local_package_root": f"{DATASTORE_LOCAL_DIR}/conda",
        "packages": packages,
        "setup_env": env,
        "setup_argv": argv,
        "interpreter": interpreter,
        "micromamba": content_named_micromamba(_micromamba_for(environment, platform, micromamba), cache_dir),
    }


def _micromamba_for(environment: Any, platform: str, configured: str | None) -> str:
    """The micromamba binary the sandbox gets: METAFLOW_SANDBOX_MICROMAMBA, else the launcher's own when the
    launcher is the sandbox's platform (Metaflow's bootstrap would download one from the internet)."""
    if configured:
        if not os.access(configured, os.X_OK):
            raise ConfigError("METAFLOW_SANDBOX_MICROMAMBA=%s is not an executable file." % configured)
        return configured
    solver = environment.solvers["conda"]
    if solver.platform() != platform:
        raise ConfigError(
            "@pypi/@conda sandboxes need a %s micromamba and this launcher's is for %s; set "
            "METAFLOW_SANDBOX_MICROMAMBA to a %s micromamba binary." % (platform, solver.platform(), platform)
        )
    return str(solver.bin)


_NAMED: dict[tuple[str, int, int], str] = {}


def content_named_micromamba(binary: str, cache_dir: str) -> str:
    """A copy of `binary` named by its content (stored once per content next to the datastore)."""
    stat = os.stat(binary)
    key = (os.path.realpath(binary), stat.st_size, stat.st_mtime_ns)
    if key not in _NAMED:
        digest = hashlib.sha256()
        with open(binary, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        named = os.path.join(cache_dir, "environments", "micromamba-" + digest.hexdigest()[:24])
        if not os.path.exists(named):
            os.makedirs(os.path.dirname(named), exist_ok=True)
            partial = "%s.%d.partial" % (named, os.getpid())
            shutil.copyfile(binary, partial)
            os.replace(partial, named)
        _NAMED[key] = named
    return _NAMED[key]


def package_urls(conda: dict) -> list[str]:
    """The cached objects the environment needs, as datastore URLs (the only ones the sandbox may read)."""
    root = conda["package_root"].rstrip("/")
    return [f"{root}/{path}" for path in conda["packages"]]


def plan_fields(conda: dict, workdir: str, reads: list[str], micromamba_url: str) -> dict:
    """The plan's `files`, `setup` and `step_python` for a remote sandbox: fetch the cache (presigned `reads`,
    in `package_urls` order) and micromamba, run Metaflow's bootstrap on them, run the step in the result."""
    cache = f"{workdir}/{CACHE_DIR}"
    local_root = f"{cache}/{conda['local_package_root']}"
    files: list[dict] = [
        {"url": url, "path": f"{local_root}/{path}", "what": "a cached package of the environment"}
        for url, path in zip(reads, conda["packages"], strict=True)
    ]
    # Where Metaflow's bootstrap looks for micromamba before downloading it.
    files.append(
        {
            "url": micromamba_url,
            "path": f"{workdir}/micromamba/bin/micromamba",
            "executable": True,
            "what": "micromamba",
        }
    )
    env = {
        **conda["setup_env"],
        "METAFLOW_DATASTORE_SYSROOT_LOCAL": cache,  # its local package root: <cache>/.metaflow/conda
        "METAFLOW_CONDA_USE_FAST_INIT": "0",  # the fast initializer is downloaded from the internet
    }
    return {
        "files": files,
        "setup": [{"argv": conda["setup_argv"], "env": env, "what": "the @pypi/@conda environment"}],
        "step_python": conda["interpreter"],
    }


def keep_sandbox_entrypoint(decos: list[Any]) -> None:
    """Stop @conda/@pypi from replacing a sandboxed task's entrypoint with the environment's interpreter
    (whichever order the decorators' `runtime_step_cli` hooks run in)."""
    for deco in decos:
        if deco.name not in DECORATORS or getattr(deco, "_sandbox_entrypoint_kept", False):
            continue
        original = deco.runtime_step_cli

        def runtime_step_cli(cli_args: Any, *args: Any, _original: Any = original, **kwargs: Any) -> None:
            ours = list(cli_args.entrypoint) if cli_args.commands == SANDBOX_COMMANDS else None
            _original(cli_args, *args, **kwargs)
            if ours is not None:  # the sandbox decorator ran first: its launcher stays the entrypoint
                cli_args.entrypoint = ours

        deco.runtime_step_cli = runtime_step_cli
        deco._sandbox_entrypoint_kept = True
