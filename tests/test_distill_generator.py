"""`distill generator` on a tiny random Llama built in the test: it learns, saves, serves, resumes, refuses bad data."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
import torch
from langchain_core.messages import BaseMessage
from typer.testing import CliRunner

from graph.contracts import KeyInfo, Relation
from graph.distill.artifact import read_distilled
from graph.distill.examples import Segment, build_example, key_info_answer
from graph.distill.run import DistillRequest, distill_generator, load_training_posts
from graph.distill.trainer import TrainConfig, _answer_loss, _padded, _parts, post_loss
from graph.knowledge import is_heldout, read_reference_posts
from graph.models.registry import LLMConfig, build_chat_model
from graph.nodes import generate_messages
from graph.parsing import parse_key_info
from miko_stream.cli import app
from prompts import load_prompts

PROMPTS = load_prompts()
pytestmark = pytest.mark.usefixtures("fresh_local_engines")


@pytest.fixture(scope="module")
def student(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shared tiny Llama with room for the real prompts (the tokenizer is tiny, so prompts are long)."""
    folder = tmp_path_factory.mktemp("student")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 4096
    (folder / "config.json").write_text(json.dumps(config))
    return folder


TOY_RELATIONS = (Relation.X_WANT, Relation.O_EFFECT)
TOY_INFO = {"concept": "race", "action": "run", "object": "race", "emotion": "happy", "keywords": ["race"]}


