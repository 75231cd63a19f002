"""The four MIKO nodes: caption, extract, generate, verify. Each takes one post's state, returns its update.

The graph (graph/builder.py) runs a node for every post of a micro-batch at once, so each call here is one
post's share of a batched step: model calls from all posts of the batch meet in the model's batcher.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import structlog
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import BaseMessage, HumanMessage

from graph.classifiers.inputs import LabelledPost
from graph.classifiers.serving import PostClassifier
from graph.contracts import CaptionSource, Intention, KeyInfo, Relation
from graph.images import ImageError, ImageLimits, load_image
from graph.messages import as_data, render_messages
from graph.models.base import Captioner, complete, is_yes_no_scorer
from graph.normalize import content_keywords, normalize_text
from graph.parsing import Completions, clean_completion, full_sentence, parse_key_info, parse_yes_no
from graph.state import Candidate, PostState
from graph.verifier.scorer import LearnedScorer
from prompts import PromptSet

log = structlog.get_logger(__name__)

VerifierMode = Literal["learned", "hybrid", "llm", "heuristic", "none"]
# Generate and verify run ten prompts per post: a shorter caption there cuts the prefill cost that dominates
# local-model time, and keeps small models from copying the caption instead of answering. Extract sees it all.
CONTEXT_CAPTION_CHARS = 320


@dataclass(frozen=True)
class GraphConfig:
    """How the graph behaves; defaults are the README's ("Models": verifier, threshold, rounds)."""

    verifier: VerifierMode = "llm"
    threshold: float = 0.5
    thresholds: Mapping[str, float] = field(default_factory=dict)  # per relation; ``threshold`` for the rest
    max_rounds: int = 2
    max_new_tokens: int = 24
    extract_max_new_tokens: int = 72
    retry_temperature: float = 0.8
    retry_attempts: int = 3
    image_limits: ImageLimits = field(default_factory=ImageLimits)


@dataclass
class GraphDeps:
    """What the nodes call: the chat model, an optional captioner and the prompt set."""

    llm: BaseChatModel
    prompts: PromptSet
    captioner: Captioner | None = None
    config: GraphConfig = field(default_factory=GraphConfig)
    classifiers: Mapping[str, PostClassifier] = field(default_factory=dict)  # name -> student (MIKO_CLASSIFIERS)
    learned: LearnedScorer | None = None  # the learned verifier (modes learned and hybrid)


