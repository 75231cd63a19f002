"""Model throughput: one post at a time versus many posts in flight versus bare batched ``generate``.

In one process, on the same posts and with the same graph configuration:

* (a) sequential: posts one after another, every model call awaited alone (as MIKO's scripts call their
  model), through a chat model that holds a lock around each call and a batcher of size 1;
* (b) pipeline: up to ``--max-in-flight`` posts at once, their calls sharing the model's continuous batcher
  (shared prompt prefixes, rows joining and leaving the decode batch between steps);
* (c) generate: prompts (token ids) that (b) sent, replayed through bare ``model.generate`` (the same weights
  loaded by transformers) in batches of ``--max-batch-size`` with their token budgets and stop strings, greedy:
  what the model does without any of the pipeline's work around it (at most ``--generate-prompts`` of them,
  at an even stride, to bound the time). (a) and (b) run on the service's local runtime (``--runtime``).

Generated tokens are counted the same way for (b) and (c): new tokens up to EOS, the budget or the token that
completes a stop string. Model FLOP utilisation of (b): the model FLOPs of its prompt passes and decoding steps
(bench/flops.py: 2 x parameters x tokens plus attention) over their time, next to the bf16 and fp32 matrix
product peaks measured in the same run. Cold start runs in fresh interpreters (the first start warms the disk cache, the
last is reported): ``build_chat_model`` to first token, and process start (imports included) to first token.

Run from the project root (targets and results: bench/RESULTS.md):
    python -m bench.throughput --data ../shared/data/mmsd_valid_captioned.jsonl --posts 48 --sequential-posts 2 \
        --llm smollm2
"""

from __future__ import annotations

import os

# OpenMP reads these when torch loads, so they must be set before any import that may load torch.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, get_args

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage
from langchain_core.outputs import ChatResult
from pydantic import ConfigDict, PrivateAttr

from bench.flops import ModelShape, matmul_peak
from graph.contracts import IntentionEvent, Post
from graph.intake import InputLimits, IntakeError, decode_post
from graph.models.local import LocalChatModel, LocalEngineHandle
from graph.models.local.engine import CallTrace, FinishedRow, LocalEngine
from graph.models.local.prefix import PrefixCache
from graph.models.spec import CallOptions
from graph.pipeline import MikoPipeline, PostFailed

# ---------------------------------------------------------------------------------------------- the baseline


