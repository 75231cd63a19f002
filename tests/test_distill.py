"""The sarcasm student: ITC/ITM losses, training, save/load, `distill` CLI; tiny random-weight encoders only."""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path

import pytest
import torch
from helpers.models import save_tiny_encoder
from helpers.posts import toy_posts, write_jsonl
from typer.testing import CliRunner

from graph.classifiers.data import DataError, read_labels, read_posts, split_posts
from graph.classifiers.frozen import FrozenBottom
from graph.classifiers.inputs import InputSet, LabelledPost, encoder_inputs, intentions_text
from graph.classifiers.losses import AuxWeights, itc_loss, itm_pairs
from graph.classifiers.model import SarcasmStudent, StudentConfig, StudentError
from graph.classifiers.train import TrainConfig, train_student
from miko_stream.cli import app


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def toy_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("toy")
    rows = toy_posts(64)
    return write_jsonl(rows[:48], folder / "train.jsonl"), write_jsonl(rows[48:], folder / "eval.jsonl")


def fast_config(encoder_dir: Path, **changes: object) -> TrainConfig:
    settings = dict(encoder=str(encoder_dir), epochs=6, lr=5e-3, head_lr=1e-2, batch_size=8, patience=6, bf16=False)
    return TrainConfig(**{**settings, **changes})  # type: ignore[arg-type]


# -- losses ---------------------------------------------------------------------------------------------------


def test_itc_is_symmetric_and_matches_a_hand_computed_batch() -> None:
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    image = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    scale = torch.tensor(math.log(10.0))
    # logits = 10·T·Iᵀ = [[10, 6], [0, 8]]: rows (text→image) and columns (image→text), each a 2-way softmax.
    rows = math.log1p(math.exp(-4)) + math.log1p(math.exp(-8))
    columns = math.log1p(math.exp(-10)) + math.log1p(math.exp(-2))
    expected = (rows / 2 + columns / 2) / 2
    assert itc_loss(text, image, scale).item() == pytest.approx(expected, rel=1e-5)
    assert itc_loss(image, text, scale).item() == pytest.approx(expected, rel=1e-5)


def test_itc_temperature_is_learned() -> None:
    scale = torch.tensor(math.log(1 / 0.07), requires_grad=True)
    text = torch.nn.functional.normalize(torch.randn(4, 8), dim=-1)
    itc_loss(text, text.roll(1, 0), scale).backward()
    assert scale.grad is not None and scale.grad.item() != 0


def test_itm_negatives_are_in_batch_mismatches_at_the_stated_rate() -> None:
    generator = torch.Generator().manual_seed(0)
    batches = [itm_pairs(16, generator) for _ in range(200)]
    own = torch.arange(16)
    for index, matched in batches:
        assert ((index == own) == matched.bool()).all()  # label 1 exactly when the text keeps its own image
        assert ((index >= 0) & (index < 16)).all()  # negatives come from the same batch
    rate = 1 - torch.cat([matched for _, matched in batches]).float().mean().item()
    assert rate == pytest.approx(0.5, abs=0.03)
    first, again = itm_pairs(16, torch.Generator().manual_seed(3)), itm_pairs(16, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0])


def test_aux_weights_follow_the_paper() -> None:
    both = AuxWeights.parse("itc,itm")
    assert (both.ce, both.itc, both.itm) == pytest.approx((0.8, 0.1, 0.1))
    assert AuxWeights.parse("none").ce == 1.0 and not AuxWeights.parse("none").any
    assert AuxWeights.parse("itm").spec() == "itm"
    with pytest.raises(ValueError, match="unknown auxiliary loss"):
        AuxWeights.parse("itc,mlm")


# -- inputs and data ------------------------------------------------------------------------------------------


def test_intentions_lose_their_stems_and_inputs_combine() -> None:
    intentions = (
        ("xWant", "After posting this Tweet, the user wants to share a laugh."),
        ("xAttr", "The user posts this because the user is bored."),
    )
    assert intentions_text(intentions) == "user wants: share a laugh. user is: bored."
    post = LabelledPost(id="1", text="great #Monday", caption="a rainy day", intentions=intentions)
    assert encoder_inputs(post, InputSet.TEXT, "[SEP]") == ("great monday", None)
    _first, second = encoder_inputs(post, InputSet.ALL, "[SEP]")
    assert second == "a rainy day [SEP] user wants: share a laugh. user is: bored."


def test_split_is_stratified_stable_and_disjoint() -> None:
    posts = [LabelledPost(id=str(i), text="x", label=int(i < 10)) for i in range(100)]
    rest, held = split_posts(posts, 0.2)
    assert {p.id for p in rest}.isdisjoint({p.id for p in held})
    assert sum(p.label for p in held) == 2 and len(held) == 20
    assert split_posts(list(reversed(posts)), 0.2)[1] == sorted(held, key=lambda p: -int(p.id))


