"""Clients we did not write, against the real Gunicorn server: litellm, LangChain's
DallEAPIWrapper, and the requests Open WebUI sends. Each test checks what the client's user
gets (images that decode, at the requested size, URLs that download), and the watch of
tests/support/leaks.py checks every answer against OpenAI's spec on the way."""

from __future__ import annotations

import base64
import io
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from PIL import Image

from tests.support.apps import server_env
from tests.support.gunicorn import GunicornServer
from tests.support.images import opaque_png, striped_png

pytestmark = pytest.mark.slow  # one real Gunicorn process for the module

KEY = "clients-key-7d21c4"
AUTH = {"Authorization": f"Bearer {KEY}"}
# litellm fetches its model price list from the network at import unless told not to.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")


@pytest.fixture(scope="module")
def served(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for every client, with an API key as a deployment would have."""
    env = server_env(model_cache, tmp_path_factory.mktemp("client-images"), API_KEYS=KEY,
                     MAX_IMAGE_SIDE=512, MAX_IMAGE_PIXELS=512 * 512)  # fmt: skip
    with GunicornServer(env, name="clients") as running:
        yield running.base_url


def decode(blob: bytes) -> Image.Image:
    """Decode an image fully (a truncated file fails here, not later)."""
    image = Image.open(io.BytesIO(blob))
    image.load()
    return image


def download(url: str, headers: dict[str, str] | None = None) -> Image.Image:
    """GET an image URL as a browser or a client would, and decode it."""
    response = requests.get(url, headers=headers, timeout=30)
    assert response.status_code == 200, response.text[:300]
    assert response.headers["Content-Type"] == "image/png"
    return decode(response.content)


def png_file(blob: bytes, name: str = "image.png") -> io.BytesIO:
    """An in-memory upload with a file name, as a user's open() would give."""
    upload = io.BytesIO(blob)
    upload.name = name
    return upload


# litellm: image_generation and image_edit with an OpenAI-compatible api_base.


def test_litellm_generation_with_a_gpt_image_name_returns_b64_images(served: str) -> None:
    import litellm

    result = litellm.image_generation(
        model="openai/gpt-image-1", prompt="a red fox", size="96x64", api_base=f"{served}/v1",
        api_key=KEY)  # fmt: skip
    assert len(result.data) == 1 and result.data[0].url is None
    assert decode(base64.b64decode(result.data[0].b64_json)).size == (96, 64)
    assert result.usage.total_tokens > 0


def test_litellm_generation_with_a_dall_e_name_returns_urls_that_download(served: str) -> None:
    import litellm

    result = litellm.image_generation(
        model="openai/dall-e-3", prompt="a lighthouse", n=2, size="64x64",
        api_base=f"{served}/v1", api_key=KEY)  # fmt: skip
    assert [download(item.url).size for item in result.data] == [(64, 64), (64, 64)]


def test_litellm_passes_the_seed_through_extra_body(served: str) -> None:
    import litellm

    def image(seed: int) -> bytes:
        result = litellm.image_generation(
            model="openai/gpt-image-1", prompt="a harbour", size="64x64", api_base=f"{served}/v1",
            api_key=KEY, extra_body={"seed": seed, "num_inference_steps": 1})  # fmt: skip
        return decode(base64.b64decode(result.data[0].b64_json)).tobytes()

    assert image(11) == image(11) != image(12)


def test_litellm_edit_with_a_mask_returns_n_images(served: str) -> None:
    import litellm

    result = litellm.image_edit(
        model="openai/dall-e-2", prompt="a red door", n=2, api_base=f"{served}/v1", api_key=KEY,
        image=png_file(striped_png()), mask=png_file(striped_png(hole=(0, 0, 32, 32)), "m.png"),
    )  # fmt: skip
    assert [download(item.url).size for item in result.data] == [(64, 64), (64, 64)]


def test_litellm_edit_with_a_gpt_image_name_returns_b64_at_the_requested_size(served: str) -> None:
    import litellm

    result = litellm.image_edit(model="openai/gpt-image-1", prompt="snow on the roof",
                                image=png_file(opaque_png((96, 64))), size="64x64",
                                api_base=f"{served}/v1", api_key=KEY)  # fmt: skip
    assert decode(base64.b64decode(result.data[0].b64_json)).size == (64, 64)


def test_litellm_raises_its_own_errors_with_the_servers_message(served: str) -> None:
    import litellm

    with pytest.raises(litellm.BadRequestError, match="size"):
        litellm.image_generation(model="openai/dall-e-3", prompt="x", size="100x100",
                                 api_base=f"{served}/v1", api_key=KEY)  # fmt: skip
    with pytest.raises(litellm.AuthenticationError):
        litellm.image_generation(model="openai/dall-e-3", prompt="x", size="64x64",
                                 api_base=f"{served}/v1", api_key="wrong-key")  # fmt: skip


# LangChain: langchain_community's DallEAPIWrapper, which reads `url` from the answer.


def test_langchain_dalle_wrapper_returns_urls_that_download_pngs(served: str) -> None:
    from langchain_community.utilities.dalle_image_generator import DallEAPIWrapper

    wrapper = DallEAPIWrapper(base_url=f"{served}/v1", api_key=KEY, size="64x64", n=2,
                              max_retries=0)  # fmt: skip
    urls = wrapper.run("a lighthouse at dusk").split("\n")
    assert [download(url).size for url in urls] == [(64, 64), (64, 64)]


def test_langchain_dalle_wrapper_with_dall_e_3_and_hd_quality(served: str) -> None:
    from langchain_community.utilities.dalle_image_generator import DallEAPIWrapper

    wrapper = DallEAPIWrapper(base_url=f"{served}/v1", api_key=KEY, model="dall-e-3",
                              size="96x64", quality="hd", max_retries=0)  # fmt: skip
    assert download(wrapper.run("a lighthouse")).size == (96, 64)


# Open WebUI: the JSON and multipart bodies its "openai" image engine sends, and what it
# reads from the answers. Learnt from open-webui/open-webui,
# backend/open_webui/routers/images.py at 02530d501461ce58ab06231d7c2ef2024a141ddf
# (`image_generations` and `image_edits`): it adds `response_format: "b64_json"` unless the
# model matches IMAGE_URL_RESPONSE_MODELS_REGEX_PATTERN (default `^gpt-image`), merges the
# admin's IMAGES_OPENAI_API_PARAMS into the body, sends its IMAGE_SIZE (default 512x512),
# then per `data` item downloads `url` with the same Authorization header (keeping the
# answer only when its Content-Type is image/*), or decodes `b64_json` as PNG.


def open_webui_reads(answer: requests.Response) -> list[Image.Image]:
    """Do with an answer what Open WebUI does: raise for status, then fetch each image."""
    answer.raise_for_status()
    images = []
    for item in answer.json()["data"]:
        if item.get("url"):
            fetched = requests.get(item["url"], headers=AUTH, timeout=30)
            fetched.raise_for_status()
            assert fetched.headers["Content-Type"].split("/")[0] == "image"
            images.append(decode(fetched.content))
        else:
            images.append(decode(base64.b64decode(item["b64_json"])))
    return images


@pytest.mark.parametrize(
    ("body", "sizes"),
    [
        # gpt-image names match the default pattern: no response_format, b64_json expected
        ({"model": "gpt-image-1", "n": 1, "size": "64x64"}, [(64, 64)]),
        # its default model and default IMAGE_SIZE
        ({"model": "dall-e-2", "n": 1, "size": "512x512", "response_format": "b64_json"},
         [(512, 512)]),
        # a model name of the admin's choice, with IMAGES_OPENAI_API_PARAMS merged in
        ({"model": "sd3-medium", "n": 2, "size": "64x64", "response_format": "b64_json",
          "quality": "hd", "style": "vivid"}, [(64, 64), (64, 64)]),
        # a pattern set to match dall-e-3: no response_format, so urls come back
        ({"model": "dall-e-3", "n": 1, "size": "96x64"}, [(96, 64)]),
    ],
)  # fmt: skip
def test_open_webui_generation_shapes(served: str, body: dict[str, Any], sizes: list) -> None:
    answer = requests.post(f"{served}/v1/images/generations", timeout=120,
                           json={"prompt": "a cabin in the woods", **body},
                           headers={**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert [image.size for image in open_webui_reads(answer)] == sizes


def data_url_file(blob: bytes, mime: str, field: str) -> tuple[str, tuple[str, bytes, str]]:
    """A multipart file as Open WebUI builds it from a data URL: random name, its type."""
    extension = {"image/png": ".png", "image/jpeg": ".jpg"}[mime]
    return field, (f"{uuid.uuid4()}{extension}", blob, mime)


def jpeg_bytes(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    decode(opaque_png(size)).save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fields", "files", "sizes"),
    [
        # one image (a str in its form): the field is `image`
        ({"model": "gpt-image-1", "n": "1", "size": "64x64"},
         [data_url_file(opaque_png((64, 64)), "image/png", "image")], [(64, 64)]),
        # a list of images, here one JPEG: the field is `image[]`; its default model
        ({"model": "dall-e-2", "n": "2", "response_format": "b64_json", "background": "opaque"},
         [data_url_file(jpeg_bytes((96, 64)), "image/jpeg", "image[]")], [(96, 64), (96, 64)]),
    ],
)  # fmt: skip
def test_open_webui_edit_shapes(served: str, fields: dict[str, str], files: list,
                                sizes: list) -> None:  # fmt: skip
    answer = requests.post(f"{served}/v1/images/edits", headers=AUTH, timeout=120,
                           data={"prompt": "make it winter", **fields}, files=files)  # fmt: skip
    assert [image.size for image in open_webui_reads(answer)] == sizes


def test_open_webui_edit_with_two_images_gets_an_error_it_can_show(served: str) -> None:
    """The served SD3 takes one input image: Open WebUI shows the server's message."""
    files = [data_url_file(opaque_png(), "image/png", "image[]") for _ in range(2)]
    fields = {"prompt": "merge them", "model": "gpt-image-1"}
    answer = requests.post(f"{served}/v1/images/edits", headers=AUTH, timeout=60, data=fields,
                           files=files)  # fmt: skip
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["param"] == "image" and error["message"]
