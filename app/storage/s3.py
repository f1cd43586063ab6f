"""The S3 image store: one PUT per image, answered with a presigned (or public) GET URL.

Every replica writes to the same bucket, so an image URL works whichever replica made it
and after that replica is gone. Credentials come from boto3's standard chain
(environment, profile, instance or pod role) and are never logged: botocore's own debug
lines (which carry signed headers) are held at WARNING. Retention is a bucket lifecycle
rule on the prefix (`flask ... apply-s3-lifecycle`), not the local sweeper.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from app.exceptions import StorageUnavailable
from app.images import MEDIA_TYPES
from app.storage import MAX_PRESIGN_SECONDS

log = logging.getLogger(__name__)

# Seconds between readiness checks while the store is unusable at start.
CHECK_INTERVAL = 5.0
ADDRESSING_STYLES = ("auto", "path", "virtual")


@dataclass(frozen=True)
class S3Settings:
    """The S3_* settings, checked."""

    bucket: str
    prefix: str
    endpoint_url: str | None
    region: str
    addressing_style: str
    public_base_url: str | None
    ttl: float

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> S3Settings:
        """Check the settings; raise ValueError with what to set when they cannot work."""
        if not config["S3_BUCKET"]:
            raise ValueError("IMAGE_STORE=s3 needs S3_BUCKET (the bucket images go to)")
        style = config["S3_ADDRESSING_STYLE"]
        if style not in ADDRESSING_STYLES:
            raise ValueError(f"S3_ADDRESSING_STYLE must be one of {ADDRESSING_STYLES}: {style!r}")
        ttl, public = config["IMAGE_TTL_SECONDS"], config["S3_PUBLIC_BASE_URL"] or None
        if public is None and not 0 < ttl <= MAX_PRESIGN_SECONDS:
            raise ValueError(
                f"IMAGE_TTL_SECONDS={ttl:g} cannot be a presigned S3 URL's life: S3 signs URLs "
                f"for at most 7 days ({MAX_PRESIGN_SECONDS} s) and never forever. Set it to "
                "1..604800, or set S3_PUBLIC_BASE_URL for unsigned URLs."
            )
        return cls(config["S3_BUCKET"], config["S3_PREFIX"], config["S3_ENDPOINT_URL"] or None,
                   config["S3_REGION"], style, public, ttl)  # fmt: skip

    @property
    def expiration_days(self) -> int:
        """Days a lifecycle rule keeps an object: whole days, at least one."""
        return max(1, math.ceil(self.ttl / 86400)) if self.ttl > 0 else 0


def make_client(settings: S3Settings) -> Any:
    """Return a thread-safe boto3 S3 client with short timeouts (a dead store fails fast)."""
    import boto3
    from botocore.config import Config

    # Signed request headers appear in botocore's debug lines: keep them out of any log.
    for name in ("botocore", "boto3", "urllib3"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    # botocore >= 1.36 adds a CRC32 checksum to every PUT by default, which several
    # S3-compatible stores refuse; checksums only where the operation requires one, unless
    # boto3's own settings ask for more (the environment wins over a Config value here).
    checksums = {
        key: os.environ.get(f"AWS_{key.upper()}", "when_required")
        for key in ("request_checksum_calculation", "response_checksum_validation")
    }
    config = Config(
        region_name=settings.region,
        signature_version="s3v4",
        s3={"addressing_style": settings.addressing_style},
        connect_timeout=2,
        read_timeout=10,
        retries={"mode": "standard", "max_attempts": 2},
        **checksums,
    )
    return boto3.session.Session().client("s3", endpoint_url=settings.endpoint_url, config=config)


def explain(exc: BaseException, bucket: str) -> str:
    """Say in one line why the store failed, naming what to check (never a credential)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return "no S3 credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a role)"
    if isinstance(exc, EndpointConnectionError):
        # /readyz is public: name the setting, not the internal address.
        return "the S3 endpoint (S3_ENDPOINT_URL) is unreachable"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket"):
            return f"the S3 bucket {bucket!r} does not exist"
        if status == 403 or code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"the S3 credentials were refused for bucket {bucket!r} (HTTP 403)"
        return f"the S3 store answered {code or status} for bucket {bucket!r}"
    return f"the S3 store failed: {type(exc).__name__}"


