"""Local Hugging Face causal LMs behind a LangChain chat model, served through one micro-batcher per model.

:class:`TransformersEngine` owns the tokenizer and the model and runs whole batches on the batcher's worker
thread: chat-template rendering (a trailing assistant message is a *prefill* that the model continues),
left-padded ``generate`` with per-row budgets and stop strings, and yes/no scoring from next-token logits.
:class:`LocalChatModel` is the thin ``BaseChatModel`` the graph sees; many of them may share one engine.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict

from graph.models.batcher import MicroBatcher
from graph.models.prefix import (
    PrefixCache,
    PrefixPlan,
    SharingPolicy,
    left_pad,
    plan_prefixes,
    positions,
    prefill_prefixes,
)
from graph.models.spec import CallOptions, call_options

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

log = structlog.get_logger(__name__)

YES_VARIANTS = (" yes", "yes", " Yes", "Yes", " YES", "YES")
NO_VARIANTS = (" no", "no", " No", "No", " NO", "NO")


class PromptTooLongError(ValueError):
    """The rendered prompt does not fit the model's context; shorten the post text (see InputLimits)."""


class ModelLoadError(OSError):
    """A local model could not be loaded; the message says what to fix."""


# -- requests and results (plain data, so they cross threads safely) ---------------------------------------

ChatTurns = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class GenerateRequest:
    turns: ChatTurns
    options: CallOptions


@dataclass(frozen=True)
class ScoreRequest:
    turns: ChatTurns


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str


LocalRequest = GenerateRequest | ScoreRequest
LocalResult = Completion | float | None


@dataclass(frozen=True)
class CallTrace:
    """One model call as the engine ran it, for benchmarks and metrics (see ``TransformersEngine.observer``).

    ``prompts`` are the exact token ids; ``completions`` is empty for scoring calls; ``prefill_tokens`` counts
    the prompt tokens the model actually ran over (shared prefixes once, padding excluded).
    """

    kind: str
    prompts: tuple[tuple[int, ...], ...]
    options: tuple[CallOptions, ...]
    completions: tuple[Completion, ...]
    prefill_tokens: int
    seconds: float


CallObserver = Callable[[CallTrace], None]


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


# -- the engine ----------------------------------------------------------------------------------------------


