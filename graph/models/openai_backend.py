"""OpenAI-compatible HTTP models (vLLM, Ollama, llama.cpp server, TGI, OpenAI) via langchain-openai.

The server batches for us, so what matters is keeping many requests in flight: every call waits on a bounded
semaphore (``max_concurrency``) and the HTTP pool is sized to match. ``max_tokens`` is sent as such (not as
OpenAI's newer ``max_completion_tokens``, which several compatible servers ignore). A trailing assistant
message is a prefill: sent as the last assistant message, and, with ``continue_final_message`` (vLLM), the
server is asked to continue it rather than start a new turn. Yes/no scoring reads ``top_logprobs`` of a single
generated token when the server offers logprobs, and answers None when it does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import weakref
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import openai
import structlog
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from langchain_openai.chat_models.base import BaseChatOpenAI
from pydantic import PrivateAttr

log = structlog.get_logger(__name__)

TOP_LOGPROBS = 10


def _drop_empty_prefill(messages: Sequence[BaseMessage]) -> list[BaseMessage]:
    messages = list(messages)
    if messages and isinstance(messages[-1], AIMessage) and not messages[-1].text.strip():
        messages.pop()
    return messages


def yes_probability_from_logprobs(logprobs: dict[str, Any] | None) -> float | None:
    """P(yes) / (P(yes) + P(no)) over the first token's ``top_logprobs``; None when neither is there."""
    content = (logprobs or {}).get("content") or []
    if not content:
        return None
    candidates = content[0].get("top_logprobs") or [content[0]]
    yes = no = 0.0
    for candidate in candidates:
        word = str(candidate.get("token", "")).strip().lower()
        if word in ("yes", "no"):
            probability = math.exp(float(candidate.get("logprob", -math.inf)))
            if word == "yes":
                yes += probability
            else:
                no += probability
    return yes / (yes + no) if yes + no > 0 else None


class OpenAICompatibleChatModel(BaseChatOpenAI):
    """``BaseChatOpenAI`` with bounded in-flight requests, prefill handling and yes/no scoring."""

    spec: str = ""
    max_concurrency: int = 32
    continue_final_message: bool = False
    """Ask the server (vLLM) to continue a trailing assistant message instead of answering after it."""

    _async_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = PrivateAttr(
        default_factory=weakref.WeakKeyDictionary
    )
    _sync_gate: threading.BoundedSemaphore | None = PrivateAttr(default=None)
    _gate_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)
    _logprobs_offered: bool | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "miko-openai-compatible"

    @property
    def logprobs_offered(self) -> bool | None:
        """None until a scoring call has shown whether the server returns logprobs."""
        return self._logprobs_offered

    @contextlib.asynccontextmanager
    async def _gate(self) -> AsyncIterator[None]:
        """At most ``max_concurrency`` requests in flight per event loop (semaphores belong to one loop)."""
        loop = asyncio.get_running_loop()
        with self._gate_lock:
            gate = self._async_gates.get(loop)
            if gate is None:
                gate = self._async_gates[loop] = asyncio.Semaphore(self.max_concurrency)
        async with gate:
            yield

    @contextlib.contextmanager
    def _sync_gated(self) -> Iterator[None]:
        with self._gate_lock:
            if self._sync_gate is None:
                self._sync_gate = threading.BoundedSemaphore(self.max_concurrency)
            gate = self._sync_gate
        with gate:
            yield

    def _call_kwargs(self, messages: Sequence[BaseMessage], kwargs: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(kwargs)
        if "max_new_tokens" in kwargs:
            kwargs["max_tokens"] = kwargs.pop("max_new_tokens")
        if self.continue_final_message and messages and isinstance(messages[-1], AIMessage):
            extra = dict(kwargs.get("extra_body") or {})
            extra.update({"continue_final_message": True, "add_generation_prompt": False})
            kwargs["extra_body"] = extra
        return kwargs

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        messages = _drop_empty_prefill(messages)
        with self._sync_gated():
            return super()._generate(messages, stop, run_manager, **self._call_kwargs(messages, kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        messages = _drop_empty_prefill(messages)
        async with self._gate():
            return await super()._agenerate(messages, stop, run_manager, **self._call_kwargs(messages, kwargs))

    async def _yes_probability(self, conversation: Sequence[BaseMessage]) -> float | None:
        if self._logprobs_offered is False:
            return None
        try:
            answer = await self.ainvoke(
                list(conversation), max_tokens=1, temperature=0, logprobs=True, top_logprobs=TOP_LOGPROBS
            )
        except openai.BadRequestError as error:
            log.warning("logprobs_refused", model=self.spec, error=str(error)[:200])
            self._logprobs_offered = False
            return None
        logprobs = answer.response_metadata.get("logprobs")
        if not logprobs:
            log.info("logprobs_not_offered", model=self.spec)
            self._logprobs_offered = False
            return None
        self._logprobs_offered = True
        return yes_probability_from_logprobs(logprobs)

    async def ayes_probability(self, conversations: Sequence[Sequence[BaseMessage]]) -> list[float | None]:
        """P(yes) from one-token ``top_logprobs`` per conversation; None where the server gives none."""
        return list(await asyncio.gather(*(self._yes_probability(c) for c in conversations)))


def build_openai_model(
    *,
    spec: str,
    model: str,
    base_url: str | None,
    api_key: str | None,
    max_concurrency: int,
    max_new_tokens: int,
    temperature: float,
    timeout_s: float,
    continue_final_message: bool,
) -> OpenAICompatibleChatModel:
    """A model whose HTTP pool matches its concurrency bound; servers like vLLM need only a dummy API key."""
    import os

    import httpx

    limits = httpx.Limits(max_connections=max_concurrency, max_keepalive_connections=max_concurrency)
    return OpenAICompatibleChatModel(
        spec=spec,
        model=model,
        base_url=base_url,
        api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
        max_tokens=max_new_tokens,
        temperature=temperature,
        timeout=timeout_s,
        max_concurrency=max_concurrency,
        continue_final_message=continue_final_message,
        http_client=httpx.Client(limits=limits, timeout=timeout_s),
        http_async_client=httpx.AsyncClient(limits=limits, timeout=timeout_s),
    )
