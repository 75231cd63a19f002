"""Local Hugging Face causal LMs behind a LangChain chat model, served by one continuous batcher per model.

The engine (:mod:`graph.models.engine`) owns the tokenizer and the model and runs on the batcher's worker
thread; :class:`LocalChatModel` is the thin ``BaseChatModel`` the graph sees, and many of them may share one
engine, which is what lets the prompts of concurrent posts share model passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import structlog
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from graph.models.base import Reply
from graph.models.batcher import ContinuousBatcher
from graph.models.engine import (
    ChatTurns,
    Completion,
    GenerateRequest,
    LocalRequest,
    LocalResult,
    PromptTooLongError,
    ScoreRequest,
    TransformersEngine,
)
from graph.models.llama_config import is_native_llama
from graph.models.spec import call_options

__all__ = [
    "LocalChatModel",
    "LocalEngineHandle",
    "ModelLoadError",
    "PromptTooLongError",
    "Runtime",
    "chat_turns",
    "load_engine",
]

log = structlog.get_logger(__name__)


class ModelLoadError(OSError):
    """A local model could not be loaded; the message says what to fix."""


def chat_turns(messages: Sequence[BaseMessage]) -> ChatTurns:
    """(role, text) pairs; an empty trailing assistant message is dropped (it prefills nothing)."""
    turns: list[tuple[str, str]] = []
    for message in messages:
        if isinstance(message, SystemMessage):
            role = "system"
        elif isinstance(message, HumanMessage):
            role = "user"
        elif isinstance(message, AIMessage):
            role = "assistant"
        else:
            raise ValueError(f"local models take system, human and AI messages, not {type(message).__name__}")
        content = message.content if isinstance(message.content, str) else message.text
        turns.append((role, content))
    if turns and turns[-1][0] == "assistant" and not turns[-1][1].strip():
        turns.pop()
    return tuple(turns)


# -- loading -------------------------------------------------------------------------------------------------


Runtime = Literal["auto", "native", "transformers"]


def load_engine(
    source: str | Path, *, torch_threads: int | None = None, runtime: Runtime = "auto"
) -> TransformersEngine:
    """Load a model folder (or hub id present in the local cache) in float32 for CPU inference.

    ``auto`` runs plain Llama folders (the default SmolLM2 among them) on the native runtime
    (:mod:`graph.models.llama`, starts in ~1/3 of the time) and everything else on transformers.
    """
    folder = Path(source)
    if runtime == "native" or (runtime == "auto" and is_native_llama(folder)):
        model, tokenizer = _load_native(folder)
    else:
        model, tokenizer = _load_transformers(source)
    try:
        return TransformersEngine(model, tokenizer, torch_threads=torch_threads)
    except ValueError as error:
        raise ModelLoadError(f"cannot use local model {str(source)!r}: {error}") from error


def _load_native(folder: Path) -> tuple[Any, Any]:
    from graph.models.chat_tokenizer import ChatTokenizer
    from graph.models.llama import load_native_llama

    try:
        return load_native_llama(folder), ChatTokenizer.from_folder(folder)
    except Exception as error:  # unsupported config, missing or corrupt files: all mean "fix the folder"
        raise ModelLoadError(
            f"cannot load local model {str(folder)!r} on the native runtime: {error}. "
            "Use a plain Llama folder with model.safetensors and tokenizer.json, or MIKO_LOCAL_RUNTIME=transformers."
        ) from error


def _load_transformers(source: str | Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tqdm bars would interleave with the service's JSON logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    except Exception as error:  # transformers raises OSError, ValueError, hub errors... all mean "fix the path"
        raise ModelLoadError(
            f"cannot load local model {str(source)!r}: {error}. Pass a folder with config.json, tokenizer "
            "and weights (hub downloads are off on this machine), or use the default `smollm2`."
        ) from error
    return model, tokenizer


class LocalEngineHandle:
    """An engine and the continuous batcher in front of it: one per loaded model per process.

    ``max_batch_size`` is the number of generations decoded together (and of prompts scored per pass).
    """

    def __init__(self, engine: TransformersEngine, *, max_batch_size: int, max_wait_ms: float, name: str) -> None:
        self.engine = engine
        self.batcher: ContinuousBatcher[LocalRequest, LocalResult] = ContinuousBatcher(
            engine,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            name=name,
            on_worker_start=engine.on_worker_start,
        )

    def close(self) -> None:
        self.batcher.close()


# -- the chat model ------------------------------------------------------------------------------------------


class LocalChatModel(BaseChatModel):
    """A LangChain chat model over a shared local engine; also a :class:`graph.models.base.YesNoScorer`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    spec: str
    handle: LocalEngineHandle
    max_new_tokens: int = 24
    temperature: float = 0.0

    @property
    def _llm_type(self) -> str:
        return "miko-transformers"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"spec": self.spec, "max_new_tokens": self.max_new_tokens, "temperature": self.temperature}

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> GenerateRequest:
        options = call_options(stop, kwargs, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        return GenerateRequest(chat_turns(messages), options)

    def _result(self, completion: LocalResult) -> ChatResult:
        assert isinstance(completion, Completion)
        message = AIMessage(
            content=completion.text,
            usage_metadata={
                "input_tokens": completion.prompt_tokens,
                "output_tokens": completion.completion_tokens,
                "total_tokens": completion.prompt_tokens + completion.completion_tokens,
            },
            response_metadata={"model_name": self.spec, "finish_reason": completion.finish_reason},
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(self.handle.batcher.run(self._request(messages, stop, kwargs)))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return self._result(await self.handle.batcher.arun(self._request(messages, stop, kwargs)))

    async def acomplete(
        self, conversations: Sequence[Sequence[BaseMessage]], stop: list[str] | None = None, **kwargs: Any
    ) -> list[Reply]:
        """Every conversation straight into the engine's batch (no LangChain run per prompt)."""
        options = call_options(stop, kwargs, max_new_tokens=self.max_new_tokens, temperature=self.temperature)
        requests = [GenerateRequest(chat_turns(c), options) for c in conversations]
        completions = await asyncio.gather(*(self.handle.batcher.arun(r) for r in requests))
        return [Reply(c.text, c.finish_reason) for c in completions]  # type: ignore[union-attr]

    async def ayes_probability(self, conversations: Sequence[Sequence[BaseMessage]]) -> list[float | None]:
        """P(yes) from next-token logits, computed in the same passes as the prompts of generations."""
        futures = [self.handle.batcher.arun(ScoreRequest(chat_turns(c))) for c in conversations]
        return list(await asyncio.gather(*futures))  # type: ignore[arg-type]
