"""Decode-step cost of the local engine: milliseconds per step for 16/32/64 running rows, and where it goes.

Each size starts that many generations on distinct prompts of about ``--context`` tokens (the length of a
MIKO generate prompt), then times ``--steps`` decoding steps: the whole step (what the batcher waits for), the
model's forward call inside it, and the rest (token choice, stop checks, bookkeeping). Model FLOPs per step
(see bench/flops.py) over the step's time give the achieved rate, next to the measured matrix-product peaks.

Run from the project root (figures: bench/RESULTS.md):
    python -m bench.decode_step --llm smollm2 --rows 16,32,64
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from bench.flops import ModelShape, matmul_peak
from graph.models.local.engine import CallTrace, GenerateRequest, LocalEngine
from graph.models.spec import CallOptions

WORDS = ["marathon", "race", "friends", "happy", "monday", "coffee", "cat", "laptop", "grocery", "store", "bike"]


class TimedModel:
    """Wraps the engine's model to time its forward calls (everything else is delegated)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds: list[float] = []

    def __call__(self, **kwargs: Any) -> Any:
        started = time.perf_counter()
        output = self.model(**kwargs)
        self.seconds.append(time.perf_counter() - started)
        return output

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def prompt(index: int, context: int) -> tuple[tuple[str, str], ...]:
    """A distinct chat of roughly ``context`` tokens ending in a sentence stem the model continues."""
    words = " ".join(WORDS[(index * 7 + i) % len(WORDS)] for i in range(context * 3 // 4))
    return (
        ("system", "You explain why people post on social media. Complete the sentence."),
        ("user", f"Post {index}: {words}"),
        ("assistant", "After posting this, the user wants to"),
    )


def measure(engine: LocalEngine, rows: int, steps: int, context: int, stop: tuple[str, ...]) -> dict[str, float]:
    engine.abandon()
    options = CallOptions(max_new_tokens=steps + 4, stop=stop)
    engine.start([GenerateRequest(prompt(i, context), options) for i in range(rows)])
    traces: list[CallTrace] = []
    timed = TimedModel(engine.model)
    engine.model, engine.observer = timed, traces.append  # type: ignore[assignment]
    try:
        for _ in range(steps):
            if not engine.live:
                break
            engine.step()
    finally:
        engine.model, engine.observer = timed.model, None
        engine.abandon()
    shape = ModelShape.of(engine.model.config)
    flops = [shape.flops(t.rows, t.rows, t.attention_pairs) for t in traces]
    return {
        "rows": statistics.mean(t.rows for t in traces),
        "context": statistics.mean(t.attention_pairs / t.rows for t in traces),
        "step_ms": 1000 * statistics.median(t.seconds for t in traces),
        "model_ms": 1000 * statistics.median(timed.seconds),
        "gflops": sum(flops) / sum(t.seconds for t in traces) / 1e9,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="smollm2")
    parser.add_argument("--dtype", choices=["auto", "bf16", "fp32"], default="auto")
    parser.add_argument("--rows", default="16,32,64")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--context", type=int, default=250, help="prompt tokens per row (about)")
    parser.add_argument("--stop", action="append", default=[], help="stop strings (checked every step)")
    parser.add_argument("--profile", action="store_true", help="torch profiler table of the largest size")
    args = parser.parse_args(argv)

    import torch

    from graph.models.local import load_engine
    from graph.models.registry import local_source
    from graph.models.spec import parse_llm_spec
    from miko_stream.settings import Settings
    from miko_stream.wiring import llm_config

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    source = local_source(parse_llm_spec(args.llm), llm_config(Settings(llm=args.llm)))
    engine = load_engine(source, dtype=args.dtype)
    engine.on_worker_start()
    bf16, fp32 = matmul_peak("bf16", engine.torch_threads), matmul_peak("fp32", engine.torch_threads)
    print(
        f"model {args.llm} ({type(engine.model).__name__}, {engine.precision}), {engine.torch_threads} threads; "
        f"measured matmul peaks: bf16 {bf16 / 1e9:.0f} GFLOP/s, fp32 {fp32 / 1e9:.0f} GFLOP/s",
        flush=True,
    )
    stop = tuple(args.stop)
    for rows in (int(r) for r in args.rows.split(",")):
        figures = measure(engine, rows, args.steps, args.context, stop)
        print(
            f"rows {figures['rows']:5.1f} (context {figures['context']:.0f}): step {figures['step_ms']:6.1f} ms "
            f"(model forward {figures['model_ms']:6.1f} ms, rest {figures['step_ms'] - figures['model_ms']:5.1f} ms); "
            f"{figures['rows'] / figures['step_ms'] * 1000:6.0f} tokens/s; {figures['gflops']:5.0f} GFLOP/s = "
            f"{100 * figures['gflops'] * 1e9 / bf16:.0f}% of bf16 peak",
            flush=True,
        )
    if args.profile:
        rows = max(int(r) for r in args.rows.split(","))
        engine.start([GenerateRequest(prompt(i, args.context), CallOptions(args.steps + 4, stop)) for i in range(rows)])
        with torch.profiler.profile() as profiler:
            for _ in range(min(args.steps, 8)):
                engine.step()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
