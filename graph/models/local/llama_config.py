"""What the native Llama runtime (:mod:`graph.models.local.llama`) can run, read from ``config.json``; no torch here.

Kept apart from the runtime so that choosing a runtime does not import torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SUPPORTED_ACTIVATIONS = ("silu",)


class UnsupportedModelError(ValueError):
    """The folder is not a plain Llama model; load it with transformers instead."""


@dataclass(frozen=True)
class LlamaConfig:
    """The hyper-parameters the forward pass needs, read from ``config.json``."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool

    def get_text_config(self) -> LlamaConfig:
        """Same as Hugging Face configs: the text part of the model (all of it here)."""
        return self


def check_supported(raw: dict[str, Any]) -> None:
    """Raise :class:`UnsupportedModelError` unless ``raw`` (a config.json) is a Llama this module runs exactly."""
    problems = []
    if raw.get("model_type") != "llama":
        problems.append(f"model_type {raw.get('model_type')!r}")
    if raw.get("hidden_act", "silu") not in SUPPORTED_ACTIVATIONS:
        problems.append(f"hidden_act {raw.get('hidden_act')!r}")
    if raw.get("attention_bias") or raw.get("mlp_bias"):
        problems.append("biases")
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        problems.append(f"rope_type {rope.get('rope_type', rope.get('type'))!r}")
    if raw.get("pretraining_tp", 1) != 1:
        problems.append("pretraining_tp")
    if problems:
        raise UnsupportedModelError("not a plain Llama: " + ", ".join(problems))


def read_config(folder: Path) -> LlamaConfig:
    raw = json.loads((folder / "config.json").read_text())
    check_supported(raw)
    rope = raw.get("rope_parameters") or {}
    heads = raw["num_attention_heads"]
    return LlamaConfig(
        vocab_size=raw["vocab_size"],
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", raw.get("rope_theta", 10000.0)),
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
    )


def read_eos_ids(folder: Path) -> list[int]:
    """EOS ids named by ``generation_config.json`` (falling back to ``config.json``)."""
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.is_file():
            value = json.loads(path.read_text()).get("eos_token_id")
            if value is not None:
                return [value] if isinstance(value, int) else list(value)
    return []


def is_native_llama(folder: Path) -> bool:
    """True when ``folder`` holds a single-file Llama this module can run."""
    try:
        raw = json.loads((folder / "config.json").read_text())
        check_supported(raw)
    except (OSError, ValueError, UnsupportedModelError):
        return False
    return (folder / "model.safetensors").is_file()