class SerialChatModel(BaseChatModel):
    """Awaits every call of the inner model alone, one at a time, like a script that loops over its prompts."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: LocalChatModel
    _async_lock: asyncio.Lock = PrivateAttr(default_factory=asyncio.Lock)
    _thread_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @property
    def _llm_type(self) -> str:
        return f"serial-{self.inner._llm_type}"

    @property
    def spec(self) -> str:
        return self.inner.spec

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        with self._thread_lock:
            return self.inner._generate(messages, stop, **kwargs)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        async with self._async_lock:
            return await self.inner._agenerate(messages, stop, **kwargs)

    async def ayes_probability(self, conversations: Sequence[Sequence[BaseMessage]]) -> list[float | None]:
        scores: list[float | None] = []
        for conversation in conversations:
            async with self._async_lock:
                scores += await self.inner.ayes_probability([conversation])
        return scores


# ---------------------------------------------------------------------------------------------- recording


@dataclass
class Recorder:
    """Collects the engine's pass traces for one phase (the engine calls it on its worker thread)."""

    traces: list[CallTrace] = field(default_factory=list)

    def __call__(self, trace: CallTrace) -> None:
        self.traces.append(trace)

    def of(self, kind: str) -> list[CallTrace]:
        return [t for t in self.traces if t.kind == kind]

    @property
    def finished(self) -> list[FinishedRow]:
        return [row for t in self.traces for row in t.finished]

    @property
    def generated_tokens(self) -> int:
        return sum(row.completion.completion_tokens for row in self.finished)

    @property
    def model_seconds(self) -> float:
        return sum(t.seconds for t in self.traces)

    def flops(self, kind: str, shape: ModelShape) -> tuple[float, float]:
        """(model FLOPs, seconds) of the passes of ``kind``: prompt passes count their prefilled tokens."""
        traces = self.of(kind)
        if kind == "prefill":
            flops = sum(shape.flops(t.prefill_tokens, t.rows, t.attention_pairs) for t in traces)
        else:
            flops = sum(shape.flops(t.rows, t.rows, t.attention_pairs) for t in traces)
        return flops, sum(t.seconds for t in traces)

    def breakdown(self) -> list[str]:
        """Where the model time went: prompt passes and decoding steps."""
        prefill, decode = self.of("prefill"), self.of("decode")
        prompt_tokens = sum(t.prompt_tokens for t in prefill)
        prefill_tokens = sum(t.prefill_tokens for t in prefill)
        padded_tokens = sum(t.padded_tokens for t in prefill)
        rows = [t.rows for t in decode]
        by_budget: dict[int, list[int]] = {}
        for row in self.finished:
            by_budget.setdefault(row.options.max_new_tokens, []).append(row.completion.completion_tokens)
        lengths = ", ".join(f"{len(v)} x <= {k} tokens (mean {_mean(v):.1f})" for k, v in sorted(by_budget.items()))
        return [
            f"prompt passes: {len(prefill)} ({sum(t.rows for t in prefill)} prompts, "
            f"{sum(t.scored for t in prefill)} of them scored); prompt tokens {prompt_tokens}, prefilled "
            f"{prefill_tokens} ({100 * (1 - prefill_tokens / max(prompt_tokens, 1)):.0f}% saved by shared "
            f"prefixes; {padded_tokens} with padding) in {sum(t.seconds for t in prefill):.1f}s",
            f"decode steps: {len(decode)} (rows per step: mean {_mean(rows):.1f}, max {max(rows, default=0)}) "
            f"in {sum(t.seconds for t in decode):.1f}s",
            f"generations: {lengths}",
        ]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# ---------------------------------------------------------------------------------------------- phases


@dataclass(frozen=True)
class PhaseResult:
    name: str
    posts: int
    seconds: float
    events: list[IntentionEvent]
    failures: int
    recorder: Recorder
    cpu_seconds: float = 0.0
    """CPU time of this process (all threads) during the phase: the work done, whatever else runs on the
    machine (a loaded machine stretches wall time, much less this)."""

    @property
    def posts_per_s(self) -> float:
        return self.posts / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.recorder.generated_tokens / self.seconds

    def describe(self) -> str:
        rows = sum(t.rows for t in self.recorder.of("prefill"))
        accepted = sum(i.verified for e in self.events for i in e.intentions)
        total = sum(len(e.intentions) for e in self.events)
        return (
            f"{self.name}: {self.posts} posts in {self.seconds:.1f}s = {self.posts_per_s:.3f} posts/s; "
            f"{self.recorder.generated_tokens} generated tokens = {self.tokens_per_s:.1f} tokens/s; "
            f"{rows / max(self.posts, 1):.1f} prompts/post; "
            f"accepted {accepted}/{total} intentions; {self.failures} failed posts; "
            f"model busy {self.recorder.model_seconds:.1f}s; "
            f"process CPU {self.cpu_seconds:.1f}s = {self.cpu_seconds / max(self.posts, 1):.2f} CPU-s/post"
        )


def load_posts(path: Path, count: int) -> list[Post]:
    posts: list[Post] = []
    with path.open("rb") as handle:
        for line in handle:
            if len(posts) == count:
                break
            if not line.strip():
                continue
            try:
                posts.append(decode_post(line, InputLimits()))
            except IntakeError as error:
                print(f"skipping an unusable line: {error}", file=sys.stderr)
    if len(posts) < count:
        raise SystemExit(f"{path} has only {len(posts)} usable posts, asked for {count}")
    return posts


