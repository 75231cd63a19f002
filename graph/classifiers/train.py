"""Fine-tuning a student on labelled posts: CE plus the optional ITC/ITM losses, bf16 autocast, early stopping.

Early stopping watches the classification loss on a validation slice carved from the training posts (a fixed,
stratified, id-hashed fraction), never the evaluation file; the best epoch's weights are the ones kept.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from graph.classifiers.data import DataError, split_posts
from graph.classifiers.frozen import FrozenBottom
from graph.classifiers.image_side import ImageSide, caption_side, image_side
from graph.classifiers.inputs import InputSet, LabelledPost
from graph.classifiers.losses import AuxWeights, itc_loss, itm_pairs
from graph.classifiers.metrics import classification_metrics
from graph.classifiers.model import DEFAULT_ENCODER, SarcasmStudent, StudentConfig

Encode = Callable[[Sequence[LabelledPost]], torch.Tensor]


class TrainProgress(Protocol):
    """Where training reports progress (the CLI shows rich bars; the benchmark logs lines)."""

    def phase(self, name: str, total: int) -> None: ...

    def advance(self, loss: float) -> None: ...


class _Silent:
    def phase(self, name: str, total: int) -> None:
        pass

    def advance(self, loss: float) -> None:
        pass


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; defaults keep a fine-tune of ~600 posts to a few minutes on two CPU cores."""

    inputs: InputSet = InputSet.TEXT
    aux: AuxWeights = field(default_factory=AuxWeights)
    encoder: str = DEFAULT_ENCODER
    image_encoder: str | None = None
    epochs: int = 4
    batch_size: int = 16
    lr: float = 5e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    max_length: int = 256
    train_layers: int | None = None  # None: the whole encoder; k: only its top k layers (see frozen.py)
    patience: int = 1
    val_fraction: float = 0.1
    seed: int = 0
    bf16: bool = True


