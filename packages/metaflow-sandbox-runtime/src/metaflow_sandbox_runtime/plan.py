"""The plan: what the bootstrap runs inside the sandbox, as data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib import resources

PLAN_VERSION = 1
#: The line an armed bootstrap prints once prepared (`then_plan`); the same text as bootstrap.PREPARED.
PREPARED = b"metaflow-sandbox: prepared"


@dataclass
class Plan:
    """Everything `bootstrap.py` needs; serialised as JSON and shipped into the sandbox.

    `package_dir` is where the code package is (or will be) extracted; set `package_archive` to have
    the bootstrap extract an archive there first. `log_paths` maps "stdout"/"stderr" to files inside
    the sandbox that receive the mflog records.
    """

    python: str
    argv: list[str]
    package_dir: str
    workdir: str
    env: dict[str, str] = field(default_factory=dict)
    package_archive: str | None = None
    log_paths: dict[str, str] = field(default_factory=dict)
    log_source: str = "task"
    #: A URL to fetch the package archive from (e.g. presigned), instead of a path in the sandbox.
    package_url: str | None = None
    #: Endpoints checked before anything runs: [{"host", "port", "what"}].
    endpoints: list[dict[str, str]] = field(default_factory=list)
    #: After the step: [{"path": file or directory (sent as .tgz), "url": where to PUT it}].
    uploads: list[dict[str, str]] = field(default_factory=list)
    #: Offered when the image may lack them: [{"modules": [names], "url": a .tgz, "dir": where to extract,
    #: "what": named in errors}]; fetched only if the step's Python cannot import every module (always when
    #: `modules` is empty: the step's locked dependencies), then appended to its PYTHONPATH.
    libraries: list[dict] = field(default_factory=list)
    #: Only make the package and libraries ready, run nothing: a sandbox prepared ahead of its task.
    prepare_only: bool = False
    #: With `prepare_only`: then print `PREPARED`, wait up to `then_wait` seconds for the launcher to write the
    #: plan at this path (whole: it is read once it parses), and run it — a sandbox armed ahead of its task.
    then_plan: str | None = None
    then_wait: float = 0.0
    #: Fetched (in parallel) after the libraries: [{"url", "path" (absolute in the sandbox), "executable"}],
    #: e.g. the presigned objects of an environment's package cache.
    files: list[dict] = field(default_factory=list)
    #: Run in order before the step, in `workdir`, with the step's environment plus each one's "env":
    #: [{"argv", "env", "what"}]; argv[0] "python" is the plan's `python`. Their output is streamed and logged
    #: like the step's; the first that fails ends the task with its exit code.
    setup: list[dict] = field(default_factory=list)
    #: The step's interpreter and its options when it is not `python` (e.g. the one a setup command made); a
    #: relative path is relative to `workdir`.
    step_python: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = asdict(self)
        package = {
            "dir": data.pop("package_dir"),
            "archive": data.pop("package_archive"),
            "url": data.pop("package_url"),
        }
        return {"version": PLAN_VERSION, "package": package, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        data = dict(data)
        if data.pop("version", None) != PLAN_VERSION:
            raise ValueError("unsupported plan version")
        package = data.pop("package")
        return cls(
            package_dir=package["dir"],
            package_archive=package.get("archive"),
            package_url=package.get("url"),
            **data,
        )

    def command(self, bootstrap_path: str, plan_path: str) -> list[str]:
        """The argv that runs this plan inside the sandbox (isolated mode: no site, no user env)."""
        return [self.python, "-I", "-S", bootstrap_path, plan_path]


def bootstrap_source() -> bytes:
    """The bytes of `bootstrap.py`, to upload into a sandbox."""
    return resources.files(__package__).joinpath("bootstrap.py").read_bytes()


def bootstrap_path() -> str:
    """The path of `bootstrap.py` on this machine (for backends that mount it instead)."""
    return str(resources.files(__package__).joinpath("bootstrap.py"))
