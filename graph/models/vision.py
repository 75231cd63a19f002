"""Vision backends for the caption node (``--vision`` / ``MIKO_VISION``): image bytes -> a short description.

Specs: ``none``; ``ocr`` (RapidOCR, whose ONNX models ship inside its wheel, so it works offline);
``hf:<hub id or local folder>`` (a transformers image-captioning model such as BLIP, GIT or ViT-GPT2);
``openai:<model>@<base_url>`` (any OpenAI-compatible vision model: vLLM, Ollama, llama.cpp server, OpenAI).

Local backends load lazily on first use (or on :meth:`load`, for callers that want to fail at start-up) and
run in a worker thread behind a lock, so the event loop keeps serving other posts while one image is read.
"""

from __future__ import annotations

import asyncio
import base64
import io
import re
import threading
from typing import Any

import structlog
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from PIL import Image

from graph.contracts import CaptionSource
from graph.models.base import Captioner, CaptionResult, ModelSpecError
from graph.models.spec import without_credentials
from prompts import load_prompts

log = structlog.get_logger(__name__)

ACCEPTED_FORMS = (
    "none | ocr | hf:<hub id or local folder> | openai:<model>@<base_url> (e.g. openai:llava@http://127.0.0.1:8001/v1)"
)
MAX_CAPTION_CHARS = 1000
MAX_POST_CHARS_IN_PROMPT = 2000
_OPENAI_SPEC = re.compile(r"^(?P<model>[^@\s]+)@(?P<url>https?://\S+)$")


def build_captioner(spec: str, *, openai_api_key: str | None = None) -> Captioner | None:
    """The captioner a spec names, or None for ``none``; raises :class:`ModelSpecError` for anything else."""
    text = spec.strip()
    kind, _, rest = text.partition(":")
    if text.lower() in ("", "none"):
        return None
    if text.lower() == "ocr":
        return OcrCaptioner()
    if kind == "hf" and rest.strip():
        return HFCaptioner(rest.strip())
    if kind == "openai":
        match = _OPENAI_SPEC.match(rest.strip())
        if match:
            return OpenAICaptioner(match["model"], match["url"], api_key=openai_api_key)
        raise ModelSpecError(f"vision spec {spec!r} needs a model and a base URL: openai:<model>@<base_url>")
    raise ModelSpecError(f"unknown vision spec {spec!r}; accepted forms: {ACCEPTED_FORMS}")


def _tidy(text: str) -> str:
    return " ".join(text.split())[:MAX_CAPTION_CHARS]


def _open_rgb(image: bytes) -> Image.Image:
    with Image.open(io.BytesIO(image)) as opened:
        return opened.convert("RGB")


