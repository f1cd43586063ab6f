"""docs/configuration.md, generated from the settings tables.

`SETTINGS` (app/config.py) holds what the app reads; the tables here add what Gunicorn's
config and libraries read, for the docs only. `scripts/gen_config_docs.py` writes the file
and tests/test_docs.py fails when it is out of date.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from app.config import FALSE_WORDS, SETTINGS, TRUE_WORDS


class Documented(NamedTuple):
    """An environment variable read outside `load_config()`, listed in the docs only."""

    shown: str  # the default, as the docs show it
    doc: str


# Read by gunicorn.conf.py in the Gunicorn master, not by the app. tests/test_docs.py
# checks that this list and what gunicorn.conf.py reads agree, defaults included.
GUNICORN_SETTINGS: dict[str, Documented] = {
    "GUNICORN_BIND": Documented(
        "`0.0.0.0:8000`", "Listen address (`-b` on the command line also works)."
    ),
    "GUNICORN_THREADS": Documented(
        "lane + `MAX_QUEUE` + 16",
        "Request threads of the one worker process; must exceed lane + queue so that "
        "admission happens in the app, not in a connection backlog.",
    ),
    "GUNICORN_TIMEOUT": Documented(
        "`60`", "Worker heartbeat timeout; neither model loading nor long generations trip it."
    ),
    "GUNICORN_GRACEFUL_TIMEOUT": Documented(
        "`330`",
        "Time running and queued requests get to finish on SIGTERM; keep it above "
        "`REQUEST_TIMEOUT_SECONDS`.",
    ),
    "GUNICORN_LOG_LEVEL": Documented(
        "`info`",
        "Level of Gunicorn's own error log (its lines are JSON too with `LOG_FORMAT=json`).",
    ),
}

# Read by libraries, not by this code.
LIBRARY_SETTINGS: dict[str, Documented] = {
    "HF_TOKEN": Documented(
        "unset",
        "Hugging Face token, for gated models such as SD3 (read by `huggingface_hub`).",
    ),
    "CUDA_VISIBLE_DEVICES": Documented(
        "unset (every GPU)",
        "GPUs the process may see (read by CUDA); one per replica, with `DEVICE=cuda:0`.",
    ),
    "AWS_ACCESS_KEY_ID": Documented(
        "unset", "S3 access key, with `IMAGE_STORE=s3` (read by boto3; never logged)."
    ),
    "AWS_SECRET_ACCESS_KEY": Documented(
        "unset", "S3 secret key, with `IMAGE_STORE=s3` (read by boto3; never logged)."
    ),
    "AWS_SESSION_TOKEN": Documented("unset", "Temporary S3 credentials' token (read by boto3)."),
    "AWS_PROFILE": Documented(
        "unset",
        "A profile of `~/.aws/credentials` (read by boto3). Without any of these, boto3 asks "
        "the instance or pod role (IRSA, EKS Pod Identity).",
    ),
    "AWS_REQUEST_CHECKSUM_CALCULATION": Documented(
        "`when_required`",
        "Checksums on S3 requests: the server passes this variable (not an AWS config "
        "file's value) to boto3; by default only where required, as several S3-compatible "
        "stores refuse them; `when_supported` for all.",
    ),
    "AWS_RESPONSE_CHECKSUM_VALIDATION": Documented(
        "`when_required`",
        "Checksum checks on S3 answers, passed to boto3 the same way, same values and "
        "default as above.",
    ),
}

CONFIG_DOCS_COMMAND = ".venv/bin/python scripts/gen_config_docs.py"


def _shown(value: Any) -> str:
    """Render a default value as the docs show it."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`" if value != "" else "empty"


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {default} | {doc} |" for name, default, doc in rows]
    return lines


def render_configuration_docs() -> str:
    """Return docs/configuration.md, generated from the tables above."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from app/config.py by `{CONFIG_DOCS_COMMAND}`; do not edit. -->",
        "",
        "Environment variables, read when the app is created (never at import time). A value",
        "that does not parse stops the start with an error naming the variable. Booleans take",
        f"{', '.join(f'`{v}`' for v in sorted(TRUE_WORDS))} or "
        f"{', '.join(f'`{v}`' for v in sorted(FALSE_WORDS - {''}))} (empty is false).",
    ]
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for name, setting in SETTINGS.items():
        shown = setting.shown if setting.shown is not None else _shown(setting.default)
        groups.setdefault(setting.group, []).append((name, shown, setting.doc))
    for group, rows in groups.items():
        lines += ["", f"## {group}", "", *_table(rows)]
    lines += [
        "",
        "## Gunicorn",
        "",
        "Read by `gunicorn.conf.py` in the Gunicorn master, not by the app; Gunicorn's command",
        "line (`bash scripts/serve.sh -b 127.0.0.1:9000`) overrides them.",
        "",
        *_table([(name, var.shown, var.doc) for name, var in GUNICORN_SETTINGS.items()]),
        "",
        "## Read by libraries",
        "",
        *_table([(name, var.shown, var.doc) for name, var in LIBRARY_SETTINGS.items()]),
    ]
    return "\n".join(lines) + "\n"
