"""The adapter files of `LORA_DIR`: names, what each applies to, read without loading.

A request names an adapter by its file stem. The directory is looked at on every use (a
`stat` per named file, a directory listing for `GET /v1/loras`), so a file dropped in is
found without a restart and a changed file is noticed by its size and modification time.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from app.exceptions import LoraNotFound

log = logging.getLogger(__name__)

SUFFIX = ".safetensors"
# A file stem: no path separator, no leading dot, no "..", so a name never leaves LORA_DIR.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")
# Key prefixes of the diffusers/PEFT layout, and the pipeline component each one targets.
COMPONENT_PREFIXES = ("transformer", "unet", "text_encoder", "text_encoder_2", "text_encoder_3")
# Kohya's layout names its targets with these prefixes instead.
KOHYA_PREFIXES = {"lora_unet_": "transformer", "lora_te1_": "text_encoder",
                  "lora_te2_": "text_encoder_2", "lora_te3_": "text_encoder_3",
                  "lora_te_": "text_encoder"}  # fmt: skip

# (mtime_ns, size): a file is the same adapter while both stay the same.
Signature = tuple[int, int]


def lora_name_problem(name: str) -> str | None:
    """Return why `name` cannot name an adapter file, or None when it can."""
    if "/" in name or "\\" in name or ".." in name:
        return f"adapter name {name!r} must be a file stem, without '/', '\\' or '..'."
    if not NAME.match(name):
        return (
            f"adapter name {name!r} must be 1 to 128 letters, digits, '_', '-' or '.', "
            "not starting with '.' or '-'."
        )
    return None


@dataclass(frozen=True)
class LoraFile:
    """One adapter file as `GET /v1/loras` describes it."""

    name: str
    size_bytes: int
    targets: tuple[str, ...]  # pipeline components its weights apply to
    layout: str  # "diffusers" (PEFT keys) or "kohya"; "unknown" when neither

    def as_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "object": "lora",
            "size_bytes": self.size_bytes,
            "targets": list(self.targets),
            "layout": self.layout,
        }


def describe_keys(keys: list[str]) -> tuple[tuple[str, ...], str]:
    """Return (targets, layout) from a safetensors file's tensor names."""
    targets: set[str] = set()
    kohya = diffusers = False
    for key in keys:
        head = key.split(".", 1)[0]
        if head in COMPONENT_PREFIXES and "lora" in key:
            targets.add(head)
            diffusers = True
            continue
        for prefix, component in KOHYA_PREFIXES.items():
            if key.startswith(prefix):
                targets.add(component)
                kohya = True
                break
    layout = "kohya" if kohya and not diffusers else "diffusers" if diffusers else "unknown"
    return tuple(sorted(targets)), layout


class LoraLibrary:
    """The adapter files of one directory; safe to use from any thread."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        # Headers read once per file version: name -> (signature, description).
        self._described: dict[str, tuple[Signature, LoraFile]] = {}

    def path(self, name: str) -> Path:
        """Return the file of adapter `name` (which must have passed `lora_name_problem`)."""
        return self.directory / f"{name}{SUFFIX}"

    def signature(self, name: str) -> Signature:
        """Return the (mtime_ns, size) of adapter `name`; raise LoraNotFound if there is none."""
        try:
            stat = self.path(name).stat()
        except OSError:
            stat = None
        if stat is None or not self.path(name).is_file():
            raise LoraNotFound(
                f"There is no adapter named {name!r} on this server; GET /v1/loras lists them."
            )
        return stat.st_mtime_ns, stat.st_size

    def list(self) -> list[LoraFile]:
        """Return every adapter file of the directory, sorted by name."""
        try:
            paths = sorted(self.directory.glob(f"*{SUFFIX}"))
        except OSError:
            log.warning("cannot list LORA_DIR %s", self.directory, exc_info=True)
            return []
        found = []
        for path in paths:
            name = path.name[: -len(SUFFIX)]
            if lora_name_problem(name) is None and path.is_file():
                found.append(self._describe(name, path))
        return found

    def _describe(self, name: str, path: Path) -> LoraFile:
        stat = path.stat()
        signature = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            known = self._described.get(name)
        if known and known[0] == signature:
            return known[1]
        try:
            from safetensors import safe_open

            # Reads the JSON header only; no tensor is loaded.
            with safe_open(path, framework="pt") as handle:
                keys = list(handle.keys())
            targets, layout = describe_keys(keys)
        except Exception:  # a corrupt file is still listed; using it answers 400
            targets, layout = (), "unknown"
        described = LoraFile(name, stat.st_size, targets, layout)
        with self._lock:
            self._described[name] = (signature, described)
        return described
