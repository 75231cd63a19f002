"""Toy posts and JSONL files of them, for the tests of commands that read a ``--data`` file."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.models import ENCODER_WORDS


def toy_posts(n: int = 48) -> list[dict]:
    """Separable by words: sarcastic posts say 'yay great', the others 'ugh bad'; captions and intentions too.

    Every word is in the tiny encoder's vocabulary (:func:`helpers.models.save_tiny_encoder`).
    """
    rows = []
    for i in range(n):
        label = i % 2
        text = "yay great the worst rain" if label else "ugh bad the cat"
        rows.append(
            {
                "id": f"p{i}",
                "text": f"{text} {ENCODER_WORDS[i % 7 + 14]}",
                "caption": "a photo of rain" if label else "a photo of a cat",
                "intentions": [
                    {"relation": "xWant", "text": "After posting this, the user wants to laugh."},
                    {"relation": "oReact", "text": f"After viewing this, others feel {'fun' if label else 'bad'}."},
                ],
                "label": label,
            }
        )
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """One JSON object a line; returns ``path``."""
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