async def run_phase(
    name: str, pipeline: MikoPipeline, engine: LocalEngine, posts: Sequence[Post], in_flight: int
) -> PhaseResult:
    """Process ``posts`` with at most ``in_flight`` at a time; record the engine's calls meanwhile."""
    recorder = Recorder()
    gate = asyncio.Semaphore(in_flight)
    failures = 0

    async def one(post: Post) -> IntentionEvent | None:
        nonlocal failures
        async with gate:
            try:
                return await pipeline.process(post)
            except PostFailed as error:
                failures += 1
                print(f"{name}: post {post.id} failed: {error}", file=sys.stderr)
                return None

    engine.observer = recorder
    started, cpu_started = time.perf_counter(), time.process_time()
    try:
        results = await asyncio.gather(*(one(post) for post in posts))
    finally:
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        engine.observer = None
    events = [event for event in results if event is not None]
    return PhaseResult(name, len(posts), seconds, events, failures, recorder, cpu_seconds)


@dataclass(frozen=True)
class GenerateResult:
    prompts: int
    batches: int
    tokens: int
    seconds: float

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds

    def describe(self, batch_size: int) -> str:
        return (
            f"(c) bare generate: {self.prompts} of (b)'s prompts in {self.batches} calls of <= {batch_size}: "
            f"{self.tokens} generated tokens in {self.seconds:.1f}s = {self.tokens_per_s:.1f} tokens/s"
        )


def count_generated(row: Sequence[int], finished_ids: set[int]) -> int:
    """New tokens before the first EOS or padding (``generate`` pads a row once it has stopped)."""
    for position, token in enumerate(row):
        if token in finished_ids:
            return position
    return len(row)