@dataclass
class TrainResult:
    student: SarcasmStudent
    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    encode: Encode
    bf16_max_prob_diff: float | None
    train_posts: int
    val_posts: int
    seconds: float


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_student(
    posts: Sequence[LabelledPost],
    config: TrainConfig,
    *,
    image_base: Path | None = None,
    progress: TrainProgress | None = None,
) -> TrainResult:
    """Fine-tune a fresh student on ``posts`` (labelled); returns the best epoch's model, in eval mode."""
    started = time.perf_counter()
    progress = progress or _Silent()
    train, val = split_posts(posts, config.val_fraction, salt="validation")
    if len({post.label for post in train}) < 2:
        raise DataError("training posts need both labels (0 and 1)")
    generator = seed_everything(config.seed)
    side = _image_side(train, config, image_base) if config.aux.any else None
    student = SarcasmStudent.from_encoder(
        StudentConfig(
            inputs=config.inputs,
            aux=config.aux.spec(),
            encoder=config.encoder,
            max_length=config.max_length,
            image_side=side.kind if side else "none",  # type: ignore[arg-type]
            image_dim=side.dim if side else 0,
            image_encoder=config.image_encoder if side and side.kind == "image" else None,
        )
    )
    encode = _encoder_fn(student, config.train_layers)
    optimizer, scheduler = _optimizer(student, config, steps=config.epochs * -(-len(train) // config.batch_size))
    history: list[dict[str, float]] = []
    best_loss, best_state, best_epoch, stale = float("inf"), None, 0, 0
    for epoch in range(1, config.epochs + 1):
        progress.phase(f"epoch {epoch}/{config.epochs}", -(-len(train) // config.batch_size))
        train_loss = _train_epoch(student, encode, train, side, config, optimizer, scheduler, generator, progress)
        val_loss, val_metrics = validation(student, encode, val, config.bf16)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, **val_metrics})
        if val_loss < best_loss - 1e-4:
            best_loss, best_state, best_epoch, stale = val_loss, copy.deepcopy(student.state_dict()), epoch, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        student.load_state_dict(best_state)
    student.eval()
    bf16_diff = bf16_prob_diff(student, val[:64]) if config.bf16 else None
    return TrainResult(
        student=student,
        best_epoch=best_epoch,
        epochs_run=len(history),
        history=history,
        encode=encode,
        bf16_max_prob_diff=bf16_diff,
        train_posts=len(train),
        val_posts=len(val),
        seconds=time.perf_counter() - started,
    )


def _encoder_fn(student: SarcasmStudent, train_layers: int | None) -> Encode:
    """Posts -> pooled encoder output: the whole encoder, or the trainable top layers over a cached bottom."""
    if train_layers is not None and train_layers < len(getattr(student.encoder.encoder, "layer", [])):
        return FrozenBottom(student, train_layers).pooled
    return lambda posts: student.pooled(student.tokenize(posts))


def _image_side(train: Sequence[LabelledPost], config: TrainConfig, image_base: Path | None) -> ImageSide:
    if config.image_encoder:
        return image_side(train, config.image_encoder, image_base or Path.cwd())
    side = caption_side(train, config.encoder)
    if not bool(side.present.any()):
        raise DataError("ITC/ITM need an image side: give posts a `caption`, or images with --image-encoder")
    return side


def _optimizer(
    student: SarcasmStudent, config: TrainConfig, steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW; the fresh heads learn faster than the pretrained encoder. Linear warm-up, then linear decay."""
    encoder_params = [param for param in student.encoder.parameters() if param.requires_grad]
    head_params = [param for name, param in student.named_parameters() if not name.startswith("encoder.")]
    optimizer = torch.optim.AdamW(
        [{"params": encoder_params, "lr": config.lr}, {"params": head_params, "lr": config.head_lr}],
        weight_decay=config.weight_decay,
    )
    warmup = max(1, int(config.warmup_fraction * steps))

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _train_epoch(
    student: SarcasmStudent,
    encode: Encode,
    train: Sequence[LabelledPost],
    side: ImageSide | None,
    config: TrainConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    generator: torch.Generator,
    progress: TrainProgress,
) -> float:
    student.train()
    order = torch.randperm(len(train), generator=generator).tolist()
    losses = []
    for start in range(0, len(order), config.batch_size):
        rows = order[start : start + config.batch_size]
        loss = batch_loss(student, encode, [train[i] for i in rows], side, rows, config, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        progress.advance(losses[-1])
    return float(np.mean(losses))


def batch_loss(
    student: SarcasmStudent,
    encode: Encode,
    posts: Sequence[LabelledPost],
    side: ImageSide | None,
    rows: Sequence[int],
    config: TrainConfig,
    generator: torch.Generator,
) -> torch.Tensor:
    """(1 - β_itc - β_itm)·CE + β_itc·ITC + β_itm·ITM on one batch; aux losses over posts with an image side."""
    labels = torch.tensor([post.label for post in posts])
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        pooled = encode(posts)
        logits = student.logits(pooled)
    loss = config.aux.ce * F.cross_entropy(logits.float(), labels)
    if side is None or not config.aux.any:
        return loss
    present = side.present[list(rows)]
    if int(present.sum()) < 2:
        return loss
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=config.bf16):
        text = student.text_embedding(pooled[present])
        image = student.image_embedding(side.features[list(rows)][present])
    if config.aux.itc:
        loss = loss + config.aux.itc * itc_loss(text, image, student.logit_scale.clamp(max=4.6052))
    if config.aux.itm:
        index, matched = itm_pairs(text.shape[0], generator)
        loss = loss + config.aux.itm * F.cross_entropy(student.itm_logits(text, image[index]).float(), matched)
    return loss


@torch.inference_mode()
def validation(
    student: SarcasmStudent, encode: Encode, posts: Sequence[LabelledPost], bf16: bool
) -> tuple[float, dict[str, float]]:
    """Mean CE and the metrics on the validation slice."""
    scores = encoded_scores(student, encode, posts, bf16)
    labels = [int(post.label or 0) for post in posts]
    probs = torch.tensor(scores).clamp(1e-6, 1 - 1e-6)
    target = torch.tensor(labels, dtype=torch.float32)
    loss = F.binary_cross_entropy(probs, target).item()
    return loss, classification_metrics(labels, scores)


@torch.inference_mode()
def encoded_scores(
    student: SarcasmStudent, encode: Encode, posts: Sequence[LabelledPost], bf16: bool, batch_size: int = 32
) -> list[float]:
    """P(sarcastic) per post through ``encode`` (the cached path during a grid, the whole encoder otherwise)."""
    student.eval()
    scores: list[float] = []
    for start in range(0, len(posts), batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = student.logits(encode(posts[start : start + batch_size]))
        scores.extend(logits.float().softmax(-1)[:, 1].tolist())
    return scores


@torch.inference_mode()
def bf16_prob_diff(student: SarcasmStudent, posts: Sequence[LabelledPost]) -> float:
    """Largest |P_bf16 - P_fp32| over a batch: the evidence that bf16 autocast keeps the numerics."""
    exact = student.score(posts, bf16=False)
    fast = student.score(posts, bf16=True)
    return max(abs(a - b) for a, b in zip(exact, fast, strict=True))