class OcrCaptioner:
    """Reads the text in an image with RapidOCR; ``None`` when there is none (photos without writing)."""

    spec = "ocr"

    def __init__(self, *, min_score: float = 0.5) -> None:
        self._min_score = min_score
        self._engine: Any = None
        self._lock = threading.Lock()

    def load(self) -> None:
        """Load the bundled detection/recognition models now rather than on the first image."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            self._engine = RapidOCR()

    def _read(self, image: bytes) -> str:
        with self._lock:
            self._load_locked()
            result, _ = self._engine(image)
        lines = [str(text) for _box, text, score in (result or []) if float(score) >= self._min_score]
        return _tidy(" ".join(line.strip() for line in lines if line.strip()))

    async def describe(self, image: bytes, post_text: str) -> CaptionResult | None:
        text = await asyncio.to_thread(self._read, image)
        return CaptionResult(text=f"Text in the image: {text}", source=CaptionSource.OCR) if text else None


class HFCaptioner:
    """A transformers image-captioning model (BLIP, GIT, VisionEncoderDecoder...) on CPU.

    These models take no instruction, so the post text is not used: the caption describes the image alone.
    Offline, a hub id works only when it is in the local cache; a folder always works.
    """

    def __init__(self, model_ref: str, *, max_new_tokens: int = 40) -> None:
        self.spec = f"hf:{model_ref}"
        self._ref = model_ref
        self._max_new_tokens = max_new_tokens
        self._lock = threading.Lock()
        self._model: Any = None
        self._image_processor: Any = None
        self._tokenizer: Any = None

    def load(self) -> None:
        """Load the model now (raises :class:`ModelSpecError` with the reason when it cannot be loaded)."""
        with self._lock:
            self._load_locked()

    def _load_locked(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

        try:
            model = AutoModelForImageTextToText.from_pretrained(self._ref)
            self._image_processor = AutoImageProcessor.from_pretrained(self._ref)
            self._tokenizer = AutoTokenizer.from_pretrained(self._ref)
        except (OSError, ValueError, KeyError) as error:
            raise ModelSpecError(
                f"cannot load vision model {self._ref!r}: {error}. Give a local folder saved with "
                "save_pretrained (hub ids work offline only when already cached)."
            ) from error
        model.eval()
        self._model = model
        log.info("vision_model_loaded", spec=self.spec, model=type(model).__name__)

    def _caption(self, image: bytes) -> str:
        import torch

        picture = _open_rgb(image)
        with self._lock:
            self._load_locked()
            pixel_values = self._image_processor(images=picture, return_tensors="pt").pixel_values
            with torch.inference_mode():
                output = self._model.generate(
                    pixel_values=pixel_values.to(self._model.dtype),
                    max_new_tokens=self._max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                )
        return _tidy(self._tokenizer.decode(output[0], skip_special_tokens=True))

    async def describe(self, image: bytes, post_text: str) -> CaptionResult | None:
        text = await asyncio.to_thread(self._caption, image)
        return CaptionResult(text=text, source=CaptionSource.MODEL) if text else None


def _data_uri(image: bytes) -> str:
    with Image.open(io.BytesIO(image)) as opened:
        mime = Image.MIME.get(opened.format or "", "image/png")
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def caption_messages(image: bytes, post_text: str) -> list[BaseMessage]:
    """MIKO's caption prompt (prompts/caption.txt) with the image attached to the last user message."""
    rendered = load_prompts().templates["caption"].render(text=post_text[:MAX_POST_CHARS_IN_PROMPT])
    last_user = max(index for index, (role, _) in enumerate(rendered) if role == "user")
    messages: list[BaseMessage] = []
    for index, (role, text) in enumerate(rendered):
        if role == "system":
            messages.append(SystemMessage(content=text))
        elif role == "assistant":
            messages.append(AIMessage(content=text))
        elif index == last_user:
            image_part = {"type": "image_url", "image_url": {"url": _data_uri(image)}}
            messages.append(HumanMessage(content=[{"type": "text", "text": text}, image_part]))
        else:
            messages.append(HumanMessage(content=text))
    return messages


class OpenAICaptioner:
    """An OpenAI-compatible chat model that accepts images (``image_url`` content parts with a data: URI)."""

    def __init__(
        self,
        model: str,
        base_url: str,
        *,
        api_key: str | None = None,
        max_tokens: int = 200,
        timeout_s: float = 60.0,
    ) -> None:
        from langchain_openai import ChatOpenAI

        self.spec = f"openai:{model}@{without_credentials(base_url)}"
        self._chat = ChatOpenAI(
            model=model,
            base_url=base_url,
            api_key=api_key or "not-needed",  # local servers ignore the key but the client requires one
            temperature=0,
            max_tokens=max_tokens,
            timeout=timeout_s,
            max_retries=1,
            use_responses_api=False,
        )

    async def describe(self, image: bytes, post_text: str) -> CaptionResult | None:
        response = await self._chat.ainvoke(caption_messages(image, post_text))
        text = _tidy(response.text)
        return CaptionResult(text=text, source=CaptionSource.MODEL) if text else None
