"""Schemathesis against the live Gunicorn server: with the server's own /openapi.json (no
5xx, every response as documented), and with OpenAI's official spec, restricted to its image
operations (no 5xx; every 200 is the official `ImagesResponse`)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import official_spec
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
# With OpenAI's spec, the checks that hold for a server that differs from OpenAI only as
# docs/api.md says. Left out: status_code_conformance (the spec documents 200 alone; every
# error here is OpenAI's envelope, checked with our own document above),
# positive_data_acceptance (sizes, `n`, steps and pixels past this server's limits are a 400;
# so are `background: transparent`, and edits of schemathesis' random bytes, which are no
# image), negative_data_rejection (null means "the default" here, and any model name is
# accepted), and the auth checks (the spec's auth is not this server's keys).
OFFICIAL_CHECKS = "not_a_server_error,content_type_conformance,response_schema_conformance"
MIN_OFFICIAL_CASES, MIN_OFFICIAL_200S = 300, 10


@pytest.fixture(scope="module")
def fuzzed(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """One server for both runs, with the small limits."""
    env = server_env(model_cache, tmp_path_factory.mktemp("fuzz-images"), **LIMITS)
    with GunicornServer(env, name="fuzz") as server:
        yield server


def schemathesis_run(schema: str, cwd: Path, *options: str) -> subprocess.CompletedProcess[str]:
    """Run the schemathesis CLI with this module's key, seed and limits."""
    assert SCHEMATHESIS is not None
    command = [
        SCHEMATHESIS, "run", schema, "--header", f"Authorization: Bearer {KEY}", *options,
        "--max-examples", "10", "--seed", "1", "--workers", "2",
        "--generation-database", "none", "--request-timeout", "60", "--no-color",
    ]  # fmt: skip
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=540)


def passed_cases(done: subprocess.CompletedProcess[str], minimum: int) -> str:
    """Assert that the run passed with at least `minimum` cases; return its count line."""
    report = done.stdout[-6000:] + done.stderr[-2000:]
    assert done.returncode == 0, report
    generated = re.search(r"(\d+) generated, (\d+) passed", done.stdout)
    assert generated, report
    assert int(generated[1]) == int(generated[2]) >= minimum, report
    return generated[0]


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed")
def test_schemathesis_finds_no_server_error_and_no_undocumented_response(
    fuzzed: GunicornServer, tmp_path: Path
) -> None:
    done = schemathesis_run(f"{fuzzed.base_url}/openapi.json", tmp_path, "--checks", CHECKS)
    assert "Traceback" not in fuzzed.log(), fuzzed.log()[-5000:]
    print(f"schemathesis: {passed_cases(done, MIN_CASES)}")  # shown with -s or on failure


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed")
def test_schemathesis_with_openais_official_spec_finds_no_server_error_and_no_off_spec_200(
    fuzzed: GunicornServer, tmp_path: Path
) -> None:
    before = len(fuzzed.log())
    done = schemathesis_run(
        str(official_spec.spec_path()), tmp_path, "--url", f"{fuzzed.base_url}/v1",
        "--include-path-regex", official_spec.IMAGE_PATH_REGEX, "--checks", OFFICIAL_CHECKS,
    )  # fmt: skip
    log = fuzzed.log()[before:]
    assert "Traceback" not in log, log[-5000:]
    count = passed_cases(done, MIN_OFFICIAL_CASES)
    # Requests made from OpenAI's spec that this server answered 200 (and schemathesis
    # checked against the official ImagesResponse): not only refusals.
    accepted = re.findall(r'"POST /v1/images/(\w+)" 200', log)
    assert len(accepted) >= MIN_OFFICIAL_200S, (accepted, log[-3000:])
    assert "generations" in accepted, log[-3000:]
    print(f"schemathesis with OpenAI's spec: {count}; answered 200: {Counter(accepted)}")
