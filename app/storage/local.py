"""The local image store: a directory served by nginx (or Flask), one file per image."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

from flask import current_app, url_for

from app.exceptions import StorageError


def image_url(name: str) -> str:
    """Return the absolute URL of a stored image, behind any trusted proxy."""
    base = current_app.config["PUBLIC_BASE_URL"]
    if base:
        return f"{base.rstrip('/')}/static/images/{name}"
    return url_for("files.image", name=name, _external=True)


class LocalImageStore:
    """A directory of generated images, each written whole or not at all."""

    kind = "local"
    problem: str | None = None  # a missing directory fails create_app, not readiness

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def ensure_directory(self) -> None:
        """Create the image directory if it is missing."""
        self.directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Nothing to check in the background: the sweeper is app/retention.py's."""

    def save_all(self, blobs: list[bytes], extension: str) -> list[str]:
        """Write each blob under a fresh random name and return their URLs; on any
        failure write none."""
        return [image_url(name) for name in self.save_files(blobs, extension)]

    def save_files(self, blobs: list[bytes], extension: str) -> list[str]:
        """Write each blob under a fresh random name and return the names; all or none."""
        names: list[str] = []
        try:
            for blob in blobs:
                names.append(self._save(blob, extension))
        except OSError as exc:
            for name in names:
                (self.directory / name).unlink(missing_ok=True)
            raise StorageError() from exc
        return names

    def _save(self, blob: bytes, extension: str) -> str:
        # 1. Write to a hidden temporary file in the same directory (same filesystem).
        name = f"{secrets.token_hex(16)}.{extension}"
        fd, tmp_path = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(blob)
                handle.flush()
                os.fsync(handle.fileno())
            # 2. Readable by a web server running as another user (nginx serves it).
            os.chmod(tmp_path, 0o644)
            # 3. Rename into place: readers see the whole file or nothing.
            os.replace(tmp_path, self.directory / name)
        except BaseException:
            Path(tmp_path).unlink(missing_ok=True)
            raise
        return name
