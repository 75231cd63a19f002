"""The LangChain face of a local model: :class:`LocalChatModel`, a thin ``BaseChatModel`` over a shared engine.

Many chat models may share one :class:`graph.models.local.loading.LocalEngineHandle` (engine + continuous
batcher), which is what lets the prompts of concurrent posts share model passes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from graph.models.base import Reply
from graph.models.local.engine import ChatTurns, Completion, GenerateRequest, LocalResult, ScoreRequest
from graph.models.local.loading import LocalEngineHandle
from graph.models.spec import call_options

__all__ = ["LocalChatModel", "chat_turns"]


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
        return "miko-local"

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
