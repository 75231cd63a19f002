"""Vision captioners: spec parsing, bundled OCR, a tiny random-weight transformers model, an OpenAI stub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.http import ChatServer, serve_chat
from helpers.models import CAPTION_WORDS, png, save_tiny_captioner

from graph.contracts import CaptionSource
from graph.models.base import ModelSpecError
from graph.models.vision import (
    HFCaptioner,
    OcrCaptioner,
    OpenAICaptioner,
    build_captioner,
    caption_messages,
)

# -- specs -------------------------------------------------------------------------------------------------


def test_none_spec_builds_nothing() -> None:
    assert build_captioner("none") is None
    assert build_captioner("") is None


def test_specs_build_the_named_backend() -> None:
    assert isinstance(build_captioner("ocr"), OcrCaptioner)
    hf = build_captioner("hf:Salesforce/blip-image-captioning-base")
    assert isinstance(hf, HFCaptioner)
    assert hf.spec == "hf:Salesforce/blip-image-captioning-base"
    openai = build_captioner("openai:llava:13b@http://127.0.0.1:8001/v1")
    assert isinstance(openai, OpenAICaptioner)
    assert openai.spec == "openai:llava:13b@http://127.0.0.1:8001/v1"


def test_credentials_in_base_url_stay_out_of_the_spec() -> None:
    captioner = build_captioner("openai:llava@http://me:secret@127.0.0.1:8001/v1")
    assert captioner is not None
    assert "secret" not in captioner.spec
    assert captioner.spec == "openai:llava@http://127.0.0.1:8001/v1"


@pytest.mark.parametrize("spec", ["blip", "hf:", "openai:llava", "openai:@http://x/v1", "ocr:fast", "tesseract"])
def test_unknown_specs_list_the_accepted_forms(spec: str) -> None:
    with pytest.raises(ModelSpecError) as error:
        build_captioner(spec)
    assert "openai:<model>@<base_url>" in str(error.value)


# -- OCR ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ocr() -> OcrCaptioner:
    captioner = OcrCaptioner()
    captioner.load()
    return captioner


async def test_ocr_reads_text_in_the_image(ocr: OcrCaptioner) -> None:
    result = await ocr.describe(png((360, 90), "white", "HELLO WORLD"), "a post")
    assert result is not None
    assert result.source is CaptionSource.OCR
    assert result.text.startswith("Text in the image: ")
    assert "HELLO" in result.text.upper()


async def test_ocr_returns_none_without_text(ocr: OcrCaptioner) -> None:
    assert await ocr.describe(png((64, 64), "white"), "a post") is None


# -- transformers ------------------------------------------------------------------------------------------


async def test_hf_captioner_runs_a_local_model(tmp_path: Path) -> None:
    save_tiny_captioner(tmp_path)
    captioner = build_captioner(f"hf:{tmp_path}")
    assert isinstance(captioner, HFCaptioner)
    result = await captioner.describe(png((48, 36)), "a post about a red square")
    assert result is not None
    assert result.source is CaptionSource.MODEL
    assert isinstance(result.text, str) and result.text.strip()
    assert set(result.text.split()) <= set(CAPTION_WORDS)


def test_hf_captioner_missing_model_says_what_to_do(tmp_path: Path) -> None:
    captioner = HFCaptioner(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelSpecError, match="local folder"):
        captioner.load()


# -- OpenAI-compatible -------------------------------------------------------------------------------------


CAPTION = "A red square on a plain background."


@pytest.fixture
def chat_server() -> Iterator[ChatServer]:
    with serve_chat(ChatServer(reply=lambda body: f"  {CAPTION}  ")) as server:
        yield server


async def test_openai_captioner_sends_the_image_and_the_post_text(chat_server: ChatServer) -> None:
    captioner = build_captioner(f"openai:llava@{chat_server.url}/v1")
    assert captioner is not None
    result = await captioner.describe(png((48, 36)), "whew, what a day")
    assert result is not None
    assert result.text == CAPTION
    assert result.source is CaptionSource.MODEL
    [path], [body] = chat_server.paths, chat_server.requests
    assert path == "/v1/chat/completions"
    assert body["model"] == "llava"
    parts: list[dict[str, Any]] = body["messages"][-1]["content"]
    image_parts = [part for part in parts if part["type"] == "image_url"]
    assert image_parts and image_parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = " ".join(part["text"] for part in parts if part["type"] == "text")
    assert "whew, what a day" in text
    assert "describe the current image" in text


def test_caption_prompt_treats_braces_in_post_text_as_data() -> None:
    messages = caption_messages(png((48, 36)), "a {caption} and {text} post")
    text_parts = [part["text"] for part in messages[-1].content if part["type"] == "text"]  # type: ignore[union-attr,index]
    assert "a {caption} and {text} post" in text_parts[0]
