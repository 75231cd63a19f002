"""The fine-tune: teacher answers into the local model, on the CPU, resumable.

Cost is what shapes it (2 shared cores): logits are computed only where an answer token is predicted (the
49k-word output layer over every prompt position would otherwise be a fifth of the work), the ten generate
prompts of a post run their common start once (:mod:`.examples`), matrix products run in bfloat16 under
autocast while the weights and optimizer stay float32, and LoRA (peft) trains ~1% of the weights, so the
backward pass skips the weight gradients of the frozen ones and the result is a few MB.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from graph.distill.examples import PostExample, Segment

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHECKPOINT_DIR = "checkpoint"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the result; stored with checkpoints so ``--resume`` continues the same run."""

    epochs: int = 1
    lora_rank: int | None = 8
    """None: full fine-tune."""
    lora_alpha: float = 16.0
    learning_rate: float | None = None
    """Default: 2e-4 for LoRA, 3e-5 for a full fine-tune."""
    posts_per_step: int = 4
    warmup_steps: int = 10
    weight_decay: float = 0.0
    seed: int = 0
    bf16: bool = True
    save_every: int = 25
    """Optimizer steps between checkpoints."""
    max_steps: int | None = None

    @property
    def lr(self) -> float:
        if self.learning_rate is not None:
            return self.learning_rate
        return 2e-4 if self.lora_rank else 3e-5


@dataclass
class StepReport:
    step: int
    total_steps: int
    epoch: int
    loss: float
    tokens_per_s: float
    elapsed_s: float


@dataclass
class TrainState:
    """Where a run is: saved in every checkpoint."""

    run_id: str
    config: dict[str, Any]
    step: int = 0
    tokens: int = 0
    answer_tokens: int = 0
    elapsed_s: float = 0.0
    losses: list[float] = field(default_factory=list)
    val_losses: list[tuple[int, float]] = field(default_factory=list)


