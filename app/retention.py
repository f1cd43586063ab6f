"""Image retention: expire images after `IMAGE_TTL_SECONDS`, keep the store under a cap.

A background thread in the worker sweeps the image directory every
`IMAGE_SWEEP_INTERVAL_SECONDS`: it deletes images older than the TTL, then, while the
store holds more than `IMAGE_STORE_MAX_BYTES`, the oldest images first. It only ever
looks at finished image names (`IMAGE_NAME`), so a `.tmp-*.part` file being written is
never touched. `flask --app 'app:create_app(load_model=False)' cleanup-images` runs the
same sweep once, for cron.

With `IMAGE_STORE=s3` no sweeper runs: `apply-s3-lifecycle` puts a bucket lifecycle rule
that expires the prefix (whole days, at least the TTL), and `cleanup-images` deletes the
prefix's objects older than the TTL, for stores without lifecycle rules.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
from flask import Flask, current_app
from flask.cli import with_appcontext

from app.images import IMAGE_NAME

log = logging.getLogger(__name__)


@dataclass
class SweepResult:
    """What one sweep removed and kept."""

    expired: int = 0
    evicted: int = 0
    freed_bytes: int = 0
    kept: int = 0
    kept_bytes: int = 0


def is_expired(path: Path, ttl: float, now: float | None = None) -> bool:
    """Return whether the image at `path` is past its time to live (0: never)."""
    if ttl <= 0:
        return False
    try:
        modified = path.stat().st_mtime
    except OSError:
        return True
    return modified + ttl <= (time.time() if now is None else now)


def sweep(directory: Path, ttl: float, max_bytes: int, now: float | None = None) -> SweepResult:
    """Delete expired images, then the oldest ones while over `max_bytes` (0: no cap)."""
    now = time.time() if now is None else now
    result = SweepResult()
    # 1. Finished images only: temporary files and anything else are not ours to delete.
    images: list[tuple[float, int, Path]] = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not IMAGE_NAME.match(entry.name):
                continue
            try:
                stat = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # removed meanwhile, by another sweeper or by hand
                continue
            images.append((stat.st_mtime, stat.st_size, Path(entry.path)))
    images.sort()  # oldest first
    # 2. Expired images.
    kept: list[tuple[float, int, Path]] = []
    for modified, size, path in images:
        if ttl > 0 and modified + ttl <= now:
            if _remove(path):
                result.expired += 1
                result.freed_bytes += size
        else:
            kept.append((modified, size, path))
    # 3. Over the cap: the oldest first.
    total = sum(size for _, size, _ in kept)
    while max_bytes > 0 and total > max_bytes and kept:
        _, size, path = kept.pop(0)
        total -= size
        if _remove(path):
            result.evicted += 1
            result.freed_bytes += size
    result.kept, result.kept_bytes = len(kept), total
    return result


def _remove(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


class Sweeper:
    """Run `sweep` every `interval` seconds in a daemon thread until stopped."""

    def __init__(self, directory: Path, ttl: float, max_bytes: int, interval: float) -> None:
        self.directory = directory
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 or self.max_bytes > 0

    def start(self) -> None:
        """Start sweeping in the background, if there is anything to enforce."""
        if self.enabled and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="image-sweeper", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def sweep_once(self) -> SweepResult:
        result = sweep(self.directory, self.ttl, self.max_bytes)
        if result.expired or result.evicted:
            log.info(
                "image sweep: removed %d expired and %d over the cap (%d bytes); %d kept "
                "(%d bytes)", result.expired, result.evicted, result.freed_bytes,
                result.kept, result.kept_bytes,
            )  # fmt: skip
        return result

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep_once()
            except Exception:  # a failed sweep must not stop the next ones
                log.exception("image sweep failed")


def init_retention(app: Flask) -> Sweeper:
    """Create the app's sweeper (started by the caller) and its `cleanup-images` command."""
    config = app.config
    interval = config["IMAGE_SWEEP_INTERVAL_SECONDS"]
    if config["IMAGE_TTL_SECONDS"] > 0:
        # Sweep at least ten times per lifetime, so a file outlives its URL only briefly.
        interval = min(interval, max(config["IMAGE_TTL_SECONDS"] / 10, 0.1))
    sweeper = Sweeper(
        Path(config["IMAGE_DIR"]),
        config["IMAGE_TTL_SECONDS"],
        config["IMAGE_STORE_MAX_BYTES"],
        interval,
    )
    app.extensions["image_sweeper"] = sweeper
    app.cli.add_command(cleanup_images)
    app.cli.add_command(apply_s3_lifecycle)
    return sweeper


@click.command("cleanup-images")
@with_appcontext
def cleanup_images() -> None:
    """Delete expired images and the oldest ones over IMAGE_STORE_MAX_BYTES, once."""
    store = current_app.extensions["image_store"]
    if store.kind == "s3":
        deleted, kept = store.sweep_expired()
        click.echo(f"removed {deleted} expired objects; kept {kept} under "
                   f"s3://{store.settings.bucket}/{store.settings.prefix}")  # fmt: skip
        return
    sweeper: Sweeper = current_app.extensions["image_sweeper"]
    result = sweep(sweeper.directory, sweeper.ttl, sweeper.max_bytes)
    click.echo(
        f"removed {result.expired} expired and {result.evicted} over the cap "
        f"({result.freed_bytes} bytes); kept {result.kept} ({result.kept_bytes} bytes) "
        f"in {sweeper.directory}"
    )


@click.command("apply-s3-lifecycle")
@with_appcontext
def apply_s3_lifecycle() -> None:
    """Put the bucket lifecycle rule that expires S3_PREFIX after IMAGE_TTL_SECONDS."""
    store = current_app.extensions["image_store"]
    if store.kind != "s3":
        raise click.ClickException("IMAGE_STORE is not s3: local images are swept instead")
    if store.settings.ttl <= 0:
        raise click.ClickException("IMAGE_TTL_SECONDS=0 keeps images forever: no rule to put")
    try:
        rule = store.apply_lifecycle()
    except Exception as exc:  # a store without lifecycle support says so here
        from app.storage.s3 import explain

        raise click.ClickException(
            f"the store did not take the lifecycle rule ({explain(exc, store.settings.bucket)}"
            f": {exc}). Without lifecycle support, run `cleanup-images` from cron instead."
        ) from exc
    click.echo(
        f"s3://{store.settings.bucket}/{store.settings.prefix}: objects expire after "
        f"{rule['Expiration']['Days']} day(s) (rule {rule['ID']})"
    )
