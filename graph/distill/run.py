"""One `distill generator` run: data -> examples -> fine-tune -> result folder with a model card.

The split is fixed and stated: posts whose id is held out by :func:`graph.knowledge.is_heldout` (~1/6, for
`eval generation --split heldout`) are never read for training; of the rest, the last ``validation_posts``
in file order are the validation slice, whose loss is reported before and after training.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graph.distill.artifact import MANIFEST
from graph.distill.examples import DistillDataError, PostExample, build_example
from graph.distill.trainer import (
    StepReport,
    TrainConfig,
    Trainer,
    TrainState,
    load_checkpoint,
    load_trainable_state,
    mean_loss,
    peak_rss_mb,
    prepare_model,
)
from graph.knowledge import HELDOUT_MODULUS, ReferencePost, read_reference_posts
from prompts import PromptSet, load_prompts


@dataclass(frozen=True)
class DistillRequest:
    data: Path
    out: Path
    base: str = "smollm2"
    base_folder: Path | None = None
    """The base model's folder (resolved from ``base`` by the caller)."""
    limit: int | None = None
    validation_posts: int = 24
    resume: bool = False
    config: TrainConfig = field(default_factory=TrainConfig)


@dataclass
class DistillResult:
    run_id: str
    train_posts: int
    validation_posts: int
    steps: int
    elapsed_s: float
    tokens_per_s: float
    validation_loss_before: float
    validation_loss_after: float
    peak_rss_mb: float
    out: Path


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_training_posts(
    data: Path, prompts: PromptSet, limit: int | None, validation_posts: int
) -> tuple[list[ReferencePost], list[ReferencePost]]:
    """(train, validation) reference posts of ``data``, held-out posts excluded (see module doc)."""
    posts = list(read_reference_posts(data, prompts, split="train"))
    if not any(p.references or p.key_info for p in posts):
        raise DistillDataError(f"{data} has no usable intentions or key information to learn from")
    validation = posts[-validation_posts:] if 0 < validation_posts < len(posts) else []
    train = posts[: len(posts) - len(validation)]
    return (train[:limit] if limit else train), validation


def _examples(posts: list[ReferencePost], prompts: PromptSet, tokenizer: Any, eos_id: int) -> list[PostExample]:
    built = (build_example(p, prompts, tokenizer, eos_id) for p in posts)
    return [e for e in built if e is not None and e.answer_tokens]