class MikoNodes:
    """Per-post node functions bound to their dependencies (graph/builder.py runs them for a micro-batch)."""

    def __init__(self, deps: GraphDeps) -> None:
        self.deps = deps
        self.config = deps.config

    async def caption(self, state: PostState) -> PostState:
        post = state["post"]
        if post.caption:
            return {"caption": post.caption, "caption_source": CaptionSource.PROVIDED}
        if post.image is None or self.deps.captioner is None:
            return {"caption": None, "caption_source": CaptionSource.NONE}
        try:
            image = await load_image(post.image, self.config.image_limits)
        except ImageError as error:
            log.warning("image_unusable", post_id=post.id, reason=str(error))
            return {"caption": None, "caption_source": CaptionSource.NONE, "degraded": [f"image: {error}"]}
        result = await self.deps.captioner.describe(image, post.text)
        if result is None or not result.text.strip():
            return {"caption": None, "caption_source": CaptionSource.NONE}
        return {"caption": result.text.strip(), "caption_source": result.source}

    async def extract(self, state: PostState) -> PostState:
        text = normalize_text(state["post"].text)
        messages = extract_messages(self.deps.prompts, text, state.get("caption"))
        [answer] = await complete(self.deps.llm, [messages], max_tokens=self.config.extract_max_new_tokens)
        reply = answer.text
        # The template prefills "concept:"; a backend that continued it returns the rest of that line.
        key_info, ok = parse_key_info(reply if reply.lstrip().lower().startswith("concept") else f"concept: {reply}")
        update: PostState = {"text": text, "key_info": key_info, "pending": list(Relation), "round": 0}
        if not ok:
            keywords = content_keywords(f"{text} {state.get('caption') or ''}")
            update["key_info"] = key_info.model_copy(update={"keywords": key_info.keywords or keywords})
            update["parse_failures"] = 1
            update["degraded"] = ["key_info: model output unparsable, keywords from text"]
        return update

    async def generate(self, state: PostState) -> PostState:
        relations = state["pending"]
        rejected = state.get("rejected", {})
        values = generate_values(state["text"], state.get("caption"), state["key_info"])
        conversations = [
            _generate_for(self.deps.prompts, values, relation, rejected.get(relation, ())) for relation in relations
        ]
        temperature = self.config.retry_temperature if state.get("round", 0) > 0 else 0.0
        # One call for all relations: the backend sees them together (batched and sharing their prefix).
        replies = await complete(
            self.deps.llm, conversations, stop=["\n"], max_tokens=self.config.max_new_tokens, temperature=temperature
        )
        accepted = Completions(item.text for item in state.get("intentions", {}).values() if item.verified)
        candidates: list[Candidate] = []
        for relation, reply in zip(relations, replies, strict=True):
            stem = self.deps.prompts.relation(relation).stem
            cut_short = reply.finish_reason == "length"
            cleaned = clean_completion(reply.text, stem, previous=accepted, truncated=cut_short)
            accepted.add(cleaned.text)
            attempts = state.get("round", 0) + 1
            candidates.append(
                Candidate(relation=relation, text=cleaned.text, parse_failed=cleaned.failed, attempts=attempts)
            )
        failures = sum(c["parse_failed"] for c in candidates)
        return {"candidates": candidates, "parse_failures": failures}

    async def verify(self, state: PostState) -> PostState:
        candidates = state["candidates"]
        scores = await self._scores(state, candidates)
        intentions = dict(state.get("intentions", {}))
        rejected = {relation: list(texts) for relation, texts in state.get("rejected", {}).items()}
        pending: list[Relation] = []
        next_round = state.get("round", 0) + 1
        for candidate, score in zip(candidates, scores, strict=True):
            relation = candidate["relation"]
            threshold = self.config.thresholds.get(relation.value, self.config.threshold)
            verified = self.config.verifier == "none" or (score is not None and score >= threshold)
            verified = verified and not candidate["parse_failed"]
            intention = Intention(
                relation=relation,
                text=candidate["text"],
                score=score,
                verified=verified,
                attempts=candidate["attempts"],
                parse_failed=candidate["parse_failed"],
            )
            intentions[relation] = _better(intentions.get(relation), intention)
            if not verified:
                rejected.setdefault(relation, []).append(candidate["text"])
                if next_round <= self.config.max_rounds:
                    pending.append(relation)
        return {
            "intentions": intentions,
            "rejected": rejected,
            "pending": pending,
            "round": next_round,
            "candidates": [],
        }

    async def classify(self, state: PostState) -> PostState:
        """Every configured student's score for the post, from its text, caption and final intentions."""
        post = state["post"]
        intentions = tuple(
            (item.relation.value, item.text)
            for item in state.get("intentions", {}).values()
            if item.text and not item.parse_failed
        )
        sample = LabelledPost(id=post.id, text=post.text, caption=state.get("caption"), intentions=intentions)
        names = list(self.deps.classifiers)
        scores = await asyncio.gather(*(self.deps.classifiers[name].score(sample) for name in names))
        return {"classifications": {name: round(score, 6) for name, score in zip(names, scores, strict=True)}}

    def needs_classification(self, state: PostState) -> bool:
        """Students are configured, the post's intentions are final, and it has no scores yet."""
        done = state.get("round", 0) > 0 and not state.get("candidates") and not state.get("pending")
        return bool(self.deps.classifiers) and done and "classifications" not in state

    def route_after_verify(self, state: PostState) -> Literal["generate", "__end__"]:
        return "generate" if state.get("pending") else "__end__"

    def route_start(self, state: PostState) -> Literal["caption", "extract"]:
        post = state["post"]
        return "caption" if post.image is not None or post.caption else "extract"

    def finished(self, state: PostState) -> bool:
        """True when the graph has nothing left to do for this post (its event can leave the batch)."""
        if "failure" in state:
            return True
        verified_once = state.get("round", 0) > 0 and not state.get("candidates")
        return verified_once and self.route_after_verify(state) == "__end__" and not self.needs_classification(state)

    async def _scores(self, state: PostState, candidates: Sequence[Candidate]) -> list[float | None]:
        mode = self.config.verifier
        if mode == "none":
            return [None] * len(candidates)
        if mode == "heuristic":
            return [heuristic_score(state, c) for c in candidates]
        if mode in ("learned", "hybrid"):
            if self.deps.learned is None:
                raise RuntimeError(f"verifier mode {mode!r} needs GraphDeps.learned (a learned verifier)")
            learned = await self.deps.learned.score_candidates(state, candidates)
            if mode == "learned":
                return [0.0 if c["parse_failed"] else s for c, s in zip(candidates, learned, strict=True)]
            judged = await self.llm_scores(state, candidates)
            return self.deps.learned.combine(learned, judged, candidates)
        return await self.llm_scores(state, candidates)

    async def llm_scores(self, state: PostState, candidates: Sequence[Candidate]) -> list[float | None]:
        """The LLM judge: P(yes) to the verify prompt (or its parsed answer), per candidate."""
        template = self.deps.prompts.templates["verify"]
        text, caption = as_data(state["text"]), as_data(state.get("caption") or "none", CONTEXT_CAPTION_CHARS)
        conversations = [
            render_messages(template, text=text, caption=caption, statement=self._statement(c)) for c in candidates
        ]
        scores: list[float | None] = [None] * len(candidates)
        if is_yes_no_scorer(self.deps.llm):
            scores = await self.deps.llm.ayes_probability(conversations)  # type: ignore[attr-defined]
        missing = [i for i, score in enumerate(scores) if score is None]
        if missing:
            answers = await complete(self.deps.llm, [conversations[i] for i in missing], max_tokens=3)
            for i, answer in zip(missing, answers, strict=True):
                scores[i] = parse_yes_no(answer.text)
        return [0.0 if c["parse_failed"] else s for c, s in zip(candidates, scores, strict=True)]

    def _statement(self, candidate: Candidate) -> str:
        """The candidate as the sentence the judge reads: its relation's stem, then the completion."""
        return as_data(full_sentence(self.deps.prompts.relation(candidate["relation"]).stem, candidate["text"]))


