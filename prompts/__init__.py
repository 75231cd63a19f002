"""Prompt templates and the relation table, as data files, versioned by content hash.

A template file is a list of chat messages: ``### system``, ``### user`` and ``### assistant`` headers, each
followed by its text. A trailing ``### assistant`` message is a *prefill*: backends that can continue an
assistant turn (local transformers models) continue it; others see it as the start of the expected answer.
Placeholders are ``{name}`` (``str.format``); post text is substituted as data, never parsed as a template.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

TEMPLATE_NAMES = ("caption", "extract", "generate", "verify")
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class RelationSpec:
    name: str
    stem: str
    hint: str


@dataclass(frozen=True)
class PromptMessage:
    role: str
    template: str

    def render(self, **values: str) -> str:
        return self.fill(PromptValues(values))

    def fill(self, values: PromptValues) -> str:
        return self.template.format_map(values) if "{" in self.template else self.template


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    messages: tuple[PromptMessage, ...]

    def render(self, **values: str) -> list[tuple[str, str]]:
        """(role, text) pairs with the placeholders filled in."""
        safe = PromptValues(values)
        return [(message.role, message.fill(safe)) for message in self.messages]


@dataclass(frozen=True)
class PromptSet:
    templates: dict[str, PromptTemplate]
    relations: tuple[RelationSpec, ...]
    version: str
    _by_name: dict[str, RelationSpec] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Asked for on every generated and verified completion: one dict lookup, not a scan.
        object.__setattr__(self, "_by_name", {spec.name: spec for spec in self.relations})

    def relation(self, name: str) -> RelationSpec:
        spec = self._by_name.get(name)
        if spec is None:
            raise KeyError(f"unknown relation {name!r}; known: {[r.name for r in self.relations]}")
        return spec


class PromptValues(dict):
    """Values for :meth:`PromptMessage.fill`: unknown placeholders stay visible instead of raising, so a
    template typo shows in output, not a crash."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def parse_template(name: str, text: str) -> PromptTemplate:
    messages: list[PromptMessage] = []
    role: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        header = line.strip()
        if header.startswith("### ") and header[4:] in ROLES:
            if role is not None:
                messages.append(PromptMessage(role, "\n".join(lines).strip()))
            role, lines = header[4:], []
        else:
            lines.append(line)
    if role is None:
        return PromptTemplate(name, (PromptMessage("user", text.strip()),))
    messages.append(PromptMessage(role, "\n".join(lines).strip()))
    return PromptTemplate(name, tuple(messages))


def _files(directory: Path | None) -> dict[str, str]:
    names = [f"{name}.txt" for name in TEMPLATE_NAMES] + ["relations.toml"]
    if directory is not None:
        return {name: (directory / name).read_text(encoding="utf-8") for name in names}
    package = resources.files(__name__)
    return {name: package.joinpath(name).read_text(encoding="utf-8") for name in names}


def version_of(files: dict[str, str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    return digest.hexdigest()[:12]


def load_prompts(directory: Path | None = None) -> PromptSet:
    """Load the templates and relation table (the packaged ones, cached, or a folder with the same file names)."""
    return _packaged() if directory is None else _build(_files(directory))


@cache
def _packaged() -> PromptSet:
    return _build(_files(None))


def _build(files: dict[str, str]) -> PromptSet:
    table = tomllib.loads(files["relations.toml"])
    relations = tuple(RelationSpec(r["name"], r["stem"], r.get("hint", "")) for r in table["relation"])
    templates = {name: parse_template(name, files[f"{name}.txt"]) for name in TEMPLATE_NAMES}
    return PromptSet(templates=templates, relations=relations, version=version_of(files))
