"""Vision captioners: spec parsing, bundled OCR, a tiny random-weight transformers model, an OpenAI stub."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageFont

from graph.contracts import CaptionSource
from graph.models.base import ModelSpecError
from graph.models.vision import (
    HFCaptioner,
    OcrCaptioner,
    OpenAICaptioner,
    build_captioner,
    caption_messages,
)


def _png(size: tuple[int, int] = (48, 36), color: str = "red", text: str | None = None) -> bytes:
    image = Image.new("RGB", size, color)
    if text:
        ImageDraw.Draw(image).text((10, 20), text, fill="black", font=ImageFont.load_default(size=36))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


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
    result = await ocr.describe(_png((360, 90), "white", "HELLO WORLD"), "a post")
    assert result is not None
    assert result.source is CaptionSource.OCR
    assert result.text.startswith("Text in the image: ")
    assert "HELLO" in result.text.upper()


async def test_ocr_returns_none_without_text(ocr: OcrCaptioner) -> None:
    assert await ocr.describe(_png((64, 64), "white"), "a post") is None


# -- transformers ------------------------------------------------------------------------------------------

WORDS = ("a", "photo", "of", "cat", "dog", "bike", "street", "sign", "red", "blue", "person", "tree", "car")


def _save_tiny_captioner(path: Path) -> None:
    """A random-weight ViT encoder + GPT-2 decoder, a ViT image processor and an offline word tokenizer."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    vocab = {token: index for index, token in enumerate([*specials, *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )
    encoder = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    decoder = GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config)
    for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(config, name))
    with torch.no_grad():
        # Random weights would often pick a special token first (an empty caption); zeroing their embeddings
        # (tied to the output layer) makes their logits 0, so greedy decoding emits real words.
        model.decoder.get_input_embeddings().weight[: len(specials)] = 0.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)


async def test_hf_captioner_runs_a_local_model(tmp_path: Path) -> None:
    _save_tiny_captioner(tmp_path)
    captioner = build_captioner(f"hf:{tmp_path}")
    assert isinstance(captioner, HFCaptioner)
    result = await captioner.describe(_png(), "a post about a red square")
    assert result is not None
    assert result.source is CaptionSource.MODEL
    assert isinstance(result.text, str) and result.text.strip()
    assert set(result.text.split()) <= set(WORDS)


def test_hf_captioner_missing_model_says_what_to_do(tmp_path: Path) -> None:
    captioner = HFCaptioner(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelSpecError, match="local folder"):
        captioner.load()


# -- OpenAI-compatible -------------------------------------------------------------------------------------


class _ChatStub(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, body))  # type: ignore[attr-defined]
        reply = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "stub"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "  A red square on a plain background.  "},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 8, "total_tokens": 18},
        }
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def chat_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChatStub)
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


async def test_openai_captioner_sends_the_image_and_the_post_text(chat_server: ThreadingHTTPServer) -> None:
    port = chat_server.server_address[1]
    captioner = build_captioner(f"openai:llava@http://127.0.0.1:{port}/v1")
    assert captioner is not None
    result = await captioner.describe(_png(), "whew, what a day")
    assert result is not None
    assert result.text == "A red square on a plain background."
    assert result.source is CaptionSource.MODEL
    [(path, body)] = chat_server.requests  # type: ignore[attr-defined]
    assert path == "/v1/chat/completions"
    assert body["model"] == "llava"
    parts: list[dict[str, Any]] = body["messages"][-1]["content"]
    image_parts = [part for part in parts if part["type"] == "image_url"]
    assert image_parts and image_parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = " ".join(part["text"] for part in parts if part["type"] == "text")
    assert "whew, what a day" in text
    assert "describe the current image" in text


def test_caption_prompt_treats_braces_in_post_text_as_data() -> None:
    messages = caption_messages(_png(), "a {caption} and {text} post")
    text_parts = [part["text"] for part in messages[-1].content if part["type"] == "text"]  # type: ignore[union-attr,index]
    assert "a {caption} and {text} post" in text_parts[0]
