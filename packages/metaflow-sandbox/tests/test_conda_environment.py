"""@pypi/@conda with a sandbox decorator: the task keeps the sandbox launcher as its entrypoint whatever order
the decorators' hooks run in, and a package cache a remote sandbox cannot read is refused before any sandbox
exists (pure logic: Metaflow's resolver needs micromamba, which this machine cannot download). The plans remote
sandboxes receive are in test_remote_environment_plans.py."""

from types import SimpleNamespace

import pytest

from metaflow_extensions.sandbox.plugins.sandbox.conda_environment import (
    check_package_cache,
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


def test_a_package_cache_the_sandbox_cannot_read_is_refused_naming_the_fix():
    check_package_cache("daytona", "s3", "s3://bucket/mf", "s3://bucket/mf/conda")
    with pytest.raises(ConfigError) as local:
        check_package_cache("daytona", "local", "/home/me/.metaflow", None)
    assert "package cache the sandbox's credentials cannot read" in str(local.value)
    assert str(local.value).endswith("run with --datastore=s3.") and "\n" not in str(local.value)
    for outside in ("s3://other/conda", "s3://bucket/mf-conda", "s3://bucket/conda"):
        with pytest.raises(ConfigError) as error:
            check_package_cache("e2b", "s3", "s3://bucket/mf/", outside)
        message = str(error.value)
        assert f"cached at {outside}, a package cache the sandbox's credentials cannot read" in message
        assert (
            "unset METAFLOW_CONDA_PACKAGE_S3ROOT so Metaflow caches them under s3://bucket/mf/conda"
            in message
        )
