#!/usr/bin/env bash
# Download the wheels the GPU device lacks into .whl/ (ignored by git; carried by the run).
#
# The device's image (Python 3.12, torch 2.11 CUDA 13, transformers, accelerate, pillow,
# prometheus-client, numpy, requests, psutil, huggingface-hub 1.x) has no diffusers, flask,
# gunicorn, marshmallow, apispec or torchao and no network: these travel as wheels, with
# the same pins as requirements.txt, and are installed there with --no-deps (bench/gpu.sh).
# Run from the repository root: bash bench/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" requirements.txt | head -1; }
WHEELS=(
  "$(pin diffusers)" "$(pin flask)" "$(pin flask-cors)" "$(pin werkzeug)" "$(pin blinker)"
  "$(pin itsdangerous)" "$(pin gunicorn)" "$(pin marshmallow)" "$(pin apispec)"
  "$(pin importlib-metadata)" "$(pin zipp)" "$(pin lazy-importer)"
  "$(grep -i '^torchao==' requirements-dev.txt)"
)
rm -rf .whl && mkdir -p .whl
PY="${PYTHON:-.venv/bin/python}"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
