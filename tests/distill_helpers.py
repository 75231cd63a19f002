"""A tiny random-weight BERT encoder and toy labelled posts, built in the test (no download, milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import BertConfig, BertModel, BertTokenizerFast

WORDS = [
    "yay",
    "great",
    "love",
    "wonderful",
    "best",
    "fun",
    "ugh",
    "bad",
    "hate",
    "awful",
    "worst",
    "boring",
    "the",
    "a",
    "user",
    "post",
    "image",
    "photo",
    "of",
    "cat",
    "dog",
    "wants",
    "will",
    "feels",
    "others",
    "is",
    "because",
    "needs",
    "share",
    "laugh",
    "cry",
    "sun",
    "rain",
    "shows",
    "people",
]


def save_tiny_encoder(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a word-level vocabulary covering :data:`WORDS`."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "#", "@", ".", ",", ":", "!", "?", "(", ")"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


def toy_posts(n: int = 48) -> list[dict]:
    """Separable by words: sarcastic posts say 'yay great', the others 'ugh bad'; captions and intentions too."""
    rows = []
    for i in range(n):
        label = i % 2
        text = "yay great the worst rain" if label else "ugh bad the cat"
        rows.append(
            {
                "id": f"p{i}",
                "text": f"{text} {WORDS[i % 7 + 14]}",
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
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path