def extract_messages(prompts: PromptSet, text: str, caption: str | None) -> list[BaseMessage]:
    """The extract prompt for normalised post text (also what `distill generator` trains the model on)."""
    return render_messages(prompts.templates["extract"], text=as_data(text), caption=as_data(caption or "none"))


def generate_messages(
    prompts: PromptSet,
    text: str,
    caption: str | None,
    info: KeyInfo,
    relation: Relation,
    rejected: Sequence[str] = (),
) -> list[BaseMessage]:
    """The generate prompt for one relation, ending in its stem as a prefill (also what `distill` trains on).

    ``rejected`` are earlier completions the verifier turned down: the model is asked for a different one.
    """
    return _generate_for(prompts, generate_values(text, caption, info), relation, rejected)


def generate_values(text: str, caption: str | None, info: KeyInfo) -> dict[str, str]:
    """The generate prompt's post-derived values, made safe once for all of a post's relations."""
    return {
        "text": as_data(text),
        "caption": as_data(caption or "none", CONTEXT_CAPTION_CHARS),
        "concept": as_data(info.concept),
        "action": as_data(info.action),
        "object": as_data(info.object),
        "emotion": as_data(info.emotion),
        "keywords": as_data(", ".join(info.keywords)),
    }


def _generate_for(
    prompts: PromptSet, values: dict[str, str], relation: Relation, rejected: Sequence[str]
) -> list[BaseMessage]:
    spec = prompts.relation(relation)
    messages = render_messages(prompts.templates["generate"], **values, stem=spec.stem, hint=spec.hint)
    if rejected:
        note = "Give a different, better completion than: " + "; ".join(t for t in rejected if t)
        for position, message in enumerate(messages):
            if isinstance(message, HumanMessage):
                messages[position] = HumanMessage(content=f"{message.content}\n{as_data(note, 600)}")
    return messages


_WORD = re.compile(r"[a-z]{3,}")


def heuristic_score(state: PostState, candidate: Candidate) -> float:
    """A cheap plausibility score: a sane length and words shared with the post, caption or key info."""
    if candidate["parse_failed"] or not candidate["text"]:
        return 0.0
    words = _WORD.findall(candidate["text"].lower())
    if not 1 <= len(words) <= 30:
        return 0.2
    info: KeyInfo = state["key_info"]
    context = " ".join(
        [state["text"], state.get("caption") or "", info.concept, info.action, info.object, *info.keywords]
    )
    overlap = len(set(words) & set(_WORD.findall(context.lower())))
    return min(1.0, 0.5 + 0.2 * overlap)


def _better(current: Intention | None, new: Intention) -> Intention:
    """Keep a verified intention, else the higher-scoring attempt."""
    if current is None or new.verified:
        return new
    if current.verified:
        return current
    return new if (new.score or 0.0) >= (current.score or 0.0) else current
