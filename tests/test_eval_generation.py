"""`eval generation`: reference reading, metric definitions checked by hand, and the CLI on saved events."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from helpers.posts import write_jsonl
from typer.testing import CliRunner

from graph.contracts import Intention, IntentionEvent, ModelInfo, Post, Relation
from graph.knowledge import ReferenceDataError, ReferencePost, completion_of, is_heldout, read_reference_posts
from miko_stream.cli import app
from miko_stream.evaluation.generation import Generated, GraphVerdicts, is_copy, score_generation
from miko_stream.evaluation.similarity import bertscore_f1
from prompts import load_prompts

PROMPTS = load_prompts()


class OneHotWords:
    """Every word is its own axis: cosines and greedy token matches can be worked out by hand."""

    name = "one-hot"

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def _ids(self, text: str) -> list[int]:
        return [self.vocab.setdefault(w, len(self.vocab)) for w in re.findall(r"\w+", text.lower())]

    def _matrix(self, ids: list[int]) -> np.ndarray:
        out = np.zeros((len(ids), 64), dtype=np.float32)
        out[np.arange(len(ids)), ids] = 1.0
        return out

    def sentences(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self._matrix(self._ids(t)).sum(axis=0) for t in texts]
        return np.stack([r / (np.linalg.norm(r) or 1.0) for r in rows])

    def tokens(self, texts: Sequence[str]) -> list[np.ndarray]:
        return [self._matrix(self._ids(t)) for t in texts]


def teacher_record(post_id: str, text: str, intentions: dict[str, str]) -> dict:
    return {
        "id": post_id,
        "text": text,
        "caption": "a red car",
        "key_info": {"concept": "car", "action": "buy", "object": "car", "emotion": "joy", "keywords": ["car"]},
        "intentions": [{"relation": r, "text": t} for r, t in intentions.items()],
    }


def event(post_id: str, intentions: list[Intention], warnings: list[str] | None = None) -> IntentionEvent:
    return IntentionEvent(
        post_id=post_id,
        text="",
        intentions=intentions,
        models=ModelInfo(llm="fake", vision="none", verifier="none"),
        prompt_version="x",
        warnings=warnings or [],
    )


@pytest.fixture
def hand_made(tmp_path: Path) -> Path:
    return write_jsonl(
        path=tmp_path / "refs.jsonl",
        rows=[
            teacher_record(
                "a",
                "I love my new car so much",
                {
                    "xWant": "After posting this Tweet, the user wants to drive it every day.",
                    "oEffect": "After viewing this Tweet, others will envy the user.",
                },
            ),
            teacher_record(
                "b", "selling my old bike", {"xWant": "After posting this Tweet, the user wants to sell it."}
            ),
        ],
    )


def test_references_are_the_completions_after_the_stem(hand_made: Path) -> None:
    first, second = read_reference_posts(hand_made, PROMPTS)
    assert first.references == {Relation.X_WANT: ["drive it every day."], Relation.O_EFFECT: ["envy the user."]}
    assert first.post.caption == "a red car" and first.key_info is not None and first.key_info.concept == "car"
    assert second.references == {Relation.X_WANT: ["sell it."]}
    stem = PROMPTS.relation("Open").stem
    assert completion_of(stem, "The user post this tweet because they want fame.") == "they want fame."
    assert completion_of(stem, "no stem here") == "no stem here"


def test_metrics_match_hand_computed_values(hand_made: Path) -> None:
    references = list(read_reference_posts(hand_made, PROMPTS))
    generated = [
        Generated.from_event(
            event(
                "a",
                [
                    Intention(relation=Relation.X_WANT, text="drive it", verified=True),
                    Intention(relation=Relation.O_EFFECT, text="love my new car", verified=True),  # a copy
                    Intention(relation=Relation.X_ATTR, text="", parse_failed=True),
                ],
            )
        ),
        Generated.failure("b"),
    ]
    report = score_generation(list(zip(references, generated, strict=True)), OneHotWords(), GraphVerdicts())
    overall = report.overall
    # 20 intentions; usable: a.xWant and a.oEffect. References: a.xWant, a.oEffect, b.xWant.
    # cos("drive it", "drive it every day") = 2 / (sqrt(2) * 2); "love my new car" vs "envy the user": 0; b: 0.
    assert overall.intentions == 20 and overall.with_reference == 3
    assert overall.similarity == pytest.approx((2 / (math.sqrt(2) * 2)) / 3, abs=1e-6)
    # BERTScore of "drive it" vs "drive it every day": P = 1, R = 1/2, F1 = 2/3.
    assert overall.bertscore == pytest.approx((2 / 3) / 3, abs=1e-6)
    assert overall.parse_failures == pytest.approx(18 / 20)
    assert overall.accepted == pytest.approx(2 / 20)
    assert overall.words == pytest.approx(3.0)
    assert overall.copies == 1
    assert overall.distinct == pytest.approx(1 / 20)  # the copy counts as a failure
    assert report.key_info_rate == pytest.approx(0.5) and report.failed_posts == 1
    want = report.relations[Relation.X_WANT]
    assert want.intentions == 2 and want.similarity == pytest.approx(2 / (math.sqrt(2) * 2) / 2, abs=1e-6)
    assert want.parse_failures == pytest.approx(0.5) and want.distinct == pytest.approx(0.5)
    assert report.last_line() == (
        f"similarity={overall.similarity:.4f} parse_failures={overall.parse_failures:.4f} accepted=0.1000"
    )


def test_distinct_counts_repeats_and_key_info_warning() -> None:
    generated = Generated.from_event(
        event(
            "p",
            [Intention(relation=r, text="eat", verified=False) for r in Relation],
            warnings=["key_info: model output unparsable, keywords from text"],
        )
    )
    report = score_generation(
        [(ReferencePost(Post(id="p", text="x"), None), generated)], OneHotWords(), GraphVerdicts()
    )
    assert report.overall.distinct == pytest.approx(1 / 10)
    assert report.relations[Relation.X_WANT].distinct == pytest.approx(1.0)
    assert report.key_info_rate == 0.0 and report.overall.accepted == 0.0 and report.overall.with_reference == 0


def test_copy_rule_and_bertscore_edges() -> None:
    assert is_copy("sell 10k followers, direct message me", "Sell 10k followers, direct message me for prices!")
    assert not is_copy("buy followers", "sell 10k followers")  # under three words
    assert not is_copy("share their love of cars with friends", "I love my car")
    assert bertscore_f1(np.zeros((0, 4)), np.ones((2, 4))) == 0.0


def test_judged_file_uses_accepted_intentions_and_split_is_stable(tmp_path: Path) -> None:
    path = write_jsonl(
        path=tmp_path / "judged.jsonl",
        rows=[
            {
                "id": "m-1",
                "text": "t",
                "image": "1.jpg",
                "intentions": [
                    {
                        "relation": "xWant",
                        "text": "After posting this Tweet, the user wants to rest.",
                        "human_label": 1,
                    },
                    {
                        "relation": "xNeed",
                        "text": "Before posting this Tweet, the user needs to eat.",
                        "human_label": 0,
                    },
                ],
            }
        ],
    )
    [item] = read_reference_posts(path, PROMPTS)
    assert item.references == {Relation.X_WANT: ["rest."]} and item.source_format == "judged"
    assert item.post.image is None and item.key_info is None
    ids = [f"post-{i}" for i in range(600)]
    held = [i for i in ids if is_heldout(i)]
    assert 60 < len(held) < 140 and held == [i for i in ids if is_heldout(i)]


@pytest.mark.parametrize(
    ("records", "message"),
    [
        ([], "is empty"),
        ([{"id": "x", "text": "t", "intentions": []}], "has no intentions"),
        ([{"id": "x", "text": "t", "intentions": [{"relation": "xWish", "text": "a"}]}], "unknown relation 'xWish'"),
        ([{"text": "t", "intentions": [{"relation": "xWant", "text": "a"}]}], "has no id"),
    ],
)
def test_bad_reference_files_say_what_is_wrong(tmp_path: Path, records: list[dict], message: str) -> None:
    path = write_jsonl(records, tmp_path / "bad.jsonl")
    with pytest.raises(ReferenceDataError, match=message):
        list(read_reference_posts(path, PROMPTS))
    result = CliRunner().invoke(app, ["eval", "generation", "--data", str(path), "--llm", "fake"])
    assert result.exit_code == 2 and message.split("'")[0] in result.output


def test_cli_runs_the_graph_and_rescores_saved_events(hand_made: Path, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    args = ["eval", "generation", "--data", str(hand_made), "--llm", "fake", "--events", str(events)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    last = result.output.strip().splitlines()[-1]
    assert re.fullmatch(r"similarity=[\d.]+ parse_failures=[\d.]+ accepted=[\d.]+", last)
    assert len(events.read_text().splitlines()) == 2
    again = CliRunner().invoke(app, ["eval", "generation", "--data", str(hand_made), "--from-events", str(events)])
    assert again.exit_code == 0 and again.output.strip().splitlines()[-1] == last


def test_learned_judge_scores_each_post_together_and_applies_relation_thresholds() -> None:
    from miko_stream.evaluation.generation import JudgeItem
    from miko_stream.evaluation.judges import LearnedJudge

    class Verifier:
        label = "stub@1"

        def __init__(self) -> None:
            self.calls: list[list[object]] = []

        def score(self, items: list[object]) -> list[float]:
            self.calls.append(items)
            return [0.6 for _ in items]

        def threshold(self, relation: Relation) -> float:
            return 0.5 if relation == Relation.X_WANT else 0.7

    verifier = Verifier()
    judge = LearnedJudge(verifier, lambda *a, **kw: (a, kw))
    items = [
        JudgeItem("post", None, Relation.X_WANT, "rest", False, "p"),
        JudgeItem("post", None, Relation.X_NEED, "eat", True, "p"),
        JudgeItem("post", None, Relation.OPEN, "", True, "p"),
    ]
    assert judge.accepts(items) == [True, False, False] and judge.name == "learned:stub@1"
    assert len(verifier.calls) == 1 and len(verifier.calls[0]) == 2  # empty intentions are never scored
