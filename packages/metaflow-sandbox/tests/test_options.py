import pytest

from metaflow_extensions.sandbox.plugins.sandbox.options import parse_options
from metaflow_extensions.sandbox.plugins.sandbox.step_command import parse_step_command
from metaflow_sandbox_core import ConfigError, NetworkPolicy


def test_parses_strings_from_with():
    opts = parse_options({"cpu": "2", "memory": "1024", "env": '{"A": "b"}', "network": "full"})
    assert (opts.cpu, opts.memory_mb, opts.env, opts.network) == (2.0, 1024, {"A": "b"}, NetworkPolicy.FULL)


def test_a_list_of_destinations_is_filtered_egress():
    opts = parse_options({"network": ["api.example.com:443", "*.example.org"]})
    assert (opts.network, opts.egress_allow) == (
        NetworkPolicy.DATASTORE,
        ("api.example.com:443", "*.example.org"),
    )
    opts = parse_options({"network": '["10.0.0.0/8"]'})  # the --with form
    assert (opts.network, opts.egress_allow) == (NetworkPolicy.DATASTORE, ("10.0.0.0/8",))
    assert parse_options({"network": "datastore"}).egress_allow == ()


@pytest.mark.parametrize(
    "attrs, fragment",
    [
        ({"cpu": 0}, "cpu=0 must be greater than 0"),
        ({"cpu": -1}, "greater than 0"),
        ({"cpu": "two"}, "cpu='two' is not a number"),
        ({"memory": "lots"}, "memory='lots' is not a number"),
        ({"env": {"A": 1}}, "environment values must be strings"),
        ({"network": "some"}, "not a network policy"),
        ({"colour": "red"}, "Unknown sandbox attribute"),
        ({"network": ["https://api.example.com"]}, "not a URL"),
        (
            {"network": ["*.com"]},
            "network entry '<asterisk>.com': the wildcard would cover a whole top-level",
        ),
        ({"network": []}, "say network='datastore'"),
        ({"network": '["api.example.com"'}, "is not a JSON list"),
        ({"network": 5}, "a list of destinations such as"),
        ({"env": {"": "x"}}, "env['']: an environment variable needs a name; remove the empty key"),
        ({"env": {"A=B": "x"}}, "env['A=B']: a variable name cannot contain '='"),
        ({"env": '{"A=B": "x"}'}, "cannot contain '='"),  # the --with form
        ({"env": {"A\0": "x"}}, "NUL byte"),
        ({"env": {"A": "x\0y"}}, "env['A']: no environment variable can hold a NUL byte; remove it"),
        ({"trusted_types": ["numpy", ""]}, "trusted_types=['numpy', '']: '' is not a module name"),
        ({"trusted_types": ["numpy", "*"]}, "keep only the modules (trusted_types=['numpy'])"),
        ({"trusted_types": "numpy,*"}, "trusted_types=['numpy', '<asterisk>']: the asterisk accepts every"),
        ({"trusted_types": ["numpy.*"]}, "takes no wildcard; write 'numpy'"),
        ({"trusted_types": ["numpy", 3]}, "3 is not a module name"),
        ({"trusted_types": ["my-module"]}, "'my-module' is not a module name"),
        ({"trusted_types": 5}, "trusted_types=5 must be a list of module names"),
    ],
)
def test_bad_input_names_the_fix(attrs, fragment):
    with pytest.raises(ConfigError) as err:
        parse_options(attrs)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_step_command_split_and_inner_argv():
    argv = [
        "--quiet",
        "--metadata",
        "service",
        "--with",
        "sandbox",
        "sandbox",
        "step",
        "train",
        "--run-id",
        "5",
        "--sandbox-launch",
        "/x.json",
        "--tag",
        "sandbox",
    ]
    cmd = parse_step_command(argv)
    assert cmd.launch_path == "/x.json"
    assert cmd.inner_argv("/pkg/flow.py") == [
        "-u",
        "/pkg/flow.py",
        "--quiet",
        "--metadata",
        "local",
        "--with",
        "sandbox",
        "step",
        "train",
        "--run-id",
        "5",
        "--tag",
        "sandbox",
    ]


def test_task_launch_file_is_private(tmp_path):
    import os
    import stat

    from metaflow_extensions.sandbox.plugins.sandbox.task_launch import TaskLaunch

    launch = TaskLaunch(
        backend="bubblewrap",
        spec={},
        flow="F",
        run_id="1",
        step="s",
        task_id="2",
        attempt=0,
        datastore_type="local",
        datastore_root="/r",
        metadata_type="service",
        package_blob="/p",
        package_sha="x",
        package_env={},
        python="/usr/bin/python3",
        python_prefixes=[],
        flow_file="f.py",
        cache_dir=str(tmp_path),
        service_headers={"Authorization": "Bearer secret"},
    )
    path = launch.save(str(tmp_path / "launch"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "launch").st_mode) == 0o700
    assert TaskLaunch.load(path) == launch


def test_trusted_types_parsing():
    assert parse_options({"trusted_types": "numpy, pandas"}).trusted_types == ("numpy", "pandas")
    assert parse_options({"trusted_types": "*"}).trusted_types == "*"
    assert parse_options({"trusted_types": ["*"]}).trusted_types == "*"
    assert parse_options({"trusted_types": "'*'"}).trusted_types == "*"  # quoted in --with
    assert parse_options({"trusted_types": ["pydantic.v1.utils.import_string"]}).trusted_types == (
        "pydantic.v1.utils.import_string",
    )
    assert parse_options({}).trusted_types == ()


@pytest.mark.parametrize(
    "value", [["numpy", ""], ["numpy", "*"], ["*", ""], ["numpy.*"], [""], "numpy,*", {"numpy": "*"}, 5]
)
def test_trusted_types_errors_never_hold_an_asterisk(value):
    """Metaflow prints each `*` of an error as a highlight marker and drops it (the error once read
    "or ''" where it meant "*"): the messages spell it out."""
    with pytest.raises(ConfigError) as err:
        parse_options({"trusted_types": value})
    message = str(err.value)
    assert "*" not in message and "\n" not in message
    assert (
        "set trusted_types to a one-character string, the asterisk" in message or "write 'numpy'" in message
    )


def test_environment_vars_are_checked_like_env():
    from metaflow_extensions.sandbox.plugins.sandbox.options import check_env

    check_env({"A": "1", "B_2": ""}, "@environment(vars=...)")
    with pytest.raises(ConfigError, match=r"^@environment\(vars=\.\.\.\)\['A=1'\]: a variable name cannot"):
        check_env({"A=1": "x"}, "@environment(vars=...)")


def test_option_keys_are_those_the_backend_and_the_extension_read():
    from metaflow_extensions.sandbox.plugins.sandbox.options import EXTENSION_OPTION_KEYS
    from metaflow_sandbox_core import Backend

    class Plain(Backend):  # declares no options, like bubblewrap
        name = "plain"

    Plain.check_options({"python": "/usr/bin/python3"}, also=EXTENSION_OPTION_KEYS)
    with pytest.raises(ConfigError) as err:
        Plain.check_options({"snapshot": "x"}, also=EXTENSION_OPTION_KEYS)
    assert str(err.value) == (
        "Unknown plain option(s) 'snapshot' in options={...}; known: 'python'. Remove or correct them."
    )
