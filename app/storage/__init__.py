"""Where `url` images go: a local directory (one server) or S3-compatible storage (replicas).

Both stores keep one small interface: `save_all` writes every image of a response or none
and returns their URLs; `problem` says why the store cannot be used yet (it keeps
`/readyz` at 503); `start` begins any background checking. `b64_json` answers never
reach a store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

# Longest life of a presigned S3 URL (SigV4 caps `X-Amz-Expires` at 7 days).
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class ImageStore(Protocol):
    """What the answer path needs from an image store."""

    kind: str

    @property
    def problem(self) -> str | None:
        """Say why the store is not usable, or None when it is."""

    def start(self) -> None:
        """Begin background work (readiness checks), if any."""

    def save_all(self, blobs: list[bytes], extension: str) -> list[str]:
        """Store each blob under a fresh random name; return their URLs, or raise."""


def create_store(config: Mapping[str, Any]) -> ImageStore:
    """Build the store `IMAGE_STORE` names; refuse settings that cannot work, at start."""
    kind = config["IMAGE_STORE"]
    if kind == "local":
        from app.storage.local import LocalImageStore

        store = LocalImageStore(config["IMAGE_DIR"])
        store.ensure_directory()
        return store
    if kind == "s3":
        from app.storage.s3 import S3ImageStore, S3Settings

        return S3ImageStore(S3Settings.from_config(config))
    raise ValueError(f"IMAGE_STORE must be `local` or `s3`, got {kind!r}")
