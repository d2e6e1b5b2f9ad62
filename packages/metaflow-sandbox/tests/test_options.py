import pytest

from metaflow_extensions.sandbox.plugins.sandbox.options import parse_options
from metaflow_extensions.sandbox.plugins.sandbox.step_command import parse_step_command
from metaflow_sandbox_core import ConfigError, NetworkPolicy


def test_parses_strings_from_with():
    opts = parse_options({"cpu": "2", "memory": "1024", "env": '{"A": "b"}', "network": "full"})
    assert (opts.cpu, opts.memory_mb, opts.env, opts.network) == (2.0, 1024, {"A": "b"}, NetworkPolicy.FULL)


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
    assert parse_options({}).trusted_types == ()


def test_session_policy_reads_the_flow_and_writes_only_the_staging_prefix():
    from metaflow_extensions.sandbox.plugins.sandbox.s3_access import S3Location, task_policy

    root = S3Location.parse("s3://bucket/metaflow")
    staging = root.child(".sandbox-staging", "abc")
    policy = task_policy(root, "MyFlow", staging)
    statements = {tuple(s["Action"]): s for s in policy["Statement"]}
    assert statements[("s3:GetObject",)]["Resource"] == [
        "arn:aws:s3:::bucket/metaflow/MyFlow/*",
        "arn:aws:s3:::bucket/metaflow/.sandbox-staging/abc/*",
    ]
    assert statements[("s3:PutObject",)]["Resource"] == [
        "arn:aws:s3:::bucket/metaflow/.sandbox-staging/abc/*"
    ]
    assert statements[("s3:ListBucket",)]["Condition"]["StringLike"]["s3:prefix"] == [
        "metaflow/MyFlow/*",
        "metaflow/.sandbox-staging/abc/*",
    ]
    assert not any("Delete" in a for s in policy["Statement"] for a in s["Action"])
