"""Schemathesis against the live Gunicorn server: no 5xx, every response as documented."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.apps import server_env
from tests.support.gunicorn import GunicornServer

pytestmark = pytest.mark.slow  # the fuzzer against a real Gunicorn process

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
KEY = "fuzz-key-3c9a41"
# Small limits keep every generated request fast on a CPU (at most 2 images of 128x128
# with 2 steps); the fuzzer still explores each of them.
LIMITS = {"DEFAULT_SIZE": "64x64", "DEFAULT_STEPS": 1, "MAX_IMAGE_SIDE": 128,
          "MAX_IMAGE_PIXELS": 128 * 128, "MAX_STEPS": 2, "MAX_IMAGES_PER_REQUEST": 2,
          "MAX_QUEUE": 64, "API_KEYS": KEY}  # fmt: skip
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,response_headers_conformance,"
          # 405 with a true Allow for undocumented methods; 401 without the key.
          "unsupported_method,allow_header_conformance,ignored_auth")  # fmt: skip
MIN_CASES = 300


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed")
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    model_cache: Path, tmp_path: Path
) -> None:
    env = server_env(model_cache, tmp_path / "images", **LIMITS)
    with GunicornServer(env) as server:
        command = [
            SCHEMATHESIS, "run", f"{server.base_url}/openapi.json",
            "--header", f"Authorization: Bearer {KEY}",
            "--checks", CHECKS,
            "--max-examples", "10", "--seed", "1", "--workers", "2",
            "--generation-database", "none", "--request-timeout", "60", "--no-color",
        ]  # fmt: skip
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=540)
        assert "Traceback" not in server.log(), server.log()[-5000:]
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated, report
    assert int(generated[1]) == int(generated[2]) >= MIN_CASES, report
    print(f"schemathesis: {generated[0]}")  # shown with -s or on failure
