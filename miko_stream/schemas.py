"""JSON Schema files for the contracts, generated from the pydantic models (docs/schemas/*.schema.json)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from miko_stream.contracts import DeadLetter, IntentionEvent, Post

CONTRACTS: dict[str, type[BaseModel]] = {
    "post": Post,
    "intention_event": IntentionEvent,
    "dead_letter": DeadLetter,
}


def render_schemas() -> dict[str, str]:
    """File name -> schema text, deterministic so the files can be checked for drift."""
    return {
        f"{name}.schema.json": json.dumps(model.model_json_schema(), indent=2, sort_keys=True) + "\n"
        for name, model in CONTRACTS.items()
    }


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_schemas().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