def bare_generate(engine: LocalEngine, rows: Sequence[FinishedRow], batch_size: int, limit: int) -> GenerateResult:
    """Replay the prompts of ``rows`` with plain ``model.generate``: same budgets and stops, greedy.

    At most ``limit`` prompts, taken at an even stride so the mix of kinds (extract, generate) is (b)'s.
    """
    import torch
    from transformers import GenerationConfig

    from graph.models.local.prefill import left_pad

    calls = [(row.prompt, row.options) for row in rows]
    stride = max(1, -(-len(calls) // max(limit, 1)))
    groups: dict[tuple[int, tuple[str, ...]], list[tuple[int, ...]]] = {}
    for prompt, options in calls[::stride]:
        groups.setdefault(_bare_key(options), []).append(prompt)
    finished = {*engine.eos_ids, engine.pad_id}
    tokens = batches = prompts = 0
    seconds = 0.0
    torch.set_num_threads(engine.torch_threads)
    with torch.inference_mode():
        for (budget, stops), rows in groups.items():
            config = GenerationConfig(
                max_new_tokens=budget,
                do_sample=False,
                eos_token_id=engine.eos_ids,
                pad_token_id=engine.pad_id,
                stop_strings=list(stops) or None,
            )
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                ids, mask = left_pad(chunk, engine.pad_id)
                began = time.perf_counter()
                output = engine.model.generate(
                    input_ids=ids, attention_mask=mask, generation_config=config, tokenizer=engine.tokenizer
                )
                seconds += time.perf_counter() - began
                tokens += sum(count_generated(row, finished) for row in output[:, ids.shape[1] :].tolist())
                batches += 1
                prompts += len(chunk)
    return GenerateResult(prompts, batches, tokens, seconds)


def reference_engine(args: argparse.Namespace) -> LocalEngine:
    """The same weights loaded by transformers (same precision), whose ``generate`` is (c)'s reference."""
    from graph.models.local import load_engine
    from graph.models.registry import local_source
    from graph.models.spec import parse_llm_spec
    from miko_stream.settings import Settings
    from miko_stream.wiring import llm_config

    source = local_source(parse_llm_spec(args.llm), llm_config(Settings(llm=args.llm)))
    return load_engine(source, runtime="transformers", dtype=args.dtype)


def _bare_key(options: CallOptions) -> tuple[int, tuple[str, ...]]:
    return options.max_new_tokens, options.stop


# ---------------------------------------------------------------------------------------------- cold start


def cold_start_child(llm: str, spawned_at: float) -> None:
    """In a fresh interpreter: load the model and produce one token; print the timings as JSON."""
    imported_at = time.time()
    from graph.models.registry import LLMConfig, build_chat_model
    from miko_stream.settings import Settings

    settings = Settings(llm=llm)
    began = time.perf_counter()
    model = build_chat_model(llm, LLMConfig(cache_dir=settings.cache_dir))
    loaded = time.perf_counter()
    model.invoke([HumanMessage("Post: first day at the new job!")], max_tokens=1)
    first_token = time.perf_counter()
    print(
        json.dumps(
            {
                "interpreter_s": imported_at - spawned_at,
                "load_s": loaded - began,
                "model_to_first_token_s": first_token - began,
                "process_to_first_token_s": time.time() - spawned_at,
            }
        )
    )


def measure_cold_start(llm: str, starts: int) -> list[dict[str, float]]:
    runs = []
    for _ in range(starts):
        command = [sys.executable, "-m", "bench.throughput", "--cold-start-child", "--llm", llm]
        spawned = time.time()
        done = subprocess.run(
            [*command, "--spawned-at", repr(spawned)],
            capture_output=True,
            text=True,
            check=False,
            cwd=Path(__file__).resolve().parents[1],
        )
        if done.returncode != 0:
            raise SystemExit(f"cold start failed: {done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return runs


# ---------------------------------------------------------------------------------------------- main


def build_pipelines(
    args: argparse.Namespace,
) -> tuple[MikoPipeline, MikoPipeline, LocalEngine, LocalEngineHandle]:
    """(b)'s pipeline as the service wires it, and (a)'s: same graph and engine, one call at a time."""
    from miko_stream.settings import Settings
    from miko_stream.wiring import build_pipeline

    settings = Settings(
        llm=args.llm,
        vision="none",
        verifier=args.verifier,
        max_rounds=args.max_rounds,
        max_batch_size=args.max_batch_size,
        max_wait_ms=args.max_wait_ms,
        local_runtime=args.runtime,
        local_dtype=args.dtype,
    )
    pipeline = build_pipeline(settings)
    model = pipeline.deps.llm
    if not isinstance(model, LocalChatModel):
        raise SystemExit(f"--llm {args.llm} is not a local model; this bench measures smollm2 or hf:<folder>")
    engine = model.handle.engine
    if not args.share_prefixes:
        engine.sharing = engine.prefix_cache = None
    elif args.prefix_cache_mb is not None and engine.sharing is not None:
        engine.sharing = replace(engine.sharing, cache_mb=args.prefix_cache_mb)
        engine.prefix_cache = PrefixCache(int(args.prefix_cache_mb * 2**20)) if args.prefix_cache_mb > 0 else None
    alone = LocalEngineHandle(engine, max_batch_size=1, max_wait_ms=0, name=f"{args.llm}-sequential")
    serial = SerialChatModel(inner=model.model_copy(update={"handle": alone}))
    deps = replace(pipeline.deps, llm=serial)  # everything else (verifier, classifiers) as the service wires it
    sequential = MikoPipeline(deps, models=pipeline.info.models, deadline_s=settings.post_deadline_s)
    return sequential, pipeline, engine, alone


def measure_peaks(threads: int, when: str) -> dict[str, float]:
    """bf16 and fp32 matrix-product FLOP/s of this machine now (the run's utilisation figures divide by them)."""
    peaks = {name: matmul_peak(name, threads) for name in ("bf16", "fp32")}
    print(
        f"measured matrix-product peaks {when} (2048^3, {threads} threads): bf16 {peaks['bf16'] / 1e9:.0f} "
        f"GFLOP/s, fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s",
        flush=True,
    )
    return peaks


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from miko_stream.settings import Settings

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="JSONL posts (id, text, caption)")
    parser.add_argument("--posts", type=int, default=64, help="posts for the pipeline (b)")
    parser.add_argument("--sequential-posts", type=int, default=8, help="posts for the sequential baseline (a)")
    parser.add_argument("--llm", default="smollm2")
    parser.add_argument("--max-batch-size", type=int, default=None, help="default: MIKO_MAX_BATCH_SIZE")
    parser.add_argument("--max-wait-ms", type=float, default=None, help="default: MIKO_MAX_WAIT_MS")
    parser.add_argument("--max-in-flight", type=int, default=None, help="default: MIKO_MAX_IN_FLIGHT")
    parser.add_argument("--verifier", choices=get_args(Settings.model_fields["verifier"].annotation), default="llm")
    parser.add_argument(
        "--compare-verifier",
        choices=get_args(Settings.model_fields["verifier"].annotation),
        help="also run (b) with this verifier on the same posts and model (prefix cache emptied between runs)",
    )
    parser.add_argument("--max-rounds", type=int, default=None, help="default: MIKO_MAX_ROUNDS")
    parser.add_argument(
        "--runtime", choices=["auto", "native", "transformers"], default="auto", help="local runtime for (a) and (b)"
    )
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto", help="local model precision")
    parser.add_argument("--no-share-prefixes", dest="share_prefixes", action="store_false")
    parser.add_argument("--prefix-cache-mb", type=float, default=None, help="default: the engine's")
    parser.add_argument(
        "--generate-prompts", type=int, default=192, help="replay at most this many of (b)'s prompts in (c)"
    )
    parser.add_argument("--cold-starts", type=int, default=2, help="fresh-process starts; the last is reported")
    parser.add_argument("--skip", action="append", default=[], choices=["a", "b", "c", "cold"])
    parser.add_argument("--verbose", action="store_true", help="print every model call of (b)")
    parser.add_argument("--cold-start-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--spawned-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.cold_start_child and args.data is None:
        parser.error("--data is required")
    defaults = Settings()
    for name in ("max_batch_size", "max_wait_ms", "max_in_flight", "max_rounds"):
        if getattr(args, name) is None:
            setattr(args, name, getattr(defaults, name))
    return args


async def run_phases(
    args: argparse.Namespace,
    sequential: MikoPipeline,
    pipeline: MikoPipeline,
    engine: LocalEngine,
    posts: Sequence[Post],
) -> tuple[PhaseResult | None, PhaseResult | None]:
    """Warm up, then (a) and (b), in one event loop (the baseline's lock belongs to it)."""
    warmup, posts = posts[0], posts[1:]
    await run_phase("warm-up", sequential, engine, [warmup], 1)
    a = b = None
    if "a" not in args.skip:
        a = await run_phase("(a) sequential", sequential, engine, posts[: args.sequential_posts], 1)
        print(a.describe(), flush=True)
    if "b" not in args.skip:
        b = await run_phase("(b) pipeline", pipeline, engine, posts[: args.posts], args.max_in_flight)
        stats = pipeline.deps.llm.handle.batcher.stats  # type: ignore[attr-defined]
        print(b.describe(), f"\n    batcher: {stats.batches} batches, largest {stats.largest_batch}", flush=True)
        for line in b.recorder.breakdown():
            print(f"    {line}")
        cache = engine.prefix_cache
        if cache is not None:
            print(f"    prefix cache: {cache.stats} holding {len(cache)} prefixes, {cache.bytes / 2**20:.0f} MB")
        if args.verbose:
            for trace in b.recorder.traces:
                new = sum(row.completion.completion_tokens for row in trace.finished)
                print(
                    f"      {trace.kind:8} rows={trace.rows:3} scored={trace.scored:3} prompt={trace.prompt_tokens:6} "
                    f"prefill={trace.prefill_tokens:6} finished={len(trace.finished):3} new={new:4} "
                    f"{trace.seconds:6.2f}s"
                )
        if args.compare_verifier:
            await compare_verifier(args, pipeline, engine, posts[: args.posts], b)
    return a, b


async def compare_verifier(
    args: argparse.Namespace, pipeline: MikoPipeline, engine: LocalEngine, posts: Sequence[Post], b: PhaseResult
) -> None:
    """(b) again with ``--compare-verifier``: same posts, same model and batcher, only the verify node differs."""
    from dataclasses import replace as replace_fields

    from miko_stream.settings import Settings
    from miko_stream.wiring import graph_config, learned_scorer, relation_thresholds, verifier_label

    settings = Settings(llm=args.llm, vision="none", verifier=args.compare_verifier, max_rounds=args.max_rounds)
    scorer = learned_scorer(settings)
    config = graph_config(settings, None, relation_thresholds(settings, scorer))
    deps = replace_fields(pipeline.deps, config=config, learned=scorer)
    models = pipeline.info.models.model_copy(update={"verifier": verifier_label(settings, scorer)})
    other = MikoPipeline(deps, models=models, deadline_s=settings.post_deadline_s, batch_size=pipeline.batch_size)
    if engine.prefix_cache is not None:
        engine.prefix_cache = PrefixCache(engine.prefix_cache.max_bytes)  # (b) must not have warmed it for this run
    name = f"(b) pipeline, verifier={args.compare_verifier}"
    result = await run_phase(name, other, engine, posts, args.max_in_flight)
    print(result.describe(), flush=True)
    for line in result.recorder.breakdown():
        print(f"    {line}")
    print(
        f"verifier comparison on the same {len(posts)} posts: {args.verifier} {b.posts_per_s:.3f} posts/s "
        f"({b.seconds:.1f}s), {args.compare_verifier} {result.posts_per_s:.3f} posts/s ({result.seconds:.1f}s): "
        f"x{result.posts_per_s / b.posts_per_s:.2f}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.cold_start_child:
        cold_start_child(args.llm, args.spawned_at)
        return
    from miko_stream.logging import configure_logging

    configure_logging("WARNING")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}",
        flush=True,
    )
    cold = [] if "cold" in args.skip else measure_cold_start(args.llm, args.cold_starts)
    sequential, pipeline, engine, alone = build_pipelines(args)
    print(
        f"config: --llm {args.llm}, max_batch_size={args.max_batch_size}, max_wait_ms={args.max_wait_ms:g}, "
        f"max_in_flight={args.max_in_flight}, verifier={args.verifier}, max_rounds={args.max_rounds}, "
        f"shared prefixes {'on' if engine.sharing else 'off'}, torch threads {engine.torch_threads}, "
        f"runtime {type(engine.model).__name__}, precision {engine.precision}",
        flush=True,
    )
    peaks = measure_peaks(engine.torch_threads, "before the phases")
    posts = load_posts(args.data, max(args.posts, args.sequential_posts) + 1)
    try:
        a, b = asyncio.run(run_phases(args, sequential, pipeline, engine, posts))
    finally:
        alone.close()
        asyncio.run(pipeline.aclose())
    c = None
    if b is not None and "c" not in args.skip:
        c = bare_generate(reference_engine(args), b.recorder.finished, args.max_batch_size, args.generate_prompts)
        print(c.describe(args.max_batch_size), flush=True)
    if cold:
        last = cold[-1]
        print(
            f"cold start (fresh process, weights cached, run {len(cold)} of {len(cold)}): "
            f"model load + first token {last['model_to_first_token_s']:.2f}s "
            f"(load {last['load_s']:.2f}s); process start to first token, imports included, "
            f"{last['process_to_first_token_s']:.2f}s",
            flush=True,
        )
    after = measure_peaks(engine.torch_threads, "after the phases")
    peaks = {name: max(peaks[name], after[name]) for name in peaks}  # a peak is the best seen in the run
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB (this process: model, (a), (b) and (c))")
    prefill_mfu = None
    if b is not None:
        shape = ModelShape.of(engine.model.config)
        for kind in ("prefill", "decode"):
            flops, seconds = b.recorder.flops(kind, shape)
            rate = flops / seconds if seconds else 0.0
            print(
                f"model FLOP utilisation of (b), {kind}: {flops / 1e12:.2f} TFLOP in {seconds:.1f}s = "
                f"{rate / 1e9:.0f} GFLOP/s = {100 * rate / peaks['bf16']:.0f}% of the bf16 peak, "
                f"{100 * rate / peaks['fp32']:.0f}% of the fp32 peak"
            )
            if kind == "prefill":
                prefill_mfu = rate / peaks["bf16"]
    load = os.getloadavg()
    print(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if b is not None:  # phases left out with --skip print n/a
        speedup = f"{b.posts_per_s / a.posts_per_s:.2f}" if a is not None else "n/a"
        efficiency = f"{b.tokens_per_s / c.tokens_per_s:.2f}" if c is not None else "n/a"
        print(f"speedup_vs_sequential={speedup} efficiency_vs_generate={efficiency} prefill_mfu={prefill_mfu:.2f}")


if __name__ == "__main__":
    main()
