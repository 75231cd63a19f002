"""The local model's engine: continuous batching of generation and yes/no scoring on one causal LM.

:class:`LocalEngine` is a :class:`graph.models.local.batcher.Stepper`, driven from the batcher's one worker
thread. ``start`` renders the newcomers' chats (a trailing assistant message is a *prefill* the model
continues), runs all their prompts in one pass (prompts that share a prefix run it once, see
:mod:`graph.models.local.prefix`), answers scoring requests from that pass's next-token logits and moves generation
requests into the running batch (:mod:`graph.models.local.slots`). ``step`` decodes one token for every running
row; a row leaves the batch at EOS, at its own token budget or when one of its stop strings appears.
Greedy and sampled rows share steps (sampling is per row).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import structlog

from graph.models.local.batcher import Running
from graph.models.local.prefill import PassResult, run_prompts
from graph.models.local.prefix import PrefixCache, SharingPolicy
from graph.models.spec import CallOptions

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from graph.models.local.chat_tokenizer import ChatTokenizer
    from graph.models.local.llama import NativeLlama

    CausalLM = PreTrainedModel | NativeLlama
    AnyTokenizer = PreTrainedTokenizerBase | ChatTokenizer

log = structlog.get_logger(__name__)

YES_VARIANTS = (" yes", "yes", " Yes", "Yes", " YES", "YES")
NO_VARIANTS = (" no", "no", " No", "No", " NO", "NO")


class PromptTooLongError(ValueError):
    """The rendered prompt does not fit the model's context; shorten the post text (see InputLimits)."""


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
class FinishedRow:
    """A generation that left the batch: its exact prompt ids, what it asked for, what it produced."""

    prompt: tuple[int, ...]
    options: CallOptions
    completion: Completion


@dataclass(frozen=True)
class CallTrace:
    """One model pass, for benchmarks and metrics (see ``LocalEngine.observer``).

    ``prefill`` passes run new prompts: ``prompt_tokens`` is their length, ``prefill_tokens`` what the model
    actually ran over (shared prefixes once, cached ones not at all, padding excluded) and ``padded_tokens``
    the same with padding. ``decode`` passes run one token for each of ``rows`` running generations.
    ``finished`` lists the generations that completed. ``attention_pairs`` counts the (query, key) pairs of
    real tokens attended (causally), for FLOP counts.
    """

    kind: Literal["prefill", "decode"]
    rows: int
    scored: int
    prompt_tokens: int
    prefill_tokens: int
    finished: tuple[FinishedRow, ...]
    seconds: float
    padded_tokens: int = 0
    attention_pairs: int = 0


CallObserver = Callable[[CallTrace], None]


@dataclass
class _Row:
    """A running generation; ``tokens`` are its new tokens so far, the last one not yet in the cache.

    Rows with stop strings also keep their text so far (``text``, decoded incrementally: ``tokens[:read]``
    are in it, ``tokens[context:read]`` is the window decoded again for context), so that each step decodes
    and searches only what is new.
    """

    handle: int
    prompt: list[int]
    options: CallOptions
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    context: int = 0
    read: int = 0


def _single_token_ids(tokenizer: AnyTokenizer, variants: Sequence[str]) -> list[int]:
    ids: set[int] = set()
    for variant in variants:
        encoded = tokenizer.encode(variant, add_special_tokens=False)
        if len(encoded) == 1:
            ids.add(encoded[0])
    if not ids:  # no single-token spelling: fall back to the first token of the plainest one
        ids.add(tokenizer.encode(variants[0], add_special_tokens=False)[0])
    return sorted(ids)


def _take(rows: torch.Tensor, indices: Sequence[int]) -> torch.Tensor:
    import torch

    return rows.index_select(0, torch.tensor(indices, dtype=torch.long))


def _first_stop(text: str, stops: Sequence[str], start: int) -> int:
    """Where the earliest stop string in ``text[start:]`` begins, or -1."""
    return min((i for i in (text.find(stop, start) for stop in stops) if i >= 0), default=-1)


def _as_list(value: int | list[int] | None) -> list[int]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


DEFAULT_SHARING = SharingPolicy()


