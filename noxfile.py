"""Sessions: lint, typecheck, unit-<package>, integration matrix, bench, demo. `nox -t ci` runs what CI runs."""

from __future__ import annotations

import os

import nox

nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "typecheck", "unit", "integration"]

PYTHON = "3.11"
PACKAGES = {
    "core": "packages/metaflow-sandbox-core",
    "runtime": "packages/metaflow-sandbox-runtime",
    "relay": "packages/metaflow-sandbox-relay",
    "bubblewrap": "packages/metaflow-sandbox-bubblewrap",
    "daytona": "packages/metaflow-sandbox-daytona",
    "e2b": "packages/metaflow-sandbox-e2b",
    "boxlite": "packages/metaflow-sandbox-boxlite",
    "testing": "packages/metaflow-sandbox-testing",
    "extension": "packages/metaflow-sandbox",
}
# What each package's own tests need installed besides itself (siblings resolve from this checkout).
NEEDS = {
    "core": ["core"],
    "runtime": ["runtime"],
    "relay": ["relay"],
    "bubblewrap": ["core", "testing", "bubblewrap"],
    "daytona": ["core", "testing[daytona]", "daytona"],
    "e2b": ["core", "testing[e2b]", "e2b"],
    "boxlite": ["core", "testing[boxlite]", "boxlite"],
    "testing": ["core", "testing[daytona,e2b,s3,boxlite]", "bubblewrap"],
    "extension": ["core", "runtime", "relay", "extension"],
}
TEST_TOOLS = ["pytest>=8", "pytest-timeout"]
# The integration matrix: backend x datastore x metadata. Every flow behaviour runs once per (backend,
# datastore) with local metadata; the metadata-service column runs only the tests that exercise the metadata a
# sandboxed task sends back (marked `metadata` in tests/conftest.py: artifacts and the client, foreach, retry,
# resume, forged metadata, logs). Later backends and datastores add pairs.
BACKEND_DATASTORES = [
    ("bubblewrap", "local"),
    ("bubblewrap", "s3"),
    ("daytona", "s3"),  # the real daytona SDK against the emulator (metaflow_sandbox_testing)
    ("e2b", "s3"),  # the real e2b SDK against the emulator (metaflow_sandbox_testing)
    ("boxlite-remote", "s3"),  # boxlite's REST mode: the real boxlite SDK against the emulator
]
#: Backends whose integration rows run against an emulator of the provider (faults injected there).
REMOTE_BACKENDS = ("daytona", "e2b", "boxlite-remote")
MATRIX = [(b, d, m) for b, d in BACKEND_DATASTORES for m in ("local", "service")]
#: Integration modules that apply to some rows only; every other tests/test_*.py runs in every row.
ONLY_IN = {
    "tests/test_s3_datastore.py": lambda backend, datastore, metadata: datastore == "s3",
    "tests/test_emulator_faults.py": lambda backend, datastore, metadata: backend in REMOTE_BACKENDS,
    # Neither backend, datastore nor metadata matter to these: once, in the first row.
    "tests/test_bad_input.py": lambda *row: row == MATRIX[0],
    "tests/test_packaging.py": lambda *row: row == MATRIX[0],
    "tests/test_boxlite_local.py": lambda *row: row == MATRIX[0],
}

#: Every package, with the test kit's emulators and S3 server.
EVERYTHING = [name for name in PACKAGES if name != "testing"] + ["testing[daytona,e2b,s3,boxlite]"]


def install(session: nox.Session, *names: str, extras: tuple[str, ...] = ()) -> None:
    """Install packages of this repo editable by name; "testing[daytona]" adds that package's extra."""
    args = []
    for name in names:
        base, _, extra = name.partition("[")
        args += ["-e", PACKAGES[base] + (f"[{extra}" if extra else "")]
    session.install(*TEST_TOOLS, *extras, *args)


@nox.session(python=PYTHON, tags=["ci"])
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON, tags=["ci"])
def typecheck(session: nox.Session) -> None:
    install(session, *EVERYTHING, extras=("mypy>=1.10",))
    sources = [f"{path}/src" for path in PACKAGES.values()]
    session.run("mypy", *[s for s in sources if not s.endswith("metaflow-sandbox/src")])
    session.run("mypy", "packages/metaflow-sandbox/src/metaflow_extensions/sandbox/plugins/sandbox")


@nox.session(python=PYTHON, tags=["ci"])
@nox.parametrize("package", list(PACKAGES))
def unit(session: nox.Session, package: str) -> None:
    install(session, *NEEDS[package])
    path = PACKAGES[package]
    if os.path.isdir(f"{path}/tests") and any(f.startswith("test_") for f in os.listdir(f"{path}/tests")):
        session.run("pytest", f"{path}/tests", *session.posargs)
    else:
        session.skip(f"{path} has no tests")


@nox.session(python=PYTHON, tags=["ci"])
@nox.parametrize("backend,datastore,metadata", MATRIX, ids=[f"{b}-{d}-{m}" for b, d, m in MATRIX])
def integration(session: nox.Session, backend: str, datastore: str, metadata: str) -> None:
    tools = ("metaflow-local-service>=0.2", "pip", "hatchling", "uv", "moto[server]>=5", "boto3")
    install(session, *EVERYTHING, extras=tools)
    # Paths among the arguments (`-- tests/test_flows.py`) narrow the row's selection instead of adding to it.
    paths = [arg for arg in session.posargs if arg.split("::")[0].startswith("tests")]
    options = [arg for arg in session.posargs if arg not in paths]
    selection = integration_selection(backend, datastore, metadata, paths or ["tests"])
    session.run(
        "pytest",
        *selection,
        "-p",
        "no:cacheprovider",
        *options,
        env={"MFS_TEST_BACKEND": backend, "MFS_TEST_DATASTORE": datastore, "MFS_TEST_METADATA": metadata},
    )


def integration_selection(backend: str, datastore: str, metadata: str, paths: list[str]) -> list[str]:
    """The pytest arguments of one row: every integration module that applies to it; in the metadata-service
    rows only the tests marked `metadata`; tests marked `once` in the first row only."""
    row = (backend, datastore, metadata)
    selection = [*paths, *[f"--ignore={path}" for path, applies in ONLY_IN.items() if not applies(*row)]]
    if metadata == "service":
        selection += ["-m", "metadata"]
    elif row != MATRIX[0]:
        selection += ["-m", "not once"]
    return selection


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    install(session, *EVERYTHING, extras=("uv",))  # P8: the launcher's uv
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    install(session, *PACKAGES)
    session.chdir("examples")
    env = {"METAFLOW_USER": os.environ.get("METAFLOW_USER", "demo")}
    session.run("python", "hello_sandbox.py", "run", env=env)
