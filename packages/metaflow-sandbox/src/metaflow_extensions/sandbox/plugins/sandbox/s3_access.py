"""The launcher's view of an S3 (or S3-compatible) datastore: a client, clear errors, presigned URLs and
the narrow credentials a sandbox gets. boto3 is imported only when an S3 datastore is used."""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from metaflow_sandbox_core import ConfigError, UnavailableError

#: How a sandbox gets datastore credentials: short-lived scoped ones from STS (default), the launcher's
#: own keys (explicit choice, warned about), or none at all.
CREDENTIAL_MODES = ("sts", "forward", "none")
URL_LIFETIME = 7 * 24 * 3600  # the longest a SigV4 presigned URL may live
#: How long the sandbox host reuses an S3 client (a new boto3 session costs ~0.1 s per task); after that a
#: new one re-reads the credential chain (e.g. a rotated ~/.aws/credentials).
CLIENT_REUSE_SECONDS = 300.0


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> S3Location:
        parsed = urlparse(url)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise ConfigError(
                f"{url!r} is not an s3:// URL; set METAFLOW_DATASTORE_SYSROOT_S3=s3://bucket/prefix."
            )
        return cls(parsed.netloc, parsed.path.lstrip("/"))

    def child(self, *parts: str) -> S3Location:
        return S3Location(self.bucket, "/".join(p.strip("/") for p in (self.key, *parts) if p))

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class S3Access:
    """The launcher's S3 client for one datastore root, with errors that name the fix."""

    _shared: dict[tuple[str, str | None, str | None], tuple[float, S3Access]] = {}
    _shared_lock = threading.Lock()

    def __init__(self, root: str, endpoint_url: str | None = None, region: str | None = None):
        import boto3

        self.root = S3Location.parse(root)
        self.endpoint_url = endpoint_url or None
        self.session = boto3.session.Session(region_name=region or None)
        self.client: Any = self.session.client("s3", endpoint_url=self.endpoint_url)
        self._sts: dict[str | None, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def shared(cls, root: str, endpoint_url: str | None = None, region: str | None = None) -> S3Access:
        """An instance for this root, endpoint and region reused across the tasks of this process for up to
        `CLIENT_REUSE_SECONDS` (boto3 clients are thread-safe). Nothing about the store's contents is cached."""
        key = (root, endpoint_url or None, region or None)
        with cls._shared_lock:
            made, access = cls._shared.get(key, (0.0, None))
            if access is None or time.monotonic() - made > CLIENT_REUSE_SECONDS:
                access = cls(root, endpoint_url, region)
                cls._shared[key] = (time.monotonic(), access)
            return access

    @property
    def where(self) -> str:
        return f"{self.root.url}" + (f" at {self.endpoint_url}" if self.endpoint_url else "")

    def check(self) -> None:
        """A clear `ConfigError`/`UnavailableError` if the bucket is missing, forbidden or unreachable."""
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError

        try:
            self.client.head_bucket(Bucket=self.root.bucket)
        except EndpointConnectionError:
            raise UnavailableError(
                f"Cannot reach the S3 endpoint {self.endpoint_url or 'of AWS'} for {self.root.url}; check "
                "METAFLOW_S3_ENDPOINT_URL and that the server is running.",
                retryable=False,
            )
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise ConfigError(
                    f"The bucket {self.root.bucket!r} does not exist ({self.where}); create it or fix "
                    "METAFLOW_DATASTORE_SYSROOT_S3."
                )
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise ConfigError(
                    f"Access to {self.where} was denied ({code}); check the AWS credentials the launcher uses "
                    "(AWS_PROFILE / AWS_ACCESS_KEY_ID) and their permissions on the bucket."
                )
            raise UnavailableError(f"S3 answered {code} for {self.where}: {error}", retryable=False)
        except BotoCoreError as error:
            raise UnavailableError(f"Cannot use the datastore {self.where}: {error}", retryable=False)

    def presigned_get(self, location: S3Location, lifetime: float) -> str:
        return str(
            self.client.generate_presigned_url(
                "get_object",
                Params={"Bucket": location.bucket, "Key": location.key},
                ExpiresIn=_lifetime(lifetime),
            )
        )

    def presigned_put(self, location: S3Location, lifetime: float) -> str:
        return str(
            self.client.generate_presigned_url(
                "put_object",
                Params={"Bucket": location.bucket, "Key": location.key},
                ExpiresIn=_lifetime(lifetime),
            )
        )

    def exists(self, location: S3Location) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=location.bucket, Key=location.key)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def upload(self, path: str, location: S3Location) -> None:
        from boto3.exceptions import S3UploadFailedError
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(path, location.bucket, location.key)
        except (S3UploadFailedError, ClientError, BotoCoreError) as error:
            raise UnavailableError(
                f"Could not store {location.url} in {self.where}: {error}", retryable=False
            )

    def download(self, location: S3Location, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.client.download_file(location.bucket, location.key, path)

    def endpoint(self) -> dict[str, str]:
        """host/port of the S3 endpoint, for the sandbox's reachability check."""
        url = urlparse(
            self.endpoint_url or f"https://s3.{self.session.region_name or 'us-east-1'}.amazonaws.com"
        )
        port = url.port or (443 if url.scheme == "https" else 80)
        endpoint = {
            "host": url.hostname or "",
            "port": str(port),
            "what": f"the S3 datastore ({self.endpoint_url or 'AWS'})",
        }
        if (
            not self.endpoint_url
        ):  # AWS also answers as <bucket>.s3.<region>.amazonaws.com (and, in us-east-1,
            # at the global s3.amazonaws.com): the sandbox's allow-list names these hosts too
            hosts = [f"{self.root.bucket}.{url.hostname}"]
            if (self.session.region_name or "us-east-1") == "us-east-1":
                hosts += ["s3.amazonaws.com", f"{self.root.bucket}.s3.amazonaws.com"]
            endpoint["also"] = ",".join(hosts)
        return endpoint

    def sandbox_credentials(
        self, mode: str, policy: dict, lifetime: float, name: str, say: Any
    ) -> dict[str, str]:
        """Environment variables with the credentials a sandbox gets under `mode`."""
        if mode == "none":
            return {}
        if mode == "forward":
            with self._lock:
                frozen = self.session.get_credentials()
            if frozen is None:
                raise ConfigError(
                    "METAFLOW_SANDBOX_S3_CREDENTIALS=forward, but the launcher has no AWS credentials."
                )
            frozen = frozen.get_frozen_credentials()
            say(
                "Forwarding the launcher's own AWS keys into the sandbox (METAFLOW_SANDBOX_S3_CREDENTIALS=forward): "
                "code in the step can read and use them."
            )
            env = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key}
            if frozen.token:
                env["AWS_SESSION_TOKEN"] = frozen.token
            return env
        if mode != "sts":
            raise ConfigError(
                f"METAFLOW_SANDBOX_S3_CREDENTIALS={mode!r}; use one of {', '.join(CREDENTIAL_MODES)}."
            )
        return self._sts_credentials(policy, lifetime, name)

    def _sts_credentials(self, policy: dict, lifetime: float, name: str) -> dict[str, str]:
        from botocore.exceptions import BotoCoreError, ClientError

        sts_endpoint = os.environ.get("METAFLOW_SANDBOX_STS_ENDPOINT_URL") or self.endpoint_url
        role = os.environ.get("METAFLOW_SANDBOX_S3_ROLE_ARN")
        with self._lock:  # a boto3 session is not thread-safe; its clients are
            sts = self._sts.get(sts_endpoint)
            if sts is None:
                sts = self._sts[sts_endpoint] = self.session.client("sts", endpoint_url=sts_endpoint)
        try:
            if role:
                answer = sts.assume_role(
                    RoleArn=role,
                    RoleSessionName=name,
                    Policy=json.dumps(policy),
                    DurationSeconds=int(min(max(lifetime, 900), 43200)),
                )
            else:
                answer = sts.get_federation_token(
                    Name=name, Policy=json.dumps(policy), DurationSeconds=int(min(max(lifetime, 900), 129600))
                )
        except (ClientError, BotoCoreError) as error:
            raise ConfigError(
                f"Could not get short-lived, prefix-scoped credentials from STS at {sts_endpoint or 'AWS'} ({error}). "
                "Stores such as Cloudflare R2 have no STS: choose explicitly — METAFLOW_SANDBOX_S3_CREDENTIALS=forward "
                "passes your configured keys into the sandbox (its code can read them), =none passes none."
            )
        credentials = answer["Credentials"]
        return {
            "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
            "AWS_SESSION_TOKEN": credentials["SessionToken"],
        }


def _lifetime(seconds: float) -> int:
    return int(min(max(seconds, 60), URL_LIFETIME))


def task_policy(root: S3Location, flow: str, staging: S3Location) -> dict:
    """A session policy: read the flow's prefix, write only the task's own staging prefix."""
    arn = f"arn:aws:s3:::{root.bucket}"
    flow_prefix = root.child(flow).key
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["s3:GetObject"],
                "Resource": [f"{arn}/{flow_prefix}/*", f"{arn}/{staging.key}/*"],
            },
            {"Effect": "Allow", "Action": ["s3:PutObject"], "Resource": [f"{arn}/{staging.key}/*"]},
            {
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [arn],
                "Condition": {"StringLike": {"s3:prefix": [f"{flow_prefix}/*", f"{staging.key}/*"]}},
            },
        ],
    }


__all__ = ["CREDENTIAL_MODES", "S3Access", "S3Location", "task_policy"]