def render_prompt(tokenizer: AnyTokenizer, turns: ChatTurns) -> list[int]:
    """The token ids the model sees for a conversation; a trailing assistant turn is continued (a prefill).

    `distill generator` trains on exactly these ids, so the student learns the prompts it will be served.
    """
    if not turns:
        raise ValueError("empty conversation")
    prefill = turns[-1][0] == "assistant"
    chat = [{"role": role, "content": text} for role, text in turns]
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(
            chat, tokenize=False, add_generation_prompt=not prefill, continue_final_message=prefill
        )
    else:  # a base model without a template: a plain transcript
        text = "".join(f"{role}: {content}\n" for role, content in turns)
        text = text.rstrip("\n") if prefill else text + "assistant:"
    return tokenizer.encode(text, add_special_tokens=False)


class LocalEngine:
    """Continuous batching over one model and tokenizer; every method runs on the batcher's worker thread."""

    def __init__(
        self,
        model: CausalLM,
        tokenizer: AnyTokenizer,
        *,
        torch_threads: int | None = None,
        sharing: SharingPolicy | None = DEFAULT_SHARING,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.torch_threads = torch_threads or len(os.sched_getaffinity(0))
        eos = {tokenizer.eos_token_id, *_as_list(model.generation_config.eos_token_id)}
        self.eos_ids = sorted(i for i in eos if i is not None)
        if not self.eos_ids:
            raise ValueError("the tokenizer and generation config name no EOS token; set eos_token")
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.eos_ids[0]
        self.max_positions: int | None = getattr(model.config, "max_position_embeddings", None)
        self.precision = "bf16" if str(model.dtype) == "torch.bfloat16" else "fp32"
        """What the weights' matrix products run in (see :mod:`graph.models.local.precision`)."""
        self.yes_ids = _single_token_ids(tokenizer, YES_VARIANTS)
        self.no_ids = _single_token_ids(tokenizer, NO_VARIANTS)
        self.sharing = sharing
        """Run prompts that share a prefix over it once (None: every prompt in full)."""
        self.prefix_cache = (
            PrefixCache(int(sharing.cache_mb * 2**20)) if sharing is not None and sharing.cache_mb > 0 else None
        )
        self.observer: CallObserver | None = None
        """Called after every model pass; must be quick and must not raise."""
        self.generate_calls = 0
        self.score_calls = 0
        self.decode_steps = 0
        from graph.models.local.slots import slot_cache_for  # imports torch: only once a model is loaded

        self._slots = slot_cache_for(model, model.config.get_text_config().num_hidden_layers)
        from graph.models.local.llama import NativeLlama

        self._step_options = {"exact_logits": False} if isinstance(model, NativeLlama) else {}
        """Decode steps only pick tokens: the native model may run its output head in bf16 for them."""
        self._rows: list[_Row] = []  # row i lives in slot i
        self._handles = itertools.count()

    def on_worker_start(self) -> None:
        """Set torch's thread count in the thread that runs the model (OpenMP settings are per thread)."""
        import torch

        torch.set_num_threads(self.torch_threads)

    # -- rendering -----------------------------------------------------------------------------------------

    def render(self, turns: ChatTurns) -> list[int]:
        return render_prompt(self.tokenizer, turns)

    def _prepare(self, request: LocalRequest) -> list[int]:
        ids = self.render(request.turns)
        budget = request.options.max_new_tokens if isinstance(request, GenerateRequest) else 1
        if self.max_positions is not None and len(ids) + budget > self.max_positions:
            raise PromptTooLongError(
                f"prompt of {len(ids)} tokens + {budget} new tokens exceeds the model's context of "
                f"{self.max_positions} tokens; shorten the post text (MIKO_MAX_TEXT_CHARS)"
            )
        return ids

    # -- the Stepper protocol --------------------------------------------------------------------------------

    @property
    def live(self) -> int:
        return len(self._rows)

    def needs_slot(self, request: LocalRequest) -> bool:
        return isinstance(request, GenerateRequest)

    def start(self, requests: Sequence[LocalRequest]) -> list[LocalResult | BaseException | Running]:
        """One pass over the newcomers' prompts: scores are answered, generations join the running batch."""
        import torch

        started = time.perf_counter()
        outcomes: list[LocalResult | BaseException | Running] = [None] * len(requests)
        ready: list[tuple[int, list[int]]] = []
        for index, request in enumerate(requests):
            try:
                ready.append((index, self._prepare(request)))
            except Exception as error:
                outcomes[index] = error
        if not ready:
            return outcomes
        rows = [ids for _, ids in ready]
        with torch.inference_mode():
            result = run_prompts(self.model, rows, self.pad_id, self.sharing, self.prefix_cache)
            logits = result.logits
            generating: list[tuple[int, int, GenerateRequest]] = []
            scoring: list[tuple[int, int]] = []
            for n, (index, _) in enumerate(ready):
                request = requests[index]
                if isinstance(request, GenerateRequest):
                    generating.append((n, index, request))
                else:
                    scoring.append((n, index))
            scores = self._yes_probability(_take(logits, [n for n, _ in scoring]))
            for (_, index), score in zip(scoring, scores, strict=True):
                outcomes[index] = score
            new_rows = [_Row(next(self._handles), rows[n], request.options) for n, _, request in generating]
            first = self._sample(_take(logits, [n for n, _, _ in generating]), [row.options for row in new_rows])
            finished: list[FinishedRow] = []
            joining: list[tuple[_Row, int]] = []
            for (n, index, _), row, token in zip(generating, new_rows, first, strict=True):
                row.tokens.append(token)
                completion = self._finished(row)
                if completion is not None:
                    outcomes[index] = completion
                    finished.append(FinishedRow(tuple(row.prompt), row.options, completion))
                else:
                    outcomes[index] = Running(row.handle)
                    joining.append((row, n))
            self._join(joining, result)
        self.generate_calls += bool(generating)
        self.score_calls += bool(scoring)
        self._notify(
            "prefill", len(rows), len(scoring), sum(map(len, rows)), result.prefill_tokens, finished, started,
            result.padded_tokens, result.attention_pairs,
        )  # fmt: skip
        return outcomes

    def step(self) -> list[tuple[Hashable, LocalResult]]:
        """Decode one token for every running row; rows that finish leave the batch."""
        import torch

        started = time.perf_counter()
        self.decode_steps += 1
        rows = len(self._rows)
        pairs = sum(self._slots.lengths) + rows  # each new token attends its row's cache and itself
        with torch.inference_mode():
            position_ids, mask = self._slots.begin_step()
            tokens = torch.tensor([[row.tokens[-1]] for row in self._rows], dtype=torch.long)
            try:
                logits = self.model(
                    input_ids=tokens,
                    attention_mask=mask,
                    position_ids=position_ids,
                    cache=self._slots,
                    use_cache=True,
                    logits_to_keep=1,
                    **self._step_options,
                ).logits[:, -1, :]
            finally:
                self._slots.end_step()
            for row, token in zip(self._rows, self._sample(logits, [r.options for r in self._rows]), strict=True):
                row.tokens.append(token)
            results: list[tuple[Hashable, LocalResult]] = []
            finished: list[FinishedRow] = []
            for slot in range(len(self._rows) - 1, -1, -1):  # backwards: removing moves the last row into `slot`
                row = self._rows[slot]
                completion = self._finished(row)
                if completion is None:
                    continue
                results.append((row.handle, completion))
                finished.append(FinishedRow(tuple(row.prompt), row.options, completion))
                self._slots.remove(slot)
                self._rows[slot] = self._rows[-1]
                self._rows.pop()
        self._notify("decode", rows, 0, 0, 0, finished, started, attention_pairs=pairs)
        return results

    def abandon(self) -> None:
        self._rows.clear()
        self._slots.clear()

    # -- passes ----------------------------------------------------------------------------------------------

    def _join(self, joining: Sequence[tuple[_Row, int]], result: PassResult) -> None:
        """Move rows of a pass (their keys/values without padding) into new slots: all of them or none."""
        before = len(self._rows)
        try:
            for row, n in joining:
                self._slots.add(result.kv(n))
                self._rows.append(row)
        except BaseException:
            while len(self._rows) > before:
                self._slots.remove(len(self._rows) - 1)
                self._rows.pop()
            raise

    def _yes_probability(self, logits: torch.Tensor) -> list[float | None]:
        """P(yes) / (P(yes) + P(no)) from next-token logits, in fp32 whatever the model's precision.

        Only the yes/no logits matter (the softmax's normaliser cancels), so it is computed from them alone.
        """
        import torch

        if logits.shape[0] == 0:
            return []
        logits = logits.float()
        yes = torch.logsumexp(logits[:, self.yes_ids], dim=-1)
        no = torch.logsumexp(logits[:, self.no_ids], dim=-1)
        probability = torch.sigmoid(yes - no)
        return [None if p != p else float(p) for p in probability.tolist()]

    def _sample(self, logits: torch.Tensor, options: Sequence[CallOptions]) -> list[int]:
        """Greedy rows take the argmax; rows with a temperature sample from the tempered distribution (fp32).

        Decode steps may hand bf16 logits: argmax needs no fp32 copy of them (the conversion is exact anyway).
        """
        import torch

        if logits.shape[0] == 0:
            return []
        tokens = logits.argmax(-1)
        hot = [i for i, o in enumerate(options) if o.temperature > 0]
        if hot:
            temperatures = torch.tensor([options[i].temperature for i in hot], dtype=torch.float32)
            probs = torch.softmax(logits[hot].float() / temperatures[:, None], dim=-1)
            tokens[hot] = torch.multinomial(probs, 1).squeeze(-1)
        return tokens.tolist()

    def _finished(self, row: _Row) -> Completion | None:
        """The completion if ``row`` is done: EOS, its budget, or a stop string in its text."""
        if row.tokens[-1] in self.eos_ids:
            return self._completion(row, row.tokens[:-1], "stop")
        if row.options.stop and self._stop_in_new_text(row):
            text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
            cut = _first_stop(text, row.options.stop, 0)
            return self._completion(row, row.tokens, "stop", text[:cut] if cut >= 0 else row.text)
        if len(row.tokens) >= row.options.max_new_tokens:
            return self._completion(row, row.tokens, "length")
        return None

    def _stop_in_new_text(self, row: _Row) -> bool:
        """Decode the row's new tokens onto ``row.text`` and look for a stop string ending in the new part.

        Earlier steps searched everything before, so only the last ``longest stop - 1`` old characters and the
        new ones need searching; on a hit ``row.text`` is cut before the stop.
        """
        decode = self.tokenizer.decode
        window = decode(row.tokens[row.context : row.read], skip_special_tokens=True)
        extended = decode(row.tokens[row.context :], skip_special_tokens=True)
        if len(extended) <= len(window) or extended.endswith("\ufffd"):  # nothing new, or half a character
            return False
        start = len(row.text)
        row.text += extended[len(window) :]
        row.context, row.read = row.read, len(row.tokens)
        longest = max(len(stop) for stop in row.options.stop)
        cut = _first_stop(row.text, row.options.stop, max(0, start - longest + 1))
        if cut < 0:
            return False
        row.text = row.text[:cut]
        return True

    def _completion(self, row: _Row, tokens: list[int], finish: str, text: str | None = None) -> Completion:
        if text is None:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Completion(text, len(row.prompt), len(tokens), finish)

    def _notify(
        self,
        kind: Literal["prefill", "decode"],
        rows: int,
        scored: int,
        prompt_tokens: int,
        prefill_tokens: int,
        finished: Sequence[FinishedRow],
        started: float,
        padded_tokens: int = 0,
        attention_pairs: int = 0,
    ) -> None:
        if self.observer is None:
            return
        seconds = time.perf_counter() - started
        trace = CallTrace(
            kind, rows, scored, prompt_tokens, prefill_tokens, tuple(finished), seconds, padded_tokens, attention_pairs
        )
        try:
            self.observer(trace)
        except Exception as error:  # an observer bug must not fail the callers' requests
            log.warning("engine_observer_failed", error=repr(error))
