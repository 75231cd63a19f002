"""What the graph needs from models, as small protocols, so any backend can be plugged in.

Text models are LangChain chat models (``langchain_core`` ``BaseChatModel``). Three optional abilities are
discovered at run time:

* :class:`BatchCompleter`: completes many conversations in one call without LangChain's per-call machinery
  (run managers, callbacks and pydantic results for every prompt cost more than a fake model's answer and a
  noticeable share of a local model's scheduling). Local and fake models offer it; any other chat model is
  called through ``agenerate`` by :func:`complete`.
* :class:`YesNoScorer`: the verify node asks for P(yes) read from next-token logits or logprobs, instead of
  parsing generated text. Local transformers models and OpenAI-compatible servers that return logprobs offer it.
* :class:`Captioner`: turns an image into a description (vision model or OCR).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from langchain_core.messages import BaseMessage

from graph.contracts import CaptionSource

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel


@dataclass(frozen=True)
class Reply:
    """One completion: its text and why it stopped (``stop``, ``length``, or None when unknown)."""

    text: str
    finish_reason: str | None = None


@runtime_checkable
class BatchCompleter(Protocol):
    """A chat model that completes many conversations in one call, with ``agenerate``'s arguments."""

    async def acomplete(
        self, conversations: Sequence[Sequence[BaseMessage]], stop: list[str] | None = None, **kwargs: Any
    ) -> list[Reply]:
        """One reply per conversation; ``kwargs`` are call options (``max_tokens``, ``temperature``)."""
        ...


async def complete(
    llm: BaseChatModel, conversations: Sequence[Sequence[BaseMessage]], stop: list[str] | None = None, **kwargs: Any
) -> list[Reply]:
    """Replies to ``conversations`` from any chat model: the direct path when it has one, else ``agenerate``."""
    if is_batch_completer(llm):
        return await llm.acomplete(conversations, stop, **kwargs)  # type: ignore[attr-defined]
    result = await llm.agenerate([list(c) for c in conversations], stop=stop, **kwargs)
    replies = []
    for generations in result.generations:
        message = generations[0].message  # type: ignore[attr-defined]
        text = message.content if isinstance(message.content, str) else message.text
        replies.append(Reply(text, message.response_metadata.get("finish_reason")))
    return replies


def is_batch_completer(llm: object) -> bool:
    """``isinstance(llm, BatchCompleter)``, cached per class (protocol checks cost ~5 us on every call)."""
    return _has_method(type(llm), "acomplete")


def is_yes_no_scorer(llm: object) -> bool:
    """``isinstance(llm, YesNoScorer)``, cached per class."""
    return _has_method(type(llm), "ayes_probability")


@lru_cache(maxsize=256)
def _has_method(cls: type, name: str) -> bool:
    return callable(getattr(cls, name, None))


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
