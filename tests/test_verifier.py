"""The learned verifier: training on a tiny synthetic set, artifacts, metrics by hand, the graph end to end."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from graph.contracts import ModelInfo, Post, Relation
from graph.models.fake import FakeChatModel
from graph.nodes import GraphConfig, GraphDeps
from graph.pipeline import MikoPipeline
from graph.verifier import VerifierArtifactError, VerifierItem, completion, load_learned_verifier, read_labelled
from graph.verifier.artifact import default_artifact_dir, read_artifact, save_artifact
from graph.verifier.card import model_card
from graph.verifier.features import FeatureExtractor
from graph.verifier.metrics import auroc, evaluate, expected_calibration_error
from graph.verifier.scorer import LearnedScorer
from graph.verifier.training import TrainConfig, grouped_folds, train_verifier
from index.embeddings import HashingEmbedder
from miko_stream.cli import app
from prompts import load_prompts

TOPICS = ["marathon running race", "coffee morning cafe", "puppy dog park", "exam study library", "concert music band"]


def synthetic_file(path: Path, posts: int = 40) -> Path:
    """Accepted intentions talk about the post's topic; rejected ones about something unrelated (a separable rule)."""
    rng = np.random.default_rng(0)
    with path.open("w") as out:
        for number in range(posts):
            topic = TOPICS[number % len(TOPICS)]
            intentions = []
            for relation in Relation:
                good = rng.random() < 0.6
                words = topic if good else "tax forms spreadsheet invoice"
                text = f"After posting this Tweet, the user wants to talk about the {words} today"
                intentions.append({"relation": relation.value, "text": text, "human_label": int(good)})
            record = {"id": f"p{number}", "text": f"loving the {topic} # fun <user>", "intentions": intentions}
            out.write(json.dumps(record) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("verifier")
    data = synthetic_file(folder / "judged.jsonl")
    result = CliRunner().invoke(
        app, ["verifier", "train", "--data", str(data), "--out", str(folder / "artifact"), "--encoder", "hash:64"]
    )
    assert result.exit_code == 0, result.output
    return folder / "artifact"


def test_trainer_learns_a_separable_rule(tmp_path: Path) -> None:
    items = read_labelled(synthetic_file(tmp_path / "judged.jsonl"))
    trained = train_verifier(items, FeatureExtractor(HashingEmbedder(64)), TrainConfig(folds=4))
    assert trained.metrics.auroc > 0.95
    assert trained.metrics.accuracy > 0.9
    assert set(trained.thresholds) == {r.value for r in Relation}


def test_folds_never_split_a_post() -> None:
    groups = [0, 0, 1, 1, 1, 2, 3, 3, 4, 5]
    folds = grouped_folds(groups, 3, seed=1)
    assert sorted(np.concatenate(folds).tolist()) == list(range(len(groups)))
    for fold in folds:
        inside = {groups[i] for i in fold}
        assert all(groups[i] not in inside for other in folds if other is not fold for i in other)


def test_stem_is_stripped_from_sentences_and_kept_off_completions() -> None:
    assert completion(Relation.X_WANT, "After posting this Tweet, the user wants to go for a run.") == "go for a run"
    assert completion(Relation.O_REACT, "After viewing this, others feel proud") == "proud"
    assert completion(Relation.X_WANT, "go for a run") == "go for a run"


def test_artifact_round_trips(tiny_artifact: Path, tmp_path: Path) -> None:
    verifier = load_learned_verifier(tiny_artifact)
    judged = read_labelled(synthetic_file(tmp_path / "fresh.jsonl", posts=3))
    items = [x.item for x in judged]
    scores = verifier.score(items)
    good = [s for s, x in zip(scores, judged, strict=True) if x.label]
    bad = [s for s, x in zip(scores, judged, strict=True) if not x.label]
    assert min(good) > max(bad)
    meta, head = read_artifact(tiny_artifact)
    copy = save_artifact(tmp_path / "copy", meta, head, model_card(meta))
    again = load_learned_verifier(copy)
    assert again.score(items) == pytest.approx(scores, abs=1e-6)
    assert again.version == verifier.version and again.threshold("xWant") == verifier.threshold(Relation.X_WANT)
    card = (tiny_artifact / "MODEL_CARD.md").read_text()
    assert "Apache-2.0" in card and "AUROC" in card and verifier.version in card


def test_missing_or_corrupt_artifact_names_the_fix(tiny_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(VerifierArtifactError, match="verifier train"):
        load_learned_verifier(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("verifier.json", "MODEL_CARD.md"):
        (broken / name).write_bytes((tiny_artifact / name).read_bytes())
    (broken / "head.safetensors").write_bytes(b"not weights")
    with pytest.raises(VerifierArtifactError, match=r"corrupt.*verifier train"):
        load_learned_verifier(broken)


def test_metrics_match_hand_computed_values() -> None:
    labels = [1, 1, 0, 1, 0, 0]
    scores = [0.9, 0.4, 0.4, 0.8, 0.1, 0.7]
    # 9 positive/negative pairs: 0.9 and 0.8 beat all three negatives (6), 0.4 beats 0.1, ties 0.4 (half), loses to 0.7
    assert auroc(labels, scores) == pytest.approx(7.5 / 9)
    # bins: [0.1] -> |0-0.1|; [0.4,0.4] -> |0.5-0.4|*2; [0.7] -> |0-0.7|; [0.8] -> 0.2; [0.9] -> 0.1
    assert expected_calibration_error(np.array(labels), np.array(scores)) == pytest.approx(
        (0.1 + 0.2 + 0.7 + 0.2 + 0.1) / 6
    )
    accepted = [s >= 0.5 for s in scores]  # accepts 0.9, 0.8, 0.7
    metrics = evaluate(labels, scores, accepted, ["xWant", "xWant", "xWant", "oWant", "oWant", "oWant"])
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.precision_accepted == pytest.approx(2 / 3)
    assert metrics.f1 == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
    assert metrics.rejection_precision == pytest.approx(2 / 3)  # rejected 0.4(1), 0.4(0), 0.1(0)
    assert metrics.rejection_recall == pytest.approx(2 / 3)
    assert metrics.auroc_by_relation["xWant"] == pytest.approx(0.75)  # 0.9>0.4, 0.4 tie 0.4
    assert metrics.auroc_by_relation["oWant"] == pytest.approx(1.0)


def test_eval_verifier_prints_figures_and_a_last_line(tmp_path: Path) -> None:
    data = tmp_path / "hand.jsonl"
    rows = [
        {
            "id": "a",
            "text": "finished my first marathon",
            "intentions": [
                {
                    "relation": "xWant",
                    "text": "After posting this, the user wants to celebrate the marathon",
                    "human_label": 1,
                },
                {"relation": "oWant", "text": "After viewing this, others want to eat", "human_label": 0},
            ],
        },
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = CliRunner().invoke(app, ["eval", "verifier", "--data", str(data), "--verifier", "none"])
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert last == "auroc=0.5000 accuracy=0.5000 f1=0.6667"  # accepts both: AUROC of all-tied scores is 0.5


def test_eval_verifier_refuses_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "text": "t", "intentions": [{"relation": "nope", "text": "t", "human_label": 1}]}\n')
    result = CliRunner().invoke(app, ["eval", "verifier", "--data", str(bad), "--verifier", "heuristic"])
    assert result.exit_code == 2
    assert "bad.jsonl:1" in result.output


def test_graph_uses_the_learned_verifier_end_to_end(tiny_artifact: Path) -> None:
    verifier = load_learned_verifier(tiny_artifact)
    scorer = LearnedScorer(verifier)
    config = GraphConfig(verifier="learned", thresholds=dict(verifier.meta.thresholds), max_rounds=1)
    deps = GraphDeps(llm=FakeChatModel(), prompts=load_prompts(), config=config, learned=scorer)
    models = ModelInfo(llm="fake", vision="none", verifier=f"learned:{verifier.label}")
    pipe = MikoPipeline(deps, models=models, deadline_s=30)

    async def both():
        posts = [Post(id=f"e{i}", text=f"loving the {topic} # fun") for i, topic in enumerate(TOPICS[:3])]
        return await asyncio.gather(*(pipe.process(post) for post in posts))

    events = asyncio.run(both())
    for event in events:
        assert event.models.verifier == f"learned:{verifier.label}"
        expected = verifier.score(
            [VerifierItem(event.text, None, i.relation, i.text, post_id=event.post_id) for i in event.intentions]
        )
        for intention, score in zip(event.intentions, expected, strict=True):
            assert intention.score is not None and 0.0 <= intention.score <= 1.0
            if not intention.parse_failed and intention.attempts == 2:
                assert intention.score == pytest.approx(score, abs=1e-6)
            assert intention.verified == (
                not intention.parse_failed and intention.score >= verifier.threshold(intention.relation)
            )
    assert not math.isnan(events[0].intentions[0].score or 0.0)


def test_learned_is_the_default_when_its_artifact_is_present(monkeypatch: pytest.MonkeyPatch) -> None:
    from graph.verifier import default_artifact_present
    from miko_stream.settings import Settings

    monkeypatch.delenv("MIKO_VERIFIER", raising=False)
    assert default_artifact_present(), "the package ships its default artifact"
    assert Settings().verifier == "learned"
    meta, _ = read_artifact(default_artifact_dir())
    assert meta.encoder == "all-MiniLM-L6-v2" and meta.thresholds.keys() == {r.value for r in Relation}


def test_asking_for_learned_without_an_artifact_is_a_one_line_error(tmp_path: Path) -> None:
    data = synthetic_file(tmp_path / "judged.jsonl", posts=2)
    result = CliRunner().invoke(
        app, ["eval", "verifier", "--data", str(data), "--verifier", "learned", "--verifier-path", str(tmp_path)]
    )
    assert result.exit_code == 2
    assert "verifier train" in result.output
