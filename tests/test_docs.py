"""The docs cannot drift from the code: generated configuration, real variable names."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import SETTINGS
from app.config_docs import (
    CONFIG_DOCS_COMMAND,
    GUNICORN_SETTINGS,
    LIBRARY_SETTINGS,
    render_configuration_docs,
)
from app.engine.families import render_table

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GUNICORN_CONF = (ROOT / "gunicorn.conf.py").read_text(encoding="utf-8")

# A setting's shape: upper-case words joined by underscores (MODEL_ID, HF_TOKEN). Words
# without an underscore (POST, PNG, SIGTERM) are never settings here.
VARIABLE = re.compile(r"\b[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+\b")
# What gunicorn.conf.py reads: os.environ.get("NAME", "literal default") or a computed one.
ENV_READ = re.compile(r'os\.environ\.get\(\s*"([A-Z0-9_]+)"(?:,\s*(?:"([^"]*)"|[^)]*))?\)')


def test_configuration_doc_is_generated_from_settings() -> None:
    doc = ROOT / "docs" / "configuration.md"
    current = doc.read_text(encoding="utf-8") if doc.exists() else ""
    assert current == render_configuration_docs(), (
        f"docs/configuration.md is out of date with app/config.py; run `{CONFIG_DOCS_COMMAND}`"
    )


def test_every_setting_is_documented_once_with_a_meaning() -> None:
    text = render_configuration_docs()
    for name, setting in {**SETTINGS, **GUNICORN_SETTINGS, **LIBRARY_SETTINGS}.items():
        assert text.count(f"| `{name}` |") == 1, name
        assert setting.doc.strip().endswith((".", ")")), f"{name} needs a meaning"


def test_docs_name_only_variables_that_exist() -> None:
    known = set(SETTINGS) | set(GUNICORN_SETTINGS) | set(LIBRARY_SETTINGS)
    named: dict[str, set[str]] = {}
    for path in DOCS:
        for name in VARIABLE.findall(path.read_text(encoding="utf-8")):
            named.setdefault(name, set()).add(path.relative_to(ROOT).as_posix())
    assert {"MODEL_ID", "HF_TOKEN", "GUNICORN_GRACEFUL_TIMEOUT"} <= set(named)  # the scan works
    unknown = {name: sorted(files) for name, files in named.items() if name not in known}
    assert not unknown, f"the docs name settings that nothing reads: {unknown}"


def test_gunicorn_settings_table_matches_gunicorn_conf() -> None:
    reads = {name: default for name, default in ENV_READ.findall(GUNICORN_CONF)}
    read_gunicorn = {name for name in reads if name.startswith("GUNICORN_")}
    assert read_gunicorn == set(GUNICORN_SETTINGS), (
        "app/config_docs.py GUNICORN_SETTINGS must list exactly what gunicorn.conf.py reads"
    )
    for name in read_gunicorn:
        if reads[name]:  # a literal default: the docs must show the same one
            assert GUNICORN_SETTINGS[name].shown == f"`{reads[name]}`", name
    # gunicorn.conf.py also reads some app settings, with its own fallbacks: they must be
    # the app's defaults, or Gunicorn would size its threads for another queue.
    for name in set(reads) - read_gunicorn:
        assert name in SETTINGS, f"gunicorn.conf.py reads {name}, which is not a setting"
        assert reads[name] == str(SETTINGS[name].default), name


def test_the_families_table_is_what_app_engine_families_decides() -> None:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    start = text.index("\n", text.index("<!-- families table")) + 1
    table = text[start : text.index("<!-- end of families table -->")].strip()
    assert "| SD3 (`StableDiffusion3Pipeline`) | yes |" in table  # the scan found the table
    assert table == render_table(), (
        "docs/api.md's family table is out of date with app/engine/families.py; paste "
        "`python -c 'from app.engine.families import render_table; print(render_table())'`"
    )
