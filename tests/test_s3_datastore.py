"""The S3 datastore through a sandbox, against a real S3 server: credentials, code package, errors."""

from __future__ import annotations

import time

import pytest

from .conftest import Project

pytestmark = pytest.mark.integration

PROVIDER_CANARIES = {
    "DAYTONA_API_KEY": "canary-daytona-0c1d",
    "E2B_API_KEY": "canary-e2b-77aa",
    "BOXLITE_API_KEY": "canary-boxlite-51f0",
    "MY_TEAM_TOKEN": "canary-custom-9e2b",
}


@pytest.fixture
def s3_project(project: Project) -> Project:
    if project.datastore != "s3":
        pytest.fail("run this module with MFS_TEST_DATASTORE=s3 (nox -s integration does)")
    return project


def _canary_run(project: Project, **env: str) -> tuple[dict, str]:
    from metaflow_sandbox_testing.s3_server import SECRET_KEY

    provider = dict(PROVIDER_CANARIES)
    # The launcher needs the real provider key: it is the canary then.
    for key in ("DAYTONA_API_KEY", "E2B_API_KEY", "BOXLITE_API_KEY"):
        if project.emulator is not None and key in project.env:
            provider[key] = project.env[key]
    canaries = [*provider.values(), SECRET_KEY]
    # The cloud emulators run sandboxes as local processes: they share the host's /proc and /tmp, so there
    # only the step's environment, home and working directory are searched. Real sandboxes: all.
    scan_proc = "False" if project.emulator is not None else "True"
    arguments = ("--canaries", ",".join(canaries), "--scan-proc", scan_proc)
    result = project.run("canary_flow.py", "run", *arguments, **provider, **env)
    data = project.query(
        "t = Flow('CanaryFlow').latest_run['untrusted'].task.data\n"
        "result = dict(found=t.found, token=t.has_session_token, region=t.region, endpoint=t.endpoint, names=t.env_names)"
    )
    return data, result.stdout + result.stderr


def test_no_secret_reaches_the_sandbox_and_it_gets_short_lived_credentials(s3_project: Project):
    data, _ = _canary_run(s3_project)
    assert data["found"] == [], f"secrets reached the sandbox: {data['found']}"
    assert data["token"] is True, f"the sandbox should hold STS session credentials: {data['names']}"
    assert data["region"] == s3_project.env["AWS_DEFAULT_REGION"]
    assert data["endpoint"] == s3_project.env["METAFLOW_S3_ENDPOINT_URL"]


def test_forwarding_keys_is_an_explicit_warned_choice(s3_project: Project):
    from metaflow_sandbox_testing.s3_server import SECRET_KEY

    data, output = _canary_run(s3_project, METAFLOW_SANDBOX_S3_CREDENTIALS="forward")
    assert any(SECRET_KEY[:12] in found for found in data["found"])  # the choice did what it says
    assert not any(c[:12] in f for c in PROVIDER_CANARIES.values() for f in data["found"])
    assert "Forwarding the launcher's own AWS keys into the sandbox" in output


def test_code_package_is_uploaded_once_for_twenty_tasks(s3_project: Project):
    s3_project.run("foreach_flow.py", "run", "--max-workers", "4")
    client = s3_project.s3.client()  # type: ignore[attr-defined]
    bucket = s3_project.env["MFS_TEST_BUCKET"]
    versions = client.list_object_versions(Bucket=bucket, Prefix="metaflow/ForeachFlow/data/")["Versions"]
    package = max(versions, key=lambda v: v["Size"])  # the code package is by far the largest blob
    puts = [v for v in versions if v["Key"] == package["Key"]]
    assert package["Size"] > 100_000
    assert len(puts) == 1, f"the code package was uploaded {len(puts)} times"
    # Each task removes its staging prefix after its result is out (on a housekeeping thread): give it a while.
    deadline = time.monotonic() + 30
    while client.list_objects_v2(Bucket=bucket, Prefix="metaflow/.sandbox-staging/").get("KeyCount", 0):
        assert time.monotonic() < deadline, "staging prefixes must be removed after each task"
        time.sleep(0.2)


