"""Write docs/configuration.md from the settings table in app/config.py.

Run it after changing a setting: `.venv/bin/python scripts/gen_config_docs.py`;
`--check` only says whether the file is up to date (exit status 1 when it is not).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python scripts/gen_config_docs.py` imports `app`

from app.config_docs import render_configuration_docs  # noqa: E402

TARGET = ROOT / "docs" / "configuration.md"


def main() -> int:
    """Write (or with --check, compare) docs/configuration.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; write nothing")
    args = parser.parse_args()
    text = render_configuration_docs()
    if args.check:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        if current != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date; run without --check")
            return 1
        return 0
    TARGET.parent.mkdir(exist_ok=True)
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