def test_read_posts_accepts_events_and_rejects_unlabelled_training_data(tmp_path: Path) -> None:
    event = {"post_id": "e1", "text": "hi", "caption": None, "intentions": [{"relation": "Open", "text": "x"}]}
    path = write_jsonl([event], tmp_path / "events.jsonl")
    assert read_posts(path)[0].intentions == (("Open", "x"),)
    with pytest.raises(DataError, match=r"events.jsonl:1: no `label`"):
        read_posts(path, require_labels=True)


def test_labels_join_events_by_post_id(tmp_path: Path) -> None:
    events = [
        {"post_id": "e1", "text": "yay", "intentions": [{"relation": "Open", "text": "x", "parse_failed": True}]},
        {"post_id": "e2", "text": "ugh", "intentions": [{"relation": "xWant", "text": "cry"}]},
    ]
    path = write_jsonl(events, tmp_path / "events.jsonl")
    labels = read_labels(
        write_jsonl([{"id": "e1", "label": 1}, {"id": "e2", "label": 0}, {"id": "e9"}], tmp_path / "l")
    )
    assert labels == {"e1": 1, "e2": 0}
    posts = read_posts(path, require_labels=True, labels=labels)
    assert [(p.id, p.label) for p in posts] == [("e1", 1), ("e2", 0)]
    assert posts[0].intentions == () and posts[1].intentions == (("xWant", "cry"),)  # parse failures, as served
    with pytest.raises(
        DataError, match=r"events.jsonl: 1 posts have no label in the labels file \(first: .*:2 id e2\)"
    ):
        read_posts(path, labels={"e1": 1})
    with pytest.raises(DataError, match=r"e1 has label 1 but the labels file says 0"):
        read_posts(write_jsonl([{"id": "e1", "text": "t", "label": 1}], tmp_path / "p.jsonl"), labels={"e1": 0})
    with pytest.raises(DataError, match=r"post id e1 is labelled both 0 and 1"):
        read_labels(write_jsonl([{"id": "e1", "label": 1}, {"id": "e1", "label": 0}], tmp_path / "twice.jsonl"))


def test_split_with_labels_writes_labelled_files_and_refuses_unlabelled_ids(tmp_path: Path) -> None:
    events = [{"post_id": f"e{i}", "text": "t", "intentions": [{"relation": "Open", "text": "x"}]} for i in range(10)]
    path = write_jsonl(events, tmp_path / "events.jsonl")
    labels = write_jsonl([{"id": f"e{i}", "label": i % 2, "text": "source"} for i in range(10)], tmp_path / "src.jsonl")
    runner = CliRunner()
    args = ["distill", "split", str(path), "--labels", str(labels), "--out-dir", str(tmp_path / "s"), "--eval-fraction"]
    result = runner.invoke(app, [*args, "0.2"])
    assert result.exit_code == 0, result.output
    held = read_posts(tmp_path / "s" / "eval.jsonl", require_labels=True)
    train = read_posts(tmp_path / "s" / "train.jsonl", require_labels=True)
    assert sorted(p.label for p in held) == [0, 1] and len(train) == 8
    assert all(p.intentions == (("Open", "x"),) for p in train)

    write_jsonl([{"id": "e0", "label": 0}], labels)
    result = runner.invoke(app, [*args, "0.2"])
    assert result.exit_code == 2
    assert "9 posts have no label in the labels file" in result.output and len(result.output.splitlines()) == 1


# -- training, saving, scoring --------------------------------------------------------------------------------


def test_training_lowers_the_loss_on_a_separable_toy_set(encoder_dir: Path, toy_files: tuple[Path, Path]) -> None:
    posts = read_posts(toy_files[0], require_labels=True)
    result = train_student(
        posts, fast_config(encoder_dir, inputs=InputSet.TEXT_CAPTION, aux=AuxWeights.parse("itc,itm"))
    )
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    scores = result.student.score(read_posts(toy_files[1]), bf16=False)
    labels = [p.label for p in read_posts(toy_files[1])]
    assert all((score >= 0.5) == bool(label) for score, label in zip(scores, labels, strict=True))
    assert result.student.config.image_side == "caption"


def test_top_layer_training_over_a_cached_bottom_matches_the_whole_encoder(encoder_dir: Path) -> None:
    student = SarcasmStudent.from_encoder(StudentConfig(encoder=str(encoder_dir), inputs=InputSet.TEXT_CAPTION)).eval()
    posts = [LabelledPost(id=str(i), text=row["text"], caption=row["caption"]) for i, row in enumerate(toy_posts(6))]
    bottom = FrozenBottom(student, 1)
    with torch.no_grad():
        whole = student.pooled(student.tokenize(posts))
        cached = bottom.pooled(posts)
    assert torch.allclose(whole, cached, atol=0.05)
    trainable = {name for name, param in student.encoder.named_parameters() if param.requires_grad}
    assert trainable and all(name.startswith("encoder.layer.1.") for name in trainable)