def toy_posts(path: Path, count: int = 5) -> Path:
    """Posts whose teacher always answers the same way: a pattern a few steps can learn (two relations, for speed)."""
    ids = [f"toy-{i}" for i in range(200) if not is_heldout(f"toy-{i}")][:count]
    records = [
        {
            "id": post_id,
            "text": "I ran my first marathon today",
            "caption": "a runner",
            "key_info": {
                "concept": "race",
                "action": "run",
                "object": "race",
                "emotion": "happy",
                "keywords": ["race"],
            },
            "intentions": [
                {"relation": r.value, "text": f"{PROMPTS.relation(r).stem} share the post with friends."}
                for r in TOY_RELATIONS
            ],
        }
        for post_id in ids
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def distill(student: Path, data: Path, out: Path, **config: object) -> object:
    settings = {"lora_rank": 4, "learning_rate": 5e-2, "posts_per_step": 1, "warmup_steps": 1, "bf16": False}
    settings.update(config)
    request = DistillRequest(
        data=data,
        out=out,
        base=f"hf:{student}",
        base_folder=student,
        validation_posts=1,
        resume=bool(settings.pop("resume", False)),
        config=TrainConfig(**settings),  # type: ignore[arg-type]
    )
    return distill_generator(request, status=lambda _: None)


def test_key_info_answer_parses_back() -> None:
    info = KeyInfo(concept="race day", action="run", object="marathon", emotion="joy", keywords=["race", "run", "joy"])
    parsed, ok = parse_key_info("concept:" + key_info_answer(info))
    assert ok and parsed == info


def test_examples_are_the_graph_prompts_and_sharing_the_prefix_changes_nothing(student: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(student))
    [reference, *_] = read_reference_posts(toy_posts(tmp_path / "toy.jsonl"), PROMPTS)
    example = build_example(reference, PROMPTS, tokenizer, tokenizer.eos_token_id)
    assert example is not None and len(example.suffixes) == 2 and example.extract is not None
    engine = build_chat_model(f"hf:{student}", LLMConfig(cache_dir=tmp_path)).handle.engine  # type: ignore[attr-defined]
    from graph.models.local import chat_turns

    messages: list[BaseMessage] = generate_messages(
        PROMPTS,
        "I ran my first marathon today",
        "a runner",
        reference.key_info,
        Relation.O_EFFECT,  # type: ignore[arg-type]
    )
    assert example.prefix + example.suffixes[1].prompt == engine.render(chat_turns(messages))
    assert example.suffixes[1].answer[-1] == tokenizer.eos_token_id
    model = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
    with torch.no_grad():
        shared = float(post_loss(model, example, 0))
        decoder, head = _parts(model)
        rows = [Segment(example.prefix + s.prompt, s.answer) for s in example.suffixes] + [example.extract]
        ids, mask = _padded(rows, 0)
        full = float(_answer_loss(head, decoder(input_ids=ids, attention_mask=mask).last_hidden_state, rows))
    assert shared == pytest.approx(full, rel=1e-4)


def test_training_lowers_the_loss_and_the_result_serves_through_the_spec(student: Path, tmp_path: Path) -> None:
    out = tmp_path / "distilled"
    result = distill(student, toy_posts(tmp_path / "toy.jsonl"), out, max_steps=4)
    assert result.steps == 4  # type: ignore[attr-defined]
    assert result.validation_loss_after < 0.7 * result.validation_loss_before  # type: ignore[attr-defined]
    info = read_distilled(out)
    assert info.mode == "lora" and (out / "adapter_model.safetensors").is_file() and (out / "README.md").is_file()
    assert "Apache-2.0" in (out / "README.md").read_text()
    conversation = generate_messages(PROMPTS, "I ran my first marathon today", "a runner", KeyInfo(), Relation.X_WANT)
    replies = {}
    for runtime in ("native", "transformers"):
        config = LLMConfig(cache_dir=tmp_path / "cache", local_runtime=runtime, local_dtype="fp32")  # type: ignore[arg-type]
        model = build_chat_model(f"distilled:{out}", config)
        assert model.spec == f"distilled:{out} run={info.run_id}"  # type: ignore[attr-defined]
        [reply] = asyncio.run(model.acomplete([conversation], max_tokens=8))  # type: ignore[attr-defined]
        replies[runtime] = reply.text
    assert replies["native"] == replies["transformers"] and replies["native"].strip()


def test_merged_weights_equal_peft_merge(student: Path, tmp_path: Path) -> None:
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "distilled"
    distill(student, toy_posts(tmp_path / "toy.jsonl"), out, max_steps=2)
    from graph.distill.artifact import served_folder

    merged = load_file(served_folder(out, student, tmp_path / "cache") / "model.safetensors")
    base = AutoModelForCausalLM.from_pretrained(str(student), dtype=torch.float32)
    reference = PeftModel.from_pretrained(base, str(out)).merge_and_unload().state_dict()
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.equal(merged[name], load_file(student / "model.safetensors")[name])
    assert torch.allclose(merged[name], reference[name], atol=1e-6)


def test_resume_continues_from_the_checkpoint(student: Path, tmp_path: Path) -> None:
    data, out = toy_posts(tmp_path / "toy.jsonl"), tmp_path / "distilled"
    distill(student, data, out, max_steps=2, save_every=1)
    first = json.loads((out / "checkpoint" / "state.json").read_text())
    assert first["step"] == 2 and len(first["losses"]) == 2
    with pytest.raises(ValueError, match="other settings"):
        distill(student, data, out, max_steps=3, resume=True, seed=7)
    result = distill(student, data, out, max_steps=3, resume=True)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert result.steps == 3 and state["run_id"] == first["run_id"]  # type: ignore[attr-defined]
    assert state["losses"][:2] == first["losses"] and len(state["losses"]) == 3


def test_split_never_trains_on_heldout_posts(tmp_path: Path) -> None:
    ids = [f"p{i}" for i in range(60)]
    path = tmp_path / "d.jsonl"
    record = {"text": "t", "intentions": [{"relation": "xWant", "text": "After posting this, the user wants to go."}]}
    path.write_text("".join(json.dumps({"id": i, **record}) + "\n" for i in ids))
    train, validation = load_training_posts(path, PROMPTS, None, 5)
    seen = [p.post.id for p in train + validation]
    assert len(validation) == 5 and not any(is_heldout(i) for i in seen)
    assert sorted(seen) == sorted(i for i in ids if not is_heldout(i))


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("", "is empty"),
        ('{"id": "a", "text": "t", "intentions": []}\n', "has no intentions"),
        ('{"id": "a", "text": "t", "intentions": [{"relation": "xWish", "text": "x"}]}\n', "unknown relation"),
    ],
)
def test_bad_data_is_refused_with_one_line(student: Path, tmp_path: Path, lines: str, message: str) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(lines)
    args = ["distill", "generator", "--data", str(data), "--out", str(tmp_path / "o"), "--base", f"hf:{student}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow_model
def test_the_shipped_adapter_is_the_default_and_serves() -> None:
    """`smollm2-miko`: the packaged adapter merged into the real SmolLM2, named with its training run."""
    from graph.distill.artifact import PACKAGED_DISTILLED, default_llm
    from miko_stream.settings import Settings

    assert default_llm() == "smollm2-miko" == Settings().llm
    run_id = read_distilled(PACKAGED_DISTILLED).run_id
    model = build_chat_model("smollm2-miko", LLMConfig(cache_dir=Settings().cache_dir))
    assert model.spec == f"smollm2-miko run={run_id}"  # type: ignore[attr-defined]
    info = KeyInfo(concept="marathon", action="run", object="race", emotion="proud", keywords=["marathon", "race"])
    conversation = generate_messages(PROMPTS, "ran my first marathon today!", None, info, Relation.X_WANT)
    [reply] = asyncio.run(model.acomplete([conversation], stop=["\n"], max_tokens=24))  # type: ignore[attr-defined]
    assert reply.text.strip() and reply.finish_reason == "stop"