def _single_token_ids(tokenizer: PreTrainedTokenizerBase, variants: Sequence[str]) -> list[int]:
    ids: set[int] = set()
    for variant in variants:
        encoded = tokenizer.encode(variant, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    if not ids:  # no single-token spelling: fall back to the first token of the plainest one
        ids.add(tokenizer.encode(variants[0], add_special_tokens=False)[0])
    return sorted(ids)


DEFAULT_SHARING = SharingPolicy()


class TransformersEngine:
    """Runs batches of generation and scoring requests on one model; used from one worker thread only."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        torch_threads: int | None = None,
        sharing: SharingPolicy | None = DEFAULT_SHARING,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.torch_threads = torch_threads or len(os.sched_getaffinity(0))
        self.sharing = sharing
        """Prefill prompts that share a prefix once per batch (None: every row in full)."""
        self.prefix_cache = (
            PrefixCache(int(sharing.cache_mb * 2**20)) if sharing is not None and sharing.cache_mb > 0 else None
        )
        self.observer: CallObserver | None = None
        """Called on the worker thread after every model call; must be quick and must not raise."""
        eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
        self.eos_ids = sorted(i for i in eos if i is not None)
        if not self.eos_ids:
            raise ModelLoadError("the tokenizer and generation config name no EOS token; set eos_token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self.yes_ids = _single_token_ids(tokenizer, YES_VARIANTS)
        self.no_ids = _single_token_ids(tokenizer, NO_VARIANTS)
        self.generate_calls = 0
        self.score_calls = 0

    @staticmethod
    def batch_key(request: LocalRequest) -> Hashable:
        """Which requests share a model call: scoring passes apart from generation, and generation by
        temperature and token-budget band (a 24-token row must not wait in a decode loop for a 72-token one).
        """
        if isinstance(request, ScoreRequest):
            return ("score",)
        budget_band = max(0, ((request.options.max_new_tokens - 1).bit_length() - 4) // 2)  # <=32, <=128, ...
        return ("generate", request.options.temperature, budget_band)

    def on_worker_start(self) -> None:
        """Set torch's thread count in the thread that runs the model (OpenMP settings are per thread)."""
        import torch

        torch.set_num_threads(self.torch_threads)

    # rendering

    def render(self, turns: ChatTurns) -> list[int]:
        if not turns:
            raise ValueError("empty conversation")
        prefill = turns[-1][0] == "assistant"
        chat = [{"role": role, "content": text} for role, text in turns]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(
                chat, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
            )
        else:  # a base model without a template: a plain transcript
            text = "".join(f"{role}: {content}\n" for role, content in turns)
            text = text.rstrip("\n") if prefill else text + "assistant:"
        return self.tokenizer.encode(text, add_special_tokens=False)

    def _prepare(self, turns: ChatTurns, budget: int) -> list[int]:
        ids = self.render(turns)
        if self.max_positions is not None and len(ids) + budget > self.max_positions:
            raise PromptTooLongError(
                f"prompt of {len(ids)} tokens + {budget} new tokens exceeds the model's context of "
                f"{self.max_positions} tokens; shorten the post text (MIKO_MAX_TEXT_CHARS)"
            )
        return ids

    # batches

    def run_batch(self, requests: Sequence[LocalRequest]) -> list[LocalResult | BaseException]:
        """Results in request order; a request that cannot be prepared gets its own exception."""
        import torch

        results: list[LocalResult | BaseException] = [None] * len(requests)
        generate_groups: dict[float, list[tuple[int, list[int], CallOptions]]] = {}
        scores: list[tuple[int, list[int]]] = []
        for index, request in enumerate(requests):
            try:
                if isinstance(request, GenerateRequest):
                    ids = self._prepare(request.turns, request.options.max_new_tokens)
                    group = generate_groups.setdefault(request.options.temperature, [])
                    group.append((index, ids, request.options))
                else:
                    scores.append((index, self._prepare(request.turns, 1)))
            except Exception as error:
                results[index] = error
        with torch.inference_mode():
            if scores:
                for (index, _), value in zip(scores, self._score([ids for _, ids in scores]), strict=True):
                    results[index] = value
            for temperature, group in generate_groups.items():
                completions = self._generate(
                    [ids for _, ids, _ in group], [o for _, _, o in group], temperature
                )
                for (index, _, _), completion in zip(group, completions, strict=True):
                    results[index] = completion
        return results

    def _plan(self, rows: Sequence[list[int]]) -> PrefixPlan | None:
        """A shared-prefix plan when some rows share one, else None (plain left-padded batch)."""
        if self.sharing is None or len(rows) < 2:
            return None
        plan = plan_prefixes(rows, self.sharing, self.prefix_cache)
        return plan if plan.worthwhile else None

    def _notify(
        self,
        kind: str,
        rows: Sequence[list[int]],
        plan: PrefixPlan | None,
        started: float,
        options: Sequence[CallOptions] = (),
        completions: Sequence[Completion] = (),
    ) -> None:
        if self.observer is None:
            return
        prefill = plan.prefill_tokens if plan is not None else sum(map(len, rows))
        trace = CallTrace(
            kind=kind,
            prompts=tuple(tuple(row) for row in rows),
            options=tuple(options),
            completions=tuple(completions),
            prefill_tokens=prefill,
            seconds=time.perf_counter() - started,
        )
        try:
            self.observer(trace)
        except Exception as error:  # an observer bug must not fail the callers' requests
            log.warning("engine_observer_failed", error=repr(error))

    def _score(self, rows: Sequence[list[int]]) -> list[float | None]:
        """P(yes) / (P(yes) + P(no)) from the next-token distribution, one forward pass for all rows."""
        import torch

        self.score_calls += 1
        started = time.perf_counter()
        plan = self._plan(rows)
        if plan is None:
            ids, mask = left_pad(rows, self.pad_id)
            logits = self.model(
                input_ids=ids, attention_mask=mask, position_ids=positions(mask), logits_to_keep=1
            ).logits
        else:
            shared = prefill_prefixes(self.model, plan, self.pad_id, self.prefix_cache)
            logits = self.model(
                input_ids=shared.suffix_ids,
                attention_mask=shared.attention_mask,
                position_ids=shared.suffix_positions,
                cache=shared.cache(self.model),
                use_cache=True,
                logits_to_keep=1,
            ).logits
        probs = torch.softmax(logits[:, -1, :].float(), dim=-1)
        yes = probs[:, self.yes_ids].sum(-1)
        no = probs[:, self.no_ids].sum(-1)
        total = yes + no
        scores = [float(y / t) if t > 0 else None for y, t in zip(yes.tolist(), total.tolist(), strict=True)]
        self._notify("score", rows, plan, started)
        return scores

    def _generate(
        self, rows: Sequence[list[int]], options: Sequence[CallOptions], temperature: float
    ) -> list[Completion]:
        from transformers import GenerationConfig, StaticCache, StoppingCriteriaList

        self.generate_calls += 1
        started = time.perf_counter()
        plan = self._plan(rows)
        budgets = [o.max_new_tokens for o in options]
        if plan is None:
            ids, mask = left_pad(rows, self.pad_id)
            cache = StaticCache(config=self.model.config, max_cache_len=ids.shape[1] + max(budgets))
        else:
            shared = prefill_prefixes(self.model, plan, self.pad_id, self.prefix_cache)
            ids, mask, cache = shared.input_ids, shared.attention_mask, shared.cache(self.model, max(budgets))
        width = ids.shape[1]
        stops = RowStops(self.tokenizer, width, budgets, [o.stop for o in options], self.eos_ids)
        sampling = temperature > 0
        config = GenerationConfig(
            max_new_tokens=max(budgets),
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=None,
            top_k=None,
            eos_token_id=self.eos_ids,
            pad_token_id=self.pad_id,
        )
        output = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            cache=cache,
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([stops]),
        )
        completions = []
        for i, row in enumerate(output[:, width:].tolist()):
            text, used, finish = self._trim(row[: stops.finished_at[i] or None], budgets[i], options[i].stop)
            completions.append(Completion(text, len(rows[i]), used, finish))
        self._notify("generate", rows, plan, started, options, completions)
        return completions

    def _trim(self, row: list[int], budget: int, stop: Sequence[str]) -> tuple[str, int, str]:
        """Cut one row at its own EOS, budget and stop strings (the batch may have run longer for others).

        ``row`` ends where the row finished, so padding after a stop string is not counted as generated.
        """
        row = row[:budget]
        finish = "length" if len(row) >= budget else "stop"
        for position, token in enumerate(row):
            if token in self.eos_ids:
                row, finish = row[:position], "stop"
                break
        text = self.tokenizer.decode(row, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)
        if cut >= 0:
            text, finish = text[:cut], "stop"
        return text, len(row), finish


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