class S3ImageStore:
    """Images as objects under `prefix` in one bucket, shared by every replica."""

    kind = "s3"

    def __init__(self, settings: S3Settings, client: Any = None) -> None:
        self.settings = settings
        self.client = client or make_client(settings)
        self._problem: str | None = "the S3 store has not been checked yet"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def problem(self) -> str | None:
        return self._problem

    def check(self) -> str | None:
        """Check that the bucket answers with these credentials; record and return why not."""
        try:
            self.client.head_bucket(Bucket=self.settings.bucket)
        except Exception as exc:  # any failure is a reason not to be ready, never a crash
            self._problem = explain(exc, self.settings.bucket)
        else:
            self._problem = None
        return self._problem

    def start(self) -> None:
        """Check the store in the background until it answers once."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="s3-check", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while self.check() is not None:
            log.warning("image store not ready: %s; checking again in %gs", self._problem,
                        CHECK_INTERVAL)  # fmt: skip
            if self._stop.wait(CHECK_INTERVAL):
                return
        log.info("image store ready: s3 bucket %r, prefix %r", self.settings.bucket,
                 self.settings.prefix)  # fmt: skip

    def save_all(self, blobs: list[bytes], extension: str) -> list[str]:
        """PUT each blob under a fresh 128-bit random key and return its URL; all or none."""
        keys: list[str] = []
        try:
            for blob in blobs:
                key = f"{self.settings.prefix}{secrets.token_hex(16)}.{extension}"
                self.client.put_object(
                    Bucket=self.settings.bucket,
                    Key=key,
                    Body=blob,
                    ContentType=MEDIA_TYPES[extension],
                    CacheControl=self.cache_control(),
                )
                keys.append(key)
        except Exception as exc:  # the store failed: answer 503, leave no partial response
            self._remove(keys)
            raise StorageUnavailable(explain(exc, self.settings.bucket)) from exc
        return [self.url(key) for key in keys]

    def cache_control(self) -> str:
        """Cache for as long as the URL lives, never longer."""
        if self.settings.public_base_url and self.settings.ttl <= 0:
            return "public, max-age=31536000, immutable"
        return f"public, max-age={int(self.settings.ttl)}, immutable"

    def url(self, key: str) -> str:
        """Return the object's URL: unsigned under the public base, else presigned."""
        if self.settings.public_base_url:
            return f"{self.settings.public_base_url.rstrip('/')}/{key}"
        return self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.settings.bucket, "Key": key},
            ExpiresIn=int(self.settings.ttl),
        )

    def _remove(self, keys: list[str]) -> None:
        for key in keys:
            try:
                self.client.delete_object(Bucket=self.settings.bucket, Key=key)
            except Exception:  # the lifecycle rule removes it later; no URL was given out
                log.warning("could not remove a partly stored response's object %s", key)

    def lifecycle_rule(self) -> dict[str, Any]:
        """Return the bucket lifecycle rule that expires this prefix after the TTL."""
        return {
            "ID": f"image-server-expire-{self.settings.prefix or 'all'}",
            "Filter": {"Prefix": self.settings.prefix},
            "Status": "Enabled",
            "Expiration": {"Days": self.settings.expiration_days},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
        }

    def apply_lifecycle(self) -> dict[str, Any]:
        """Put our rule into the bucket's lifecycle configuration, keeping other rules."""
        from botocore.exceptions import ClientError

        try:
            rules = self.client.get_bucket_lifecycle_configuration(Bucket=self.settings.bucket)[
                "Rules"
            ]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise
            rules = []
        rule = self.lifecycle_rule()
        rules = [r for r in rules if r.get("ID") != rule["ID"]] + [rule]
        self.client.put_bucket_lifecycle_configuration(
            Bucket=self.settings.bucket, LifecycleConfiguration={"Rules": rules}
        )
        return rule

    def sweep_expired(self, now: float | None = None) -> tuple[int, int]:
        """Delete objects under the prefix older than the TTL, for stores without lifecycle
        rules (run from cron); return (deleted, kept)."""
        if self.settings.ttl <= 0:
            return 0, 0
        now = time.time() if now is None else now
        deleted = kept = 0
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.settings.bucket, Prefix=self.settings.prefix
        )
        for page in pages:
            old = [
                {"Key": item["Key"]}
                for item in page.get("Contents", [])
                if item["LastModified"].timestamp() + self.settings.ttl <= now
            ]
            kept += len(page.get("Contents", [])) - len(old)
            if old:  # at most 1000 keys per page, as delete_objects takes
                self.client.delete_objects(Bucket=self.settings.bucket, Delete={"Objects": old})
                deleted += len(old)
        return deleted, kept
