"""A scripted, deterministic chat model for graph-logic tests and overhead benchmarks.

It recognises the project's three prompts (extract, generate, verify; see ``prompts/*.txt``) and answers each
in the shape a real model would, with words taken from the post and choices made by a stable hash, so the
same input always gives the same output across processes. ``fake:<ms>`` adds latency per call with
``asyncio.sleep`` so concurrency behaves as with a remote model. Tests can override outputs (``script``) and
inject failures (``errors``, raised in order by the first calls).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import Field

from graph.models.base import Reply
from graph.models.spec import CallOptions, call_options
from graph.parsing import parse_yes_no
from prompts import load_prompts

PromptKind = Literal["extract", "generate", "verify", "other"]

_STOPWORDS = frozenset(
    """a an and are as at be but by for from has have i im i'm in is it its it's just me my of on or our so
    that the this to too was we were what when with you your user none image post""".split()  # noqa: SIM905
)
_EMOTIONS = ("joy", "excitement", "pride", "frustration", "gratitude", "surprise", "calm", "amusement")
_COMPLETIONS: dict[str, tuple[str, ...]] = {
    "xWant": ("share {topic} with friends", "hear what others think about {topic}", "celebrate {topic}"),
    "oEffect": ("reply with their own {topic} stories", "share the post about {topic}", "like the post"),
    "xAttr": ("excited about {topic}", "proud of {topic}", "curious about {topic}"),
    "xIntent": ("show others {topic}", "start a conversation about {topic}", "remember {topic}"),
    "xReact": ("happy", "proud", "relieved", "excited"),
    "oReact": ("amused", "inspired", "curious", "happy for the user"),
    "oWant": ("learn more about {topic}", "congratulate the user", "try {topic} themselves"),
    "xEffect": ("get comments about {topic}", "receive likes", "feel closer to friends"),
    "xNeed": ("experience {topic}", "take a photo of {topic}", "think about {topic}"),
    "Open": ("they wanted to talk about {topic}", "{topic} mattered to them", "they enjoyed {topic}"),
}
_PIECE = re.compile(r"\s*\S+")
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines cuts
_POST_LINE = re.compile(f"(?:^|(?<=[{_LINE_BREAKS}]))Post:([^{_LINE_BREAKS}]*)")
_GENERIC_COMPLETIONS = ("talk about {topic}", "share {topic}", "enjoy {topic}")


def stable_hash(*parts: str) -> int:
    """A hash that is the same in every process (``hash()`` is salted per process)."""
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.content)


def prompt_kind(messages: Sequence[BaseMessage]) -> PromptKind:
    """Which of the project's prompts this conversation is, from its wording (the system message decides when
    it can: post text is data and must not change the kind)."""
    system = "\n".join(_text(m) for m in messages if isinstance(m, SystemMessage))
    kind = _kind_of_system(system)
    if kind != "other":
        return kind
    everything = "\n".join(_text(m) for m in messages).lower()
    if "answer yes or no" in everything:
        return "verify"
    if "complete the sentence" in everything or _stem_of(messages) is not None:
        return "generate"
    return "other"


@lru_cache(maxsize=64)
def _kind_of_system(system: str) -> PromptKind:
    lowered = system.lower()
    if "answer yes or no" in lowered:
        return "verify"
    if "complete the sentence" in lowered:
        return "generate"
    if "key information" in lowered and "five lines" in lowered:
        return "extract"
    return "other"


def _stem_of(messages: Sequence[BaseMessage]) -> str | None:
    """The relation stem the conversation asks to complete (trailing prefill or a ``Complete:`` line)."""
    if messages and isinstance(messages[-1], AIMessage):
        stem = _stem_starting(_text(messages[-1]).strip())
        if stem is not None:
            return stem
    for message in messages:
        for line in _text(message).splitlines():
            if line.startswith("Complete:") and (stem := _stem_starting(line[len("Complete:") :].strip(" ."))):
                return stem
    return None


def _stem_starting(candidate: str) -> str | None:
    for stem in _stems_longest_first():
        if candidate.startswith(stem):
            return stem
    return None


@lru_cache(maxsize=1)
def _stems_longest_first() -> tuple[str, ...]:
    return tuple(sorted((relation.stem for relation in load_prompts().relations), key=len, reverse=True))


def _post_text(messages: Sequence[BaseMessage]) -> str:
    """The rest of the first line that starts with ``Post:`` (lines as ``str.splitlines`` cuts them)."""
    for message in messages:
        text = _text(message)
        if "Post:" in text and (match := _POST_LINE.search(text)):  # the plain test first: it is much cheaper
            return match.group(1).strip()
    return _text(messages[-1]) if messages else ""


@lru_cache(maxsize=4096)
def _words(text: str) -> tuple[str, ...]:
    """Content words in order of appearance (cached: a post's text is in every prompt of the post)."""
    seen: list[str] = []
    for word in re.findall(r"[a-z][a-z']+", text.lower()):
        if word not in _STOPWORDS and word not in seen and len(word) > 2:
            seen.append(word)
    return tuple(seen)


def _topic(words: Sequence[str], salt: int) -> str:
    if not words:
        return "this moment"
    return words[salt % len(words)]


def _extract(post: str) -> str:
    words = _words(post) or ("everyday", "life", "moment")
    h = stable_hash("extract", post)
    pick = lambda i: words[(h + i) % len(words)]  # noqa: E731
    keywords = ", ".join(words[:5] if len(words) >= 3 else [*words, "post", "social"][:3])
    return (
        f"concept: {pick(0)}\n"
        f"action: sharing {pick(1)}\n"
        f"object: {pick(2)}\n"
        f"emotion: {_EMOTIONS[h % len(_EMOTIONS)]}\n"
        f"keywords: {keywords}"
    )


def _relation_of(stem: str | None) -> str | None:
    return _relation_by_stem().get(stem) if stem is not None else None


@lru_cache(maxsize=1)
def _relation_by_stem() -> dict[str, str]:
    return {relation.stem: relation.name for relation in load_prompts().relations}


def _generate(messages: Sequence[BaseMessage]) -> str:
    post = _post_text(messages)
    stem = _stem_of(messages)
    relation = _relation_of(stem) or "other"
    salt = stable_hash("generate", relation, post, _text(messages[-1]) if messages else "")
    options = _COMPLETIONS.get(relation, _GENERIC_COMPLETIONS)
    completion = options[salt % len(options)].format(topic=_topic(_words(post), salt >> 8))
    prefilled = bool(messages) and isinstance(messages[-1], AIMessage) and bool(_text(messages[-1]).strip())
    return f" {completion}." if prefilled else f"{stem or ''} {completion}.".strip()


def fake_yes_probability(messages: Sequence[BaseMessage]) -> float:
    """Deterministic P(yes): mostly high (0.6-0.98), about one in eight low (0.05-0.4)."""
    h = stable_hash("verify", *(_text(m) for m in messages))
    fraction = (h >> 8) % 1000 / 1000
    if h % 8 == 0:
        return round(0.05 + 0.35 * fraction, 4)
    return round(0.6 + 0.38 * fraction, 4)


def scripted_output(messages: Sequence[BaseMessage]) -> str:
    """The fake model's answer for a conversation, before stop strings and the token budget apply."""
    kind = prompt_kind(messages)
    if kind == "extract":
        return _extract(_post_text(messages))
    if kind == "generate":
        return _generate(messages)
    if kind == "verify":
        return "yes" if fake_yes_probability(messages) >= 0.5 else "no"
    return f"ok: {' '.join(_words(_post_text(messages))[:8])}".strip()


def apply_call_options(text: str, options: CallOptions) -> tuple[str, str]:
    """Cut at the first stop string and at ``max_new_tokens`` words (a stand-in for tokens)."""
    cut = -1
    for stop in options.stop:
        at = text.find(stop)
        if at >= 0 and (cut < 0 or at < cut):
            cut = at
    if cut >= 0:
        return text[:cut], "stop"
    if len(text.split()) <= options.max_new_tokens:  # as many words as pieces below, without building them
        return text, "stop"
    pieces = _PIECE.findall(text)
    return "".join(pieces[: options.max_new_tokens]), "length"


@dataclass
class _CallState:
    pending: deque[BaseException]
    calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeChatModel(BaseChatModel):
    """Deterministic chat model; also a :class:`graph.models.base.YesNoScorer`."""

    spec: str = "fake"
    latency_ms: float = 0.0
    max_new_tokens: int = 24
    temperature: float = 0.0
    script: Callable[[list[BaseMessage]], str] | None = Field(default=None, exclude=True)
    """Overrides the scripted output (test hook)."""
    errors: list[BaseException] = Field(default_factory=list, exclude=True)
    """Raised in order by the first calls, one per call (test hook for retry policies)."""

    def model_post_init(self, context: Any, /) -> None:
        # A plain attribute, not a pydantic private one: those cost ~7 us per access, more than a fake answer.
        object.__setattr__(self, "call_state", _CallState(deque(self.errors)))

    @property
    def _llm_type(self) -> str:
        return "miko-fake"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"spec": self.spec, "latency_ms": self.latency_ms}

    @property
    def calls(self) -> int:
        """How many generation or scoring calls were made (errors included)."""
        return self.call_state.calls

    def _next_error(self) -> BaseException | None:
        state: _CallState = self.call_state
        with state.lock:
            state.calls += 1
            return state.pending.popleft() if state.pending else None

    def _options(self, stop: list[str] | None, kwargs: dict[str, Any]) -> CallOptions:
        return call_options(stop, kwargs, max_new_tokens=self.max_new_tokens, temperature=self.temperature)

    def _reply(self, messages: Sequence[BaseMessage], options: CallOptions) -> Reply:
        raw = self.script(list(messages)) if self.script is not None else scripted_output(messages)
        text, finish = apply_call_options(raw, options)
        return Reply(text, finish)

    def _answer(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> ChatResult:
        reply = self._reply(messages, self._options(stop, kwargs))
        prompt_words = sum(len(_text(m).split()) for m in messages)
        usage = {
            "input_tokens": prompt_words,
            "output_tokens": len(reply.text.split()),
            "total_tokens": prompt_words + len(reply.text.split()),
        }
        message = AIMessage(
            content=reply.text,
            usage_metadata=usage,
            response_metadata={"model_name": self.spec, "finish_reason": reply.finish_reason},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    async def acomplete(
        self, conversations: Sequence[Sequence[BaseMessage]], stop: list[str] | None = None, **kwargs: Any
    ) -> list[Reply]:
        """All conversations in one call (one latency, one scripted error), like a batching backend."""
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if (error := self._next_error()) is not None:
            raise error
        options = self._options(stop, kwargs)
        return [self._reply(conversation, options) for conversation in conversations]

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
        if (error := self._next_error()) is not None:
            raise error
        return self._answer(messages, stop, kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if (error := self._next_error()) is not None:
            raise error
        return self._answer(messages, stop, kwargs)

    async def ayes_probability(self, conversations: Sequence[Sequence[BaseMessage]]) -> list[float | None]:
        """Deterministic P(yes) per conversation, after the same latency as one call."""
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        if (error := self._next_error()) is not None:
            raise error
        if self.script is not None:  # a scripted judge answers in text, as a real model would
            return [parse_yes_no(self.script(list(conversation))) for conversation in conversations]
        return [fake_yes_probability(conversation) for conversation in conversations]
