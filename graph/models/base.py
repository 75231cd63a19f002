"""What the graph needs from models, as small protocols, so any backend can be plugged in.

Text models are LangChain chat models (``langchain_core`` ``BaseChatModel``). Two optional abilities are
discovered at run time:

* :class:`YesNoScorer`: the verify node asks for P(yes) read from next-token logits or logprobs, instead of
  parsing generated text. Local transformers models and OpenAI-compatible servers that return logprobs offer it.
* :class:`Captioner`: turns an image into a description (vision model or OCR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from langchain_core.messages import BaseMessage

from graph.contracts import CaptionSource


@runtime_checkable
class YesNoScorer(Protocol):
    """A model that can score a yes/no question without generating text."""

    async def ayes_probability(self, conversations: Sequence[Sequence[BaseMessage]]) -> list[float | None]:
        """P(yes) / (P(yes) + P(no)) for the answer to each conversation; None where it is not available."""
        ...


@dataclass(frozen=True)
class CaptionResult:
    text: str
    source: CaptionSource


class Captioner(Protocol):
    """Describes an image. ``spec`` names the backend in events (e.g. ``ocr``, ``hf:Salesforce/blip``)."""

    spec: str

    async def describe(self, image: bytes, post_text: str) -> CaptionResult | None:
        """A description of the image bytes, or None when the backend finds nothing to say."""
        ...


class ModelSpecError(ValueError):
    """A model spec string that cannot be used; the message says what forms are accepted."""
