#!/usr/bin/env bash
# Install the pinned dependencies into .venv and start the server on port 8000.
# Offline demo: MODEL_ID=tiny-random bash scripts/serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/gunicorn -c gunicorn.conf.py wsgi:app "$@"
