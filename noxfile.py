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
    "testing": ["core", "testing[daytona,s3]", "bubblewrap"],
    "extension": ["core", "runtime", "relay", "extension"],
}
TEST_TOOLS = ["pytest>=8", "pytest-timeout"]
# The integration matrix: backend x datastore x metadata. Later backends and datastores add rows.
MATRIX = [
    ("bubblewrap", "local", "local"),
    ("bubblewrap", "local", "service"),
    ("bubblewrap", "s3", "local"),
    ("bubblewrap", "s3", "service"),
    ("daytona", "s3", "local"),  # the real daytona SDK against the emulator (metaflow_sandbox_testing)
    ("daytona", "s3", "service"),
]


#: Every package, with the test kit's emulators and S3 server.
EVERYTHING = [name for name in PACKAGES if name != "testing"] + ["testing[daytona,s3]"]


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
    # Flow behaviours run in every row; S3-only tests in the s3 rows; tests that depend on neither the
    # datastore nor the metadata (bad input, packaging) once, in the first row.
    selection = ["tests/test_flows.py", "tests/test_security_and_tools.py"]
    if datastore == "s3":
        selection.append("tests/test_s3_datastore.py")
    if backend == "daytona":
        selection.append("tests/test_daytona_faults.py")
    if (backend, datastore, metadata) == MATRIX[0]:
        selection += ["tests/test_bad_input.py", "tests/test_packaging.py"]
    session.run(
        "pytest",
        *selection,
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"MFS_TEST_BACKEND": backend, "MFS_TEST_DATASTORE": datastore, "MFS_TEST_METADATA": metadata},
    )


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    install(session, *EVERYTHING)
    session.run("python", "benchmarks/run.py", *session.posargs)


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    install(session, *PACKAGES)
    session.chdir("examples")
    env = {"METAFLOW_USER": os.environ.get("METAFLOW_USER", "demo")}
    session.run("python", "hello_sandbox.py", "run", env=env)
