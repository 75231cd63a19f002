"""The model card saved beside a student: what it read, what it was trained and evaluated on, how well it did."""

from __future__ import annotations

import json
from typing import Any

from graph.classifiers.model import StudentConfig

LICENCES = (
    "Training data: MIKO's release (teacher intentions, captions; zzq2000/MIKO, Apache-2.0) and MMSD / MMSD2.0 "
    "labels (research releases; Cai et al. 2019, Qin et al. 2023). Encoder: all-MiniLM-L6-v2 (Apache-2.0) unless "
    "another was given. Use for research and moderation assistance; a score is a model's guess, not a verdict."
)


def model_card(config: StudentConfig, eval_metrics: dict[str, float] | None) -> str:
    """Markdown: purpose, inputs, image side, training run, metrics, numerics, data and licences."""
    trained: dict[str, Any] = config.trained
    lines = [
        f"# {config.task} student ({config.inputs}, aux {config.aux})",
        "",
        "Scores P(sarcastic) for a social-media post; distilled by `miko-stream distill sarcasm` from labelled posts",
        "and, when its inputs include them, the intentions a teacher (or `miko-stream process`) wrote for each post.",
        "",
        f"- encoder: `{config.encoder}`, mean-pooled, max {config.max_length} tokens",
        f"- inputs: `{config.inputs}` (text first; caption/intentions second and truncated first)",
        f"- auxiliary losses: `{config.aux}`; image side: `{config.image_side}`"
        + (f" (image encoder `{config.image_encoder}`)" if config.image_encoder else "")
        + (" (frozen caption features through a separate projection)" if config.image_side == "caption" else ""),
        f"- decision threshold: {config.threshold}",
        "",
        "## Training",
        "",
        "```json",
        json.dumps(trained, indent=2, default=str),
        "```",
    ]
    if eval_metrics:
        lines += ["", "## Evaluation (held-out file)", "", "| metric | value |", "|---|---|"]
        lines += [f"| {name} | {value:.4f} |" for name, value in eval_metrics.items()]
    lines += ["", "## Data and licences", "", LICENCES, ""]
    return "\n".join(lines)