def test_sts_unavailable_is_a_clear_choice_not_a_silent_fallback(s3_project: Project):
    result = s3_project.run(
        "retry_flow.py", "run", check=False, METAFLOW_SANDBOX_STS_ENDPOINT_URL="http://127.0.0.1:9"
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Could not get short-lived, prefix-scoped credentials from STS at http://127.0.0.1:9" in output
    assert "METAFLOW_SANDBOX_S3_CREDENTIALS=forward" in output


@pytest.mark.parametrize(
    "setting, message",
    [
        (
            {"METAFLOW_DATASTORE_SYSROOT_S3": "s3://no-such-bucket-mfs/metaflow"},
            "The bucket 'no-such-bucket-mfs' does not exist",
        ),
        (
            {"METAFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:9"},
            "Cannot reach the S3 endpoint http://127.0.0.1:9",
        ),
        ({"METAFLOW_SANDBOX_S3_CREDENTIALS": "sometimes"}, "METAFLOW_SANDBOX_S3_CREDENTIALS='sometimes'"),
    ],
)
def test_datastore_problems_stop_the_run_before_any_sandbox(s3_project: Project, setting, message):
    result = s3_project.run("retry_flow.py", "run", check=False, timeout=180, **setting)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert message in output, output
    assert "Task is starting" not in output


def test_r2_style_settings_reach_the_sandbox(s3_project: Project):
    """An R2-style configuration: a custom endpoint and AWS_DEFAULT_REGION=auto reach the step as they are."""
    # R2 has no STS: the explicit choice there is to forward the configured keys.
    data, _ = _canary_run(s3_project, AWS_DEFAULT_REGION="auto", METAFLOW_SANDBOX_S3_CREDENTIALS="forward")
    assert data["region"] == "auto"
    assert data["endpoint"] == s3_project.env["METAFLOW_S3_ENDPOINT_URL"]


def test_two_fresh_servers_with_the_same_bucket_name_both_work(s3_project: Project):
    """What the launcher publishes once (the compiled code package, the client bundle) is checked against the
    store before a sandbox depends on it: a second, empty server behind the same bucket name gets it again."""
    from metaflow_sandbox_testing.s3_server import S3Server

    project = s3_project
    bucket = "same-name"
    for _ in range(2):
        with S3Server() as server:
            server.create_bucket(bucket, versioned=True)
            project.env.update(server.metaflow_env(bucket))
            result = project.run("artifacts_flow.py", "run", check=False)
            assert result.returncode == 0, result.stdout + result.stderr
            assert "Traceback" not in result.stdout + result.stderr


def test_the_relay_reads_only_the_version_of_a_stored_blob_it_asked_about(s3_project: Project):
    """The relay remembers stored blobs it found safe by their ETag; a read names that ETag, so an object
    rewritten between the question and the read is refused by the store (a real S3 server), never read: the
    relay then asks again."""
    from metaflow_sandbox_relay import S3Datastore
    from metaflow_sandbox_relay.stores import Rewritten

    server = s3_project.s3
    client = server.client()  # type: ignore[union-attr]
    client.create_bucket(Bucket="versions")
    store = S3Datastore(client, "s3://versions/root")
    assert store.version("F/data/ab/abcd") is None
    client.put_object(Bucket="versions", Key="root/F/data/ab/abcd", Body=b"first")
    first = store.version("F/data/ab/abcd")
    assert first and store.open("F/data/ab/abcd", first).read() == b"first"
    assert server.url in store.location("F/data/ab/abcd")  # remembered per endpoint, bucket and key
    client.put_object(Bucket="versions", Key="root/F/data/ab/abcd", Body=b"second")
    assert store.version("F/data/ab/abcd") != first
    with pytest.raises(Rewritten):  # the store's 412, named
        store.open("F/data/ab/abcd", first).read()
