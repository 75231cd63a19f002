"""Training examples: the prompts the graph sends, token for token, with the teacher's answers to learn.

Per post: one **extract** sequence (the extract prompt, prefilled with ``concept:``; the answer is the teacher's
key information in the template's five-line format) and the **generate** prompts of the relations the post has a
reference for (each prefilled with its stem; the answer is the teacher's completion). The generate prompts of a
post differ only after their long common start (system prompt, post, caption, key information), so an example
keeps that start once (``prefix``) and each relation's remainder (``suffixes``): the trainer runs the prefix
once and the ten remainders on its keys and values, which is the same computation as ten full prompts, at a
third of the cost. Every answer ends with the end-of-turn token, so the student learns to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from graph.contracts import KeyInfo, Relation
from graph.knowledge import ReferencePost
from graph.models.local.chat_model import chat_turns
from graph.models.local.engine import render_prompt
from graph.nodes import extract_messages, generate_messages
from graph.normalize import content_keywords, normalize_text
from prompts import PromptSet

if TYPE_CHECKING:
    from graph.models.local.engine import AnyTokenizer

MAX_KEYWORDS = 5


class DistillDataError(ValueError):
    """Reference data that cannot be trained on; the message says why."""


@dataclass(frozen=True)
class Segment:
    """Prompt ids followed by answer ids; loss is taken on the answer ids only."""

    prompt: list[int]
    answer: list[int]


@dataclass(frozen=True)
class PostExample:
    post_id: str
    extract: Segment | None
    prefix: list[int]
    suffixes: list[Segment]

    @property
    def tokens(self) -> int:
        """Tokens the model processes for this post (with the shared prefix once)."""
        extract = len(self.extract.prompt) + len(self.extract.answer) if self.extract else 0
        return extract + len(self.prefix) + sum(len(s.prompt) + len(s.answer) for s in self.suffixes)

    @property
    def answer_tokens(self) -> int:
        extract = len(self.extract.answer) if self.extract else 0
        return extract + sum(len(s.answer) for s in self.suffixes)


def key_info_answer(info: KeyInfo) -> str:
    """The teacher's key information as the extract template asks for it, after its ``concept:`` prefill."""
    keywords = ", ".join(info.keywords[:MAX_KEYWORDS])
    return (
        f" {info.concept}\naction: {info.action}\nobject: {info.object}\nemotion: {info.emotion}\nkeywords: {keywords}"
    )


def serving_key_info(reference: ReferencePost, text: str) -> KeyInfo:
    """The key information the generate prompts show: the teacher's, else the graph's own fallback (keywords)."""
    if reference.key_info is not None:
        return reference.key_info.model_copy(update={"keywords": reference.key_info.keywords[:MAX_KEYWORDS]})
    return KeyInfo(keywords=content_keywords(f"{text} {reference.post.caption or ''}"))


def _common_prefix(prompts: Sequence[list[int]]) -> int:
    """Length of the longest common start, leaving every prompt at least one token of its own."""
    limit = min(len(p) for p in prompts) - 1
    length = 0
    while length < limit and all(p[length] == prompts[0][length] for p in prompts):
        length += 1
    return length


def build_example(
    reference: ReferencePost, prompts: PromptSet, tokenizer: AnyTokenizer, eos_id: int
) -> PostExample | None:
    """The token sequences for one post, or None when it has nothing to learn (no key info, no references)."""
    post = reference.post
    text = normalize_text(post.text)

    def encode_answer(answer: str) -> list[int]:
        return [*tokenizer.encode(answer, add_special_tokens=False), eos_id]

    extract = None
    if reference.key_info is not None:
        turns = chat_turns(extract_messages(prompts, text, post.caption))
        extract = Segment(render_prompt(tokenizer, turns), encode_answer(key_info_answer(reference.key_info)))
    info = serving_key_info(reference, text)
    relations = [r for r in Relation if reference.references.get(r)]
    if not relations:
        return None if extract is None else PostExample(post.id, extract, [], [])
    rendered = [
        render_prompt(tokenizer, chat_turns(generate_messages(prompts, text, post.caption, info, relation)))
        for relation in relations
    ]
    shared = _common_prefix(rendered) if len(rendered) > 1 else 0
    suffixes = [
        Segment(ids[shared:], encode_answer(" " + reference.references[relation][0].strip()))
        for ids, relation in zip(rendered, relations, strict=True)
    ]
    return PostExample(post.id, extract, rendered[0][:shared], suffixes)