def autocast(enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 matrix products on the CPU (AVX-512 BF16 runs them ~4x faster than float32)."""
    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the loss of one post ------------------------------------------------------------------------------------


def _parts(model: Any) -> tuple[Any, Any]:
    """The decoder stack and the output layer of a (possibly peft-wrapped) causal LM."""
    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    return causal.model, causal.lm_head


def _answer_loss(lm_head: Any, hidden: torch.Tensor, rows: Sequence[Segment]) -> torch.Tensor:
    """Summed cross-entropy of each row's answer, predicted from the positions just before its tokens.

    ``hidden`` is ``[rows, length, dim]`` over each row's prompt + answer (right-padded); the output layer runs
    on the answer positions only.
    """
    picked, targets = [], []
    for index, row in enumerate(rows):
        start = len(row.prompt) - 1
        picked.append(hidden[index, start : start + len(row.answer)])
        targets.extend(row.answer)
    logits = lm_head(torch.cat(picked)).float()
    return torch.nn.functional.cross_entropy(logits, torch.tensor(targets), reduction="sum")


def _padded(rows: Sequence[Segment], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r.prompt) + len(r.answer) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens = row.prompt + row.answer
        ids[i, : len(tokens)] = torch.tensor(tokens)
        mask[i, : len(tokens)] = 1
    return ids, mask


def post_loss(model: Any, example: PostExample, pad_id: int) -> torch.Tensor:
    """Summed answer cross-entropy of one post: the extract sequence, then the shared prefix and its suffixes."""
    decoder, lm_head = _parts(model)
    total = torch.zeros(())
    if example.extract is not None:
        ids, mask = _padded([example.extract], pad_id)
        hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        total = total + _answer_loss(lm_head, hidden, [example.extract])
    if not example.suffixes:
        return total
    cache = None
    offset = len(example.prefix)
    if offset:
        from transformers import DynamicCache

        cache = DynamicCache()
        decoder(input_ids=torch.tensor([example.prefix]), cache=cache, use_cache=True)
        cache.batch_repeat_interleave(len(example.suffixes))
    ids, mask = _padded(example.suffixes, pad_id)
    full_mask = torch.cat([torch.ones((len(example.suffixes), offset), dtype=torch.long), mask], dim=1)
    positions = (torch.arange(ids.shape[1]) + offset).expand(ids.shape[0], -1)
    hidden = decoder(
        input_ids=ids,
        attention_mask=full_mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=cache is not None,
    ).last_hidden_state
    return total + _answer_loss(lm_head, hidden, example.suffixes)


@torch.no_grad()
def mean_loss(model: Any, examples: Sequence[PostExample], pad_id: int, bf16: bool) -> float:
    """Mean answer-token cross-entropy over ``examples`` (the validation slice)."""
    if not examples:
        return float("nan")
    model.eval()
    total, count = 0.0, 0
    with autocast(bf16):
        for example in examples:
            total += float(post_loss(model, example, pad_id))
            count += example.answer_tokens
    model.train()
    return total / max(count, 1)


# -- the model -----------------------------------------------------------------------------------------------


def prepare_model(model: Any, config: TrainConfig) -> Any:
    """LoRA adapters on every linear layer of the blocks (peft), or every weight trainable for a full run."""
    if config.lora_rank is None:
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: Any, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    missing = [name for name in state if name not in params]
    if missing:
        raise ValueError(f"checkpoint does not fit this model: unknown parameters {missing[:3]}")
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


# -- the loop ------------------------------------------------------------------------------------------------


def epoch_order(examples: Sequence[PostExample], seed: int, epoch: int) -> list[PostExample]:
    order = list(examples)
    random.Random(seed * 1000 + epoch).shuffle(order)
    return order


def planned_steps(train: int, config: TrainConfig) -> int:
    steps = config.epochs * math.ceil(train / config.posts_per_step)
    return min(steps, config.max_steps) if config.max_steps else steps


def _schedule(step: int, total: int, config: TrainConfig) -> float:
    """Linear warm-up, then linear decay to 10% of the peak learning rate."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    remaining = max(total - config.warmup_steps, 1)
    return max(0.1, 1.0 - 0.9 * (step - config.warmup_steps) / remaining)


def _batches(examples: Sequence[PostExample], config: TrainConfig, start_step: int) -> Iterator[tuple[int, int, list]]:
    """(step, epoch, posts) from ``start_step`` on, in the seeded order of each epoch."""
    per_epoch = math.ceil(len(examples) / config.posts_per_step)
    step = 0
    for epoch in range(config.epochs):
        order = epoch_order(examples, config.seed, epoch)
        for index in range(per_epoch):
            if step >= start_step:
                yield step, epoch, order[index * config.posts_per_step : (index + 1) * config.posts_per_step]
            step += 1


class Trainer:
    """Runs :class:`TrainConfig` over training examples, checkpointing into ``out/checkpoint``."""

    def __init__(
        self, model: Any, config: TrainConfig, out: Path, pad_id: int, state: TrainState, *, optimizer_state: Any = None
    ) -> None:
        self.model = model
        self.config = config
        self.out = out
        self.pad_id = pad_id
        self.state = state
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        if optimizer_state is not None:
            self.optimizer.load_state_dict(optimizer_state)

    def run(
        self,
        train: Sequence[PostExample],
        validation: Sequence[PostExample],
        on_step: Callable[[StepReport], None] = lambda _: None,
    ) -> TrainState:
        total = planned_steps(len(train), self.config)
        self.model.train()
        started = time.perf_counter() - self.state.elapsed_s
        for step, epoch, posts in _batches(train, self.config, self.state.step):
            if step >= total:
                break
            loss = self._step(posts, step, total)
            self.state.step = step + 1
            self.state.tokens += sum(p.tokens for p in posts)
            self.state.answer_tokens += sum(p.answer_tokens for p in posts)
            self.state.losses.append(loss)
            self.state.elapsed_s = time.perf_counter() - started
            tokens_per_s = self.state.tokens / self.state.elapsed_s if self.state.elapsed_s else 0.0
            on_step(StepReport(self.state.step, total, epoch, loss, tokens_per_s, self.state.elapsed_s))
            if self.state.step % self.config.save_every == 0 or self.state.step == total:
                self.save_checkpoint()
        self.state.val_losses.append(
            (self.state.step, mean_loss(self.model, validation, self.pad_id, self.config.bf16))
        )
        self.state.elapsed_s = time.perf_counter() - started
        self.save_checkpoint()
        return self.state

    def _step(self, posts: Sequence[PostExample], step: int, total: int) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr * _schedule(step, total, self.config)
        answer_tokens = sum(p.answer_tokens for p in posts)
        summed = 0.0
        self.optimizer.zero_grad(set_to_none=True)
        for example in posts:
            with autocast(self.config.bf16):
                loss = post_loss(self.model, example, self.pad_id)
            (loss / answer_tokens).backward()
            summed += float(loss.detach())
        torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 1.0)
        self.optimizer.step()
        return summed / max(answer_tokens, 1)

    def save_checkpoint(self) -> None:
        from safetensors.torch import save_file

        folder = self.out / CHECKPOINT_DIR
        staging = self.out / f".{CHECKPOINT_DIR}.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in trainable_state(self.model).items()}, staging / "trainable.safetensors"
        )
        torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
        (staging / "state.json").write_text(json.dumps(asdict(self.state), indent=1))
        if folder.exists():
            old = self.out / f".{CHECKPOINT_DIR}.old"
            folder.replace(old)
            staging.replace(folder)
            for child in old.iterdir():
                child.unlink()
            old.rmdir()
        else:
            staging.replace(folder)


def load_checkpoint(out: Path) -> tuple[TrainState, dict[str, torch.Tensor], Any]:
    """The state, trainable weights and optimizer state of ``out/checkpoint``; FileNotFoundError if none."""
    from safetensors.torch import load_file

    folder = out / CHECKPOINT_DIR
    if not (folder / "state.json").is_file():
        raise FileNotFoundError(f"no checkpoint in {folder}: start without --resume")
    raw = json.loads((folder / "state.json").read_text())
    raw["val_losses"] = [tuple(v) for v in raw.get("val_losses", [])]
    state = TrainState(**raw)
    optimizer = torch.load(folder / "optimizer.pt", weights_only=True)
    return state, load_file(folder / "trainable.safetensors"), optimizer