def test_save_load_round_trip(encoder_dir: Path, toy_files: tuple[Path, Path], tmp_path: Path) -> None:
    result = train_student(read_posts(toy_files[0]), fast_config(encoder_dir, epochs=1, aux=AuxWeights.parse("itm")))
    result.student.save(tmp_path / "student", "# card\n")
    loaded = SarcasmStudent.load(tmp_path / "student")
    posts = read_posts(toy_files[1])
    assert loaded.config == result.student.config
    assert loaded.score(posts, bf16=False) == pytest.approx(result.student.score(posts, bf16=False), abs=1e-6)
    with pytest.raises(StudentError, match="not a saved student"):
        SarcasmStudent.load(tmp_path)


# -- CLI ------------------------------------------------------------------------------------------------------


def test_distill_sarcasm_then_predict_use_the_saved_model(
    encoder_dir: Path, toy_files: tuple[Path, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    out = tmp_path / "student"
    train, held = toy_files
    args = ["distill", "sarcasm", "--train", str(train), "--eval", str(held), "--inputs", "all", "--aux", "itc,itm"]
    args += ["--encoder", str(encoder_dir), "--epochs", "2", "--lr", "2e-3", "--out", str(out), "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert re.fullmatch(r"f1=\d\.\d{4} roc_auc=\d\.\d{4} pr_auc=\d\.\d{4}", result.stdout.strip().splitlines()[-1])
    saved = json.loads((out / "student.json").read_text())
    assert saved["inputs"] == "all" and saved["aux"] == "itc,itm" and saved["trained"]["seed"] == 1
    assert "Data and licences" in (out / "README.md").read_text()

    scored = runner.invoke(app, ["distill", "predict", "--model", str(out), str(held), "-o", str(tmp_path / "s.jsonl")])
    assert scored.exit_code == 0, scored.output
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    expected = SarcasmStudent.load(out).score(read_posts(held))
    assert [row["id"] for row in rows] == [p.id for p in read_posts(held)]
    assert [row["sarcasm"] for row in rows] == pytest.approx(expected, abs=1e-5)


def test_distill_refuses_bad_arguments_with_one_line(
    encoder_dir: Path, toy_files: tuple[Path, Path], tmp_path: Path
) -> None:
    runner = CliRunner()
    train, held = toy_files
    cases = [
        (["--train", str(train), "--eval", str(train)], "in both --train and --eval"),
        (["--train", str(train), "--eval", str(held), "--inputs", "image"], "--inputs must be one of"),
        (["--train", str(tmp_path / "missing.jsonl"), "--eval", str(held)], "no such file"),
        (
            ["--train", str(train), "--eval", str(held), "--encoder", str(tmp_path)],
            "not a local Hugging Face model folder",
        ),
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["distill", "sarcasm", *extra, "--out", str(tmp_path / "o")])
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output
    result = runner.invoke(app, ["distill", "predict", "--model", str(tmp_path), str(held)])
    assert result.exit_code == 2 and "not a saved student" in result.output


# -- the graph's classify option ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_student(encoder_dir: Path, toy_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    result = train_student(read_posts(toy_files[0]), fast_config(encoder_dir, epochs=1, inputs=InputSet.ALL))
    folder = tmp_path_factory.mktemp("student") / "sarcasm"
    result.student.save(folder, "# card\n")
    return folder


def test_graph_option_adds_batched_scores_from_the_saved_model(saved_student: Path) -> None:
    from graph.contracts import ModelInfo, Post
    from graph.models.fake import FakeChatModel
    from graph.nodes import GraphDeps
    from graph.pipeline import MikoPipeline
    from miko_stream.settings import Settings
    from miko_stream.wiring import classifiers
    from prompts import load_prompts

    students = classifiers(Settings(classifiers=f"sarcasm:{saved_student}").classifiers)
    deps = GraphDeps(llm=FakeChatModel(), prompts=load_prompts(), classifiers=students)
    pipe = MikoPipeline(deps, models=ModelInfo(llm="fake", vision="none", verifier="llm:fake"), batch_size=4)
    posts = [Post(id=f"g{i}", text=row["text"], caption=row["caption"]) for i, row in enumerate(toy_posts(10))]

    async def all_posts() -> list:
        return await asyncio.gather(*(pipe.process(post) for post in posts))

    events = asyncio.run(all_posts())
    reference = SarcasmStudent.load(saved_student)
    for post, event in zip(posts, events, strict=True):
        sample = LabelledPost(
            id=post.id,
            text=post.text,
            caption=event.caption,
            intentions=tuple((i.relation.value, i.text) for i in event.intentions if i.text),
        )
        assert set(event.classifications) == {"sarcasm"}
        assert event.classifications["sarcasm"] == pytest.approx(reference.score([sample])[0], abs=0.02)
        assert "classify" in event.timings_ms
    batched = students["sarcasm"]
    assert batched.scored == len(posts) and batched.passes < len(posts)  # posts in flight share forward passes

    plain = MikoPipeline(GraphDeps(llm=FakeChatModel(), prompts=load_prompts()), models=pipe.info.models)
    assert asyncio.run(plain.process(posts[0])).classifications == {}  # off by default


def test_unusable_classifier_setting_is_a_model_spec_error(tmp_path: Path) -> None:
    from graph.models.base import ModelSpecError
    from miko_stream.wiring import classifiers

    with pytest.raises(ModelSpecError, match="expected name:FOLDER"):
        classifiers("sarcasm")
    with pytest.raises(ModelSpecError, match="not a saved student"):
        classifiers(f"sarcasm:{tmp_path}")
    assert classifiers("") == {}


def test_posts_done_early_are_classified_while_others_regenerate(saved_student: Path) -> None:
    from langchain_core.messages import BaseMessage

    from graph.contracts import ModelInfo, Post, Relation
    from graph.models.fake import FakeChatModel, prompt_kind, scripted_output
    from graph.nodes import GraphDeps
    from graph.pipeline import MikoPipeline
    from miko_stream.wiring import classifiers
    from prompts import load_prompts

    rejected: set[str] = set()

    def script(messages: list[BaseMessage]) -> str:  # the judge rejects xNeed of the marathon post once
        text = "\n".join(str(message.content) for message in messages)
        if prompt_kind(messages) == "verify" and "marathon" in text and "the user needs to" in text:
            if "marathon" not in rejected:
                rejected.add("marathon")
                return "no"
            return "yes"
        return scripted_output(messages)

    deps = GraphDeps(
        llm=FakeChatModel(script=script), prompts=load_prompts(), classifiers=classifiers(f"sarcasm:{saved_student}")
    )
    pipe = MikoPipeline(deps, models=ModelInfo(llm="fake", vision="none", verifier="llm:fake"), batch_size=4)
    posts = [Post(id="slow", text="finally finished my first marathon"), Post(id="quick", text="yay great rain")]

    async def both() -> list:
        return await asyncio.gather(*(pipe.process(post) for post in posts))

    slow, quick = asyncio.run(both())
    need = next(item for item in slow.intentions if item.relation == Relation.X_NEED)
    assert need.attempts == 2 and need.verified
    assert set(slow.classifications) == set(quick.classifications) == {"sarcasm"}


def test_grid_report_reads_runs_and_floors_from_the_results_file(
    toy_files: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from bench import distill as grid

    def run(inputs: str, aux: str, seed: int, auc: float) -> dict:
        return {"inputs": inputs, "aux": aux, "seed": seed, "f1": 0.7, "roc_auc": auc, "pr_auc": 0.8, "seconds": 9}

    rows = [run("text", "none", seed, 0.70 + 0.01 * seed) for seed in range(3)]
    rows += [run("text", "itc,itm", seed, 0.90 + 0.01 * seed) for seed in range(3)]
    rows += [run("text+intentions", "none", seed, 0.71 + 0.01 * seed) for seed in range(3)]
    rows += [{"inputs": "text", "aux": "floor", "f1": 0.7, "roc_auc": 0.80, "pr_auc": 0.8}]
    results = write_jsonl(rows, tmp_path / "grid.jsonl")
    train, held = toy_files
    argv = ["distill", "--train", str(train), "--eval", str(held), "--results", str(results), "--report"]
    monkeypatch.setattr("sys.argv", [*argv, "--inputs", "text,text+intentions", "--aux", "none", "--aux", "itc,itm"])
    grid.main()
    out = capsys.readouterr().out
    assert "| text | none | 3 | 0.7000 ± 0.0000 | 0.7100 ± 0.0100 |" in out
    assert "| text | floor: logistic regression on frozen features | - | 0.7000 | 0.8000 | 0.8000 | - |" in out
    assert "itc,itm over none, inputs text: f1 +0.0000  (noise 0.0000), roc_auc +0.2000* (noise 0.0163)" in out
    assert "text+intentions over text, aux none: f1 +0.0000  (noise 0.0000), roc_auc +0.0100  (noise" in out
    assert "text aux itc,itm: f1 +0.0000 (within noise), roc_auc +0.1100 (above)" in out
    assert "text aux none: f1 +0.0000 (within noise), roc_auc -0.0900 (below), pr_auc +0.0000 (within noise)" in out
    assert grid.against_floor([0.79, 0.80, 0.81], 0.80) == "+0.0000 (within noise)"
