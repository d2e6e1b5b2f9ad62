"""@pypi/@conda with a sandbox decorator: the task keeps the sandbox launcher as its entrypoint whatever order
the decorators' hooks run in, and remote backends refuse such steps before any sandbox exists (pure logic:
Metaflow's resolver needs micromamba, which this machine cannot download)."""

from types import SimpleNamespace

import pytest

from metaflow_extensions.sandbox.plugins.sandbox.conda_environment import (
    check_backend,
    keep_sandbox_entrypoint,
    uses_environment,
)
from metaflow_sandbox_core import ConfigError

LAUNCHER = ["/launcher/python", "-m", "metaflow_extensions.sandbox.plugins.sandbox.host_client"]


class CondaLike:
    """What Metaflow's CondaStepDecorator.runtime_step_cli does to a task's command line."""

    name = "pypi"

    def runtime_step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context):
        cli_args.env["PYTHONNOUSERSITE"] = "1"
        cli_args.entrypoint[0] = "/envs/abc/bin/python"


class SandboxLike:
    name = "sandbox"

    def runtime_step_cli(self, cli_args, retry_count, max_user_code_retries, ubf_context):
        cli_args.commands = ["sandbox", "step"]
        cli_args.entrypoint = list(LAUNCHER)


def _cli_args():
    return SimpleNamespace(entrypoint=["/launcher/python", "flow.py"], commands=["step"], env={})


@pytest.mark.parametrize("order", [("sandbox", "pypi"), ("pypi", "sandbox")])
def test_the_sandbox_launcher_stays_the_entrypoint(order):
    decos = {"sandbox": SandboxLike(), "pypi": CondaLike()}
    keep_sandbox_entrypoint(list(decos.values()))
    keep_sandbox_entrypoint(list(decos.values()))  # idempotent: wrapped once
    cli_args = _cli_args()
    for name in order:
        decos[name].runtime_step_cli(cli_args, 0, 0, None)
    assert cli_args.entrypoint == LAUNCHER
    assert cli_args.commands == ["sandbox", "step"]


def test_a_step_without_a_sandbox_keeps_the_environment_interpreter():
    deco = CondaLike()
    keep_sandbox_entrypoint([deco])
    cli_args = _cli_args()
    deco.runtime_step_cli(cli_args, 0, 0, None)
    assert cli_args.entrypoint == ["/envs/abc/bin/python", "flow.py"]


def test_which_steps_use_a_metaflow_built_environment():
    steps = [SimpleNamespace(name="start"), SimpleNamespace(name="train")]
    pypi = SimpleNamespace(TYPE="pypi", is_disabled=lambda step: step.name == "start")
    assert uses_environment(pypi, steps, "train") is True
    assert uses_environment(pypi, steps, "start") is False  # @pypi(disabled=True)
    assert uses_environment(SimpleNamespace(TYPE="local"), steps, "train") is False


def test_remote_backends_refuse_pypi_steps_naming_the_fix():
    check_backend("bubblewrap", runs_on_this_machine=True)
    with pytest.raises(ConfigError, match=r"cannot run on the 'daytona' backend yet .*--environment=uv"):
        check_backend("daytona", runs_on_this_machine=False)
