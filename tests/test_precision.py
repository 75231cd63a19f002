"""bf16 local models: chosen from the CPU's flags, overridable, and numerically close to fp32 (tiny models).

The real SmolLM2's bf16-vs-fp32 figures (greedy agreement, max |ΔP(yes)|) come from the slow test at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from graph.models.local import load_engine
from graph.models.local.engine import LocalEngine, ScoreRequest
from graph.models.local.llama import NativeLlama, grouped_attention, load_native_llama
from graph.models.local.precision import cpu_flags, resolve_precision
from graph.models.local.prefill import left_pad, positions
from graph.models.spec import CallOptions
from miko_stream.settings import Settings
from miko_stream.wiring import llm_config

ROWS = [[5, 9, 13, 4, 22, 7, 8], [30, 31], [3, 17, 40, 41, 42]]


def test_auto_picks_bf16_only_where_the_cpu_multiplies_it(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    assert {"avx512f", "avx512_bf16"} <= cpu_flags(cpuinfo)
    assert cpu_flags(tmp_path / "missing") == set()
    assert resolve_precision("auto", {"avx512f", "avx512_bf16"}) == "bf16"
    assert resolve_precision("auto", {"amx_bf16", "amx_tile"}) == "bf16"
    assert resolve_precision("auto", {"avx2", "avx512f"}) == "fp32"  # emulated bf16 is slower than fp32
    assert resolve_precision("fp32", {"avx512_bf16"}) == "fp32"
    assert resolve_precision("bf16", set()) == "bf16"
    with pytest.raises(ValueError, match="auto, bf16 or fp32"):
        resolve_precision("fp16")  # type: ignore[arg-type]


def test_miko_local_dtype_reaches_the_model_config(monkeypatch: pytest.MonkeyPatch) -> None:
    assert llm_config(Settings()).local_dtype == "auto"
    monkeypatch.setenv("MIKO_LOCAL_DTYPE", "fp32")
    assert llm_config(Settings()).local_dtype == "fp32"
    monkeypatch.setenv("MIKO_LOCAL_DTYPE", "fp16")
    with pytest.raises(ValidationError):
        Settings()


def logits_of(folder: Path, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    model = load_native_llama(folder, dtype)
    ids, mask = left_pad(ROWS, 0)
    cache = model.new_cache()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=cache).logits
    assert cache.layers[0].keys is not None and cache.layers[0].keys.dtype == torch.float32  # cache stays fp32
    return logits[mask.bool()], logits


def test_bf16_runs_only_the_matrix_products_in_bf16_and_stays_close_to_fp32(tiny_model_dir: Path) -> None:
    model = load_native_llama(tiny_model_dir, torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert model.blocks[0].qkv.dtype == model.embed.dtype == torch.bfloat16
    assert model.blocks[0].input_norm.dtype == model.norm.dtype == torch.float32
    exact, _ = logits_of(tiny_model_dir, torch.float32)
    rounded, raw = logits_of(tiny_model_dir, torch.bfloat16)
    assert raw.dtype == torch.float32  # logits leave the model in fp32
    # this tiny model has huge random weights (init 0.5), so bf16's rounding shows far more than on a real one
    assert (rounded - exact).abs().max() < 0.15 * exact.abs().max()
    assert (rounded.softmax(-1) - exact.softmax(-1)).abs().max() < 0.1
    assert torch.equal(rounded.argmax(-1), exact.argmax(-1))


def test_grouped_attention_matches_torch_attention_with_padding_and_a_cached_prefix() -> None:
    """The prompt-pass attention (bf16 products) against torch's fp32 attention on the same masked inputs."""
    torch.manual_seed(3)
    rows, heads, kv_heads, new, cached, dim = 3, 6, 2, 5, 4, 16
    query = torch.randn(rows, heads, new, dim)
    keys, values = torch.randn(rows, kv_heads, cached + new, dim), torch.randn(rows, kv_heads, cached + new, dim)
    # full rows; left padding; padding in the middle, where the first new tokens see nothing (fully masked)
    mask_2d = torch.tensor([[1] * 9, [0, 0, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1, 1]])
    mask = NativeLlama._additive_mask(mask_2d, new)  # the model's own mask
    expected = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, enable_gqa=True)
    exact = grouped_attention(query, keys, values, mask, torch.float32)
    rounded = grouped_attention(query, keys, values, mask, torch.bfloat16)
    assert rounded.dtype == torch.bfloat16 and torch.isfinite(rounded).all()
    assert torch.allclose(exact, expected, atol=1e-5)
    assert (rounded.float() - expected).abs().max() < 0.05


def yes_probability(engine: LocalEngine, turns: tuple[tuple[str, str], ...]) -> float:
    """P(yes) straight through the engine's prompt pass (no batcher)."""
    (score,) = engine.start([ScoreRequest(turns)])
    assert isinstance(score, float)
    return score


@pytest.mark.parametrize("runtime", ["native", "transformers"])
def test_bf16_engines_score_like_fp32(runtime: str, tiny_model_dir: Path) -> None:
    exact = load_engine(tiny_model_dir, runtime=runtime, dtype="fp32")  # type: ignore[arg-type]
    rounded = load_engine(tiny_model_dir, runtime=runtime, dtype="bf16")  # type: ignore[arg-type]
    assert (exact.precision, rounded.precision) == ("fp32", "bf16")
    for post in ("race happy marathon", "friends", "happy happy race friends marathon"):
        turns = (("system", "Answer yes or no."), ("user", f"Post: {post}. Is it about a race?"))
        assert yes_probability(rounded, turns) == pytest.approx(yes_probability(exact, turns), abs=0.05)