class RowStops:
    """A per-row ``StoppingCriteria``: a row is done at EOS, at its own budget, or when a stop string appears.

    ``generate`` stops as soon as every row is done, so a batch never decodes past its slowest live row.
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompt_width: int,
        budgets: Sequence[int],
        stops: Sequence[Sequence[str]],
        eos_ids: Sequence[int],
    ) -> None:
        self.tokenizer = tokenizer
        self.prompt_width = prompt_width
        self.budgets = list(budgets)
        self.stops = [tuple(s) for s in stops]
        self.eos_ids = set(eos_ids)
        self.done = [False] * len(self.budgets)
        self.finished_at = [0] * len(self.budgets)
        """How many new tokens each row had when it finished (0: still running when generation ended)."""

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        import torch

        new = input_ids[:, self.prompt_width :]
        produced = new.shape[1]
        for i in range(len(self.done)):
            if self.done[i] or produced == 0:
                continue
            if produced >= self.budgets[i] or int(new[i, -1]) in self.eos_ids:
                self.done[i] = True
            elif self.stops[i]:
                text = self.tokenizer.decode(new[i].tolist(), skip_special_tokens=True)
                self.done[i] = any(stop in text for stop in self.stops[i])
            if self.done[i]:
                self.finished_at[i] = produced
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)


# -- loading -------------------------------------------------------------------------------------------------


def load_engine(source: str | Path, *, torch_threads: int | None = None) -> TransformersEngine:
    """Load a model folder (or hub id present in the local cache) in float32 for CPU inference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tqdm bars would interleave with the service's JSON logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=torch.float32)
    except (
        Exception
    ) as error:  # transformers raises OSError, ValueError, hub errors... all mean "fix the path"
        raise ModelLoadError(
            f"cannot load local model {str(source)!r}: {error}. Pass a folder with config.json, tokenizer "
            "and weights (hub downloads are off on this machine), or use the default `smollm2`."
        ) from error
    return TransformersEngine(model, tokenizer, torch_threads=torch_threads)


class LocalEngineHandle:
    """An engine and the micro-batcher in front of it: one per loaded model per process."""

    def __init__(
        self, engine: TransformersEngine, *, max_batch_size: int, max_wait_ms: float, name: str
    ) -> None:
        self.engine = engine
        self.batcher: MicroBatcher[LocalRequest, LocalResult] = MicroBatcher(
            engine.run_batch,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            name=name,
            on_worker_start=engine.on_worker_start,
            batch_key=engine.batch_key,
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

    def _request(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> GenerateRequest:
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

    async def ayes_probability(self, conversations: Sequence[Sequence[BaseMessage]]) -> list[float | None]:
        """P(yes) from next-token logits, computed in the same micro-batches as generation."""
        futures = [self.handle.batcher.arun(ScoreRequest(chat_turns(c))) for c in conversations]
        return list(await asyncio.gather(*futures))  # type: ignore[arg-type]
