"""Rendering prompt templates into LangChain messages, with post text treated strictly as data."""

from __future__ import annotations

import re
from functools import lru_cache

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from prompts import PromptMessage, PromptTemplate, PromptValues

_ROLE_TO_MESSAGE = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
# Chat-template control tokens and our own section headers must never reach a model from post text.
_CONTROL = re.compile(
    r"<\|[^|>]{1,40}\|>|</?s>|\[/?INST\]|^###\s*(system|user|assistant)\b", re.IGNORECASE | re.MULTILINE
)


@lru_cache(maxsize=8192)
def as_data(text: str, max_chars: int = 4000) -> str:
    """Post-derived text made safe to embed in a prompt: control tokens removed, length capped.

    Cached: a post's text, caption and key information go into ten or more prompts each.
    """
    clean = _CONTROL.sub(" ", text).strip()
    if len(clean) <= max_chars:
        return clean
    cut = clean[:max_chars]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + " …"


def render_messages(template: PromptTemplate, **values: str) -> list[BaseMessage]:
    """Messages for a template; a trailing assistant message is kept as a prefill, empty ones are dropped."""
    return _renderer(template).render(PromptValues(values))


class _Renderer:
    """A template's messages, those without placeholders built once (ten or more prompts per post use them)."""

    def __init__(self, template: PromptTemplate) -> None:
        self.template = template
        self.parts = [
            (message, None if "{" in message.template or message.role == "user" else _fixed(message))
            for message in template.messages
        ]

    def render(self, values: PromptValues) -> list[BaseMessage]:
        messages: list[BaseMessage] = []
        for message, fixed in self.parts:
            if fixed is not None:
                messages.append(fixed)
                continue
            text = message.fill(values)
            if message.role == "assistant" and not text:
                continue
            messages.append(HumanMessage(content=text) if message.role == "user" else _message(message.role, text))
        return messages


def _fixed(message: PromptMessage) -> BaseMessage | None:
    return None if message.role == "assistant" and not message.template else _message(message.role, message.template)


_renderers: dict[int, _Renderer] = {}


def _renderer(template: PromptTemplate) -> _Renderer:
    """The template's renderer, made once. Keyed by identity (hashing a template's fields costs a Python call
    per message); the renderer holds its template, so an id is not reused while its entry is there."""
    renderer = _renderers.get(id(template))
    if renderer is None or renderer.template is not template:
        if len(_renderers) >= 256:  # prompt sets loaded from folders again and again: start over
            _renderers.clear()
        renderer = _renderers[id(template)] = _Renderer(template)
    return renderer


@lru_cache(maxsize=1024)
def _message(role: str, text: str) -> BaseMessage:
    """System messages and prefills repeat for every post (one object each; messages are never modified)."""
    return _ROLE_TO_MESSAGE[role](content=text)