def _run_id(request: DistillRequest, digest: str) -> str:
    config = json.dumps([asdict(request.config), request.base, request.limit, digest], sort_keys=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    return f"{stamp}-{hashlib.sha256(config.encode()).hexdigest()[:6]}"


def distill_generator(
    request: DistillRequest,
    on_step: Callable[[StepReport], None] = lambda _: None,
    status: Callable[[str], None] = print,
) -> DistillResult:
    """Train, then write ``request.out`` (adapter or full model, ``distill.json``, ``README.md``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if request.base_folder is None:
        raise ValueError("base_folder is required")
    prompts = load_prompts()
    train_posts, validation_posts = load_training_posts(request.data, prompts, request.limit, request.validation_posts)
    tokenizer = AutoTokenizer.from_pretrained(str(request.base_folder))
    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    train = _examples(train_posts, prompts, tokenizer, eos_id)
    validation = _examples(validation_posts, prompts, tokenizer, eos_id)
    if not train:
        raise DistillDataError(f"{request.data}: no post has anything to learn after the held-out split")
    status(f"{len(train)} training posts, {len(validation)} validation posts, {sum(e.tokens for e in train)} tokens")
    torch.manual_seed(request.config.seed)
    model = AutoModelForCausalLM.from_pretrained(str(request.base_folder), dtype=torch.float32)
    request.out.mkdir(parents=True, exist_ok=True)
    digest = _file_digest(request.data)
    optimizer_state = None
    if request.resume:
        state, weights, optimizer_state = load_checkpoint(request.out)
        if state.config != _config_record(request, digest):
            raise DistillDataError(
                f"the checkpoint in {request.out} was made with other settings or data; start without --resume"
            )
        model = prepare_model(model, request.config)
        load_trainable_state(model, weights)
        status(f"resuming run {state.run_id} at step {state.step}")
    else:
        model.requires_grad_(False)
        before = mean_loss(model, validation, pad_id, request.config.bf16)
        state = TrainState(_run_id(request, digest), _config_record(request, digest))
        state.val_losses.append((0, before))
        model = prepare_model(model, request.config)
    trainer = Trainer(model, request.config, request.out, pad_id, state, optimizer_state=optimizer_state)
    started = time.perf_counter()
    state = trainer.run(train, validation, on_step)
    status(f"trained {state.step} steps in {time.perf_counter() - started:.0f}s")
    result = DistillResult(
        run_id=state.run_id,
        train_posts=len(train),
        validation_posts=len(validation),
        steps=state.step,
        elapsed_s=state.elapsed_s,
        tokens_per_s=state.tokens / state.elapsed_s if state.elapsed_s else 0.0,
        validation_loss_before=state.val_losses[0][1],
        validation_loss_after=state.val_losses[-1][1],
        peak_rss_mb=peak_rss_mb(),
        out=request.out,
    )
    _save(model, tokenizer, request, result, state, prompts)
    return result


def _config_record(request: DistillRequest, digest: str) -> dict[str, Any]:
    train = {k: v for k, v in asdict(request.config).items() if k not in ("max_steps", "save_every")}
    return {
        "train": train,
        "base": request.base,
        "data": request.data.name,
        "data_sha256_16": digest,
        "limit": request.limit,
        "validation_posts": request.validation_posts,
    }


def _save(
    model: Any, tokenizer: Any, request: DistillRequest, result: DistillResult, state: TrainState, prompts: PromptSet
) -> None:
    import torch

    out = request.out
    lora = request.config.lora_rank is not None
    if lora:
        model.to(torch.bfloat16).save_pretrained(str(out))
    else:
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
    manifest = {
        "run_id": result.run_id,
        "base": request.base,
        "mode": "lora" if lora else "full",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "prompt_version": prompts.version,
        "data": state.config["data"],
        "data_sha256_16": state.config["data_sha256_16"],
        "split": f"held out: blake2b(id) % {HELDOUT_MODULUS} == 0; validation: last {request.validation_posts} others",
        "train": state.config["train"],
        "figures": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result).items()},
        "train_losses": [round(x, 4) for x in state.losses],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(model_card(manifest))


def model_card(manifest: dict[str, Any]) -> str:
    """The model card: what it is, what it was trained on and under which licences, and how it did."""
    f = manifest["figures"]
    train = manifest["train"]
    kind = (
        f"LoRA adapter (rank {train['lora_rank']}, alpha {train['lora_alpha']:g})"
        if manifest["mode"] == "lora"
        else "full fine-tune"
    )
    lr = train["learning_rate"] or ("2e-4" if manifest["mode"] == "lora" else "3e-5")
    return f"""# miko-stream distilled generator `{manifest["run_id"]}`

A {kind} of `{manifest["base"]}` (SmolLM2-135M-Instruct, Apache-2.0) that writes MIKO intentions and key
information in the exact format of miko-stream's extract and generate prompts (prompt version
`{manifest["prompt_version"]}`). Built by `miko-stream distill generator`; served through a model spec
(`distilled:<this folder>`, or `smollm2-miko` for the copy shipped in the package) with the adapter merged into
the base weights at load.

## Training data and licences

- `{manifest["data"]}` (sha256 prefix `{manifest["data_sha256_16"]}`): MIKO's teacher outputs (LLaVA captions
  and gpt-3.5-turbo key information and intentions), released by the MIKO authors (zzq2000/MIKO) under
  **Apache-2.0**, for tweets of the MMSD / MMSD2.0 datasets, which are **research data** (Cai et al., ACL 2019;
  Qin et al., ACL 2023): use this adapter for research, and mind the tweets' terms.
- Split: {manifest["split"]}. The data itself is not included here.

## Training

{f["train_posts"]} posts, {f["steps"]} steps of {train["posts_per_step"]} posts, {train["epochs"]} epoch(s),
learning rate {lr}, bf16 autocast: {train["bf16"]}, seed {train["seed"]}.
Wall time {f["elapsed_s"]:.0f} s, {f["tokens_per_s"]:.0f} tokens/s, peak RSS {f["peak_rss_mb"]:.0f} MB (this process).
Validation loss (answer tokens, {f["validation_posts"]} posts): {f["validation_loss_before"]:.4f} before,
{f["validation_loss_after"]:.4f} after.

## Limits

A 135M model imitating a large teacher: its intentions are short and plausible more often than the base
model's, not as good as the teacher's. Measure with `miko-stream eval generation --split heldout`.
"""
