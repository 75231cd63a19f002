"""Distillation cost and numerics: bf16 autocast vs float32, LoRA vs full, shared prefix vs full prompts.

    python -m bench.distill_generator --data ../shared/data/teacher_intentions.jsonl --posts 4

For the same training posts of SmolLM2-135M it prints the answer-token loss in float32 and under bf16 autocast
(the numerics check), and forward+backward tokens/s for LoRA and full fine-tuning in each precision, plus how
many tokens the shared-prefix layout saves. The load average is printed next to the figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from graph.distill.examples import build_example
from graph.distill.trainer import TrainConfig, autocast, post_loss, prepare_model
from graph.knowledge import read_reference_posts
from graph.models.registry import LLMConfig, local_source
from graph.models.spec import parse_llm_spec
from miko_stream.settings import Settings
from prompts import load_prompts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=4)
    parser.add_argument("--base", default="smollm2")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = local_source(parse_llm_spec(args.base), LLMConfig(cache_dir=Settings().cache_dir))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prompts = load_prompts()
    posts = list(read_reference_posts(args.data, prompts, split="train", limit=args.posts))
    examples = [e for e in (build_example(p, prompts, tokenizer, tokenizer.eos_token_id) for p in posts) if e]
    tokens = sum(e.tokens for e in examples)
    unshared = sum(e.tokens + len(e.prefix) * (len(e.suffixes) - 1) for e in examples)  # the prefix once per relation
    print(f"posts={len(examples)} tokens={tokens} (full prompts: {unshared}, {unshared / tokens:.2f}x)")
    print(f"mean tokens/post={statistics.mean(e.tokens for e in examples):.0f}", flush=True)
    base = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        losses = {}
        for bf16 in (False, True):
            with autocast(bf16):
                total = sum(float(post_loss(base, e, 0)) for e in examples)
            losses[bf16] = total / sum(e.answer_tokens for e in examples)
    print(
        f"answer loss fp32={losses[False]:.5f} bf16-autocast={losses[True]:.5f} "
        f"diff={abs(losses[True] - losses[False]):.5f}",
        flush=True,
    )
    for mode in ("lora", "full"):
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if mode == "lora":
            model = prepare_model(model, TrainConfig(lora_rank=8))
        else:
            model.requires_grad_(True)
        for bf16 in (True, False):
            started = time.perf_counter()
            for example in examples:
                with autocast(bf16):
                    loss = post_loss(model, example, 0)
                loss.backward()
            seconds = time.perf_counter() - started
            print(
                f"{mode} bf16={bf16}: {tokens / seconds:.0f} tokens/s (forward+backward, {seconds:.1f}s) "
                f"load={os.getloadavg()[0]:.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