@pytest.mark.usefixtures("fresh_local_engines")
@pytest.mark.parametrize("runtime", ["native", "transformers"])
async def test_bf16_generation_runs_through_slots_and_sampling(
    runtime: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    import asyncio

    from langchain_core.messages import AIMessage, HumanMessage

    from graph.models.registry import LLMConfig, build_chat_model

    config = LLMConfig(cache_dir=tmp_path, local_runtime=runtime, local_dtype="bf16", max_batch_size=2)  # type: ignore[arg-type]
    model = build_chat_model(f"hf:{tiny_model_dir}", config)
    chats = [[HumanMessage(f"Post: {p}"), AIMessage("The user")] for p in ("race", "happy friends", "marathon race")]
    replies = await asyncio.gather(
        *(model.ainvoke(c, max_tokens=6) for c in chats), model.ainvoke(chats[0], max_tokens=6, temperature=0.9)
    )
    assert model.handle.engine.precision == "bf16"  # type: ignore[attr-defined]
    assert all(r.usage_metadata["output_tokens"] >= 1 for r in replies)
    again = await model.ainvoke(chats[0], max_tokens=6)  # greedy: the same whether batched or alone
    assert again.content == replies[0].content


REAL_POSTS = [
    (
        "just finished my first marathon!!! legs are dead but so happy #running",
        "marathon",
        "finishing",
        "race",
        "happy",
    ),
    ("oh great, another monday. just what i needed <user>", "monday", "starting", "week", "annoyed"),
    ("whew ... that extra 5 miles today to the grocery store & back wore me out", "cycling", "riding", "bike", "tired"),
    ("my cat knocked my coffee onto the laptop again. best morning ever", "cat", "knocking", "coffee", "frustrated"),
]
STATEMENTS = ["the user feels proud.", "the user wants to sell a car.", "others will laugh.", "the user is tired."]


@pytest.mark.slow_model
async def test_real_smollm2_bf16_agrees_with_fp32() -> None:
    """Greedy outputs and P(yes) of the real SmolLM2 in bf16 against fp32, on fixed prompts (figures: README)."""
    from helpers.models import prompt_messages, real_cache_dir

    from graph.models.registry import LLMConfig, build_chat_model, shutdown_local_models
    from prompts import load_prompts

    stems = [r.stem for r in load_prompts().relations]
    generate, verify = [], []
    for text, concept, action, obj, emotion in REAL_POSTS:
        info = dict(text=text, caption="none", concept=concept, action=action, object=obj, emotion=emotion)
        generate += [prompt_messages("generate", **info, keywords=concept, stem=stem, hint="") for stem in stems[:5]]
        verify += [
            prompt_messages("verify", text=text, caption="none", statement=f"{stems[4]} {s}") for s in STATEMENTS
        ]
    results = {}
    for dtype in ("fp32", "bf16"):
        model = build_chat_model("smollm2", LLMConfig(cache_dir=real_cache_dir(), local_dtype=dtype))  # type: ignore[arg-type]
        answers = await model.abatch(generate, stop=["\n"], max_tokens=16)
        scores = await model.ayes_probability(verify)  # type: ignore[attr-defined]
        results[dtype] = ([a.content for a in answers], scores)
        shutdown_local_models()
    (texts32, scores32), (texts16, scores16) = results["fp32"], results["bf16"]
    same = sum(a == b for a, b in zip(texts32, texts16, strict=True))
    delta = max(abs(a - b) for a, b in zip(scores32, scores16, strict=True))
    low, high = min(scores32), max(scores32)
    print(f"\nbf16 vs fp32 on SmolLM2: greedy outputs identical {same}/{len(texts32)}, max |dP(yes)| {delta:.4f}")
    print(f"over {len(scores32)} verify prompts (P(yes) in fp32 from {low:.3f} to {high:.3f})")
    assert same >= 0.8 * len(texts32)  # measured: 19/20
    assert delta < 0.02  # measured: 0.0048


def test_incremental_stop_detection_matches_decoding_the_whole_text(tiny_model_dir: Path) -> None:
    """Each step decodes only the new tokens, yet stops where a search of the whole decoded text would."""
    import random

    from graph.models.local.engine import _first_stop, _Row

    engine = load_engine(tiny_model_dir, runtime="native", dtype="fp32")
    vocab = [i for i in range(len(engine.tokenizer._tokenizer.get_vocab())) if i not in engine.eos_ids]
    rng = random.Random(7)
    stops = ("ar", "e t", "\n", "yes")
    checked = 0
    for _ in range(200):
        row = _Row(0, [1], CallOptions(max_new_tokens=99, stop=stops))
        for _ in range(30):
            row.tokens.append(rng.choice(vocab))
            whole = engine.tokenizer.decode(row.tokens, skip_special_tokens=True)
            expected = _first_stop(whole, stops, 0)
            completion = engine._finished(row)
            assert (completion is not None) == (expected >= 0), (row.tokens, whole)
            if completion is not None:
                assert completion.text == whole[:expected] and completion.finish_reason == "stop"
                checked += 1
                break
    assert checked > 100
