"""Rendering prompt templates into LangChain messages, with post text treated strictly as data."""

from __future__ import annotations

import re
from functools import lru_cache

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from prompts import PromptTemplate

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
    messages: list[BaseMessage] = []
    for role, text in template.render(**values):
        if role == "assistant" and not text:
            continue
        messages.append(_message(role, text) if role != "user" else HumanMessage(content=text))
    return messages


@lru_cache(maxsize=1024)
def _message(role: str, text: str) -> BaseMessage:
    """System messages and prefills repeat for every post (one object each; messages are never modified)."""
    return _ROLE_TO_MESSAGE[role](content=text)
