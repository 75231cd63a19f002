"""The native Llama runtime and its tokenizer give what transformers gives, on tiny random-weight models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.models import save_untied_llama
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from transformers import AutoTokenizer, DynamicCache, LlamaForCausalLM

from graph.models.local import ModelLoadError, load_engine
from graph.models.local.chat_tokenizer import ChatTemplateError, ChatTokenizer
from graph.models.local.llama import NativeLlama, load_native_llama
from graph.models.local.llama_config import UnsupportedModelError, is_native_llama, read_config
from graph.models.local.prefill import left_pad, positions
from graph.models.registry import LLMConfig, build_chat_model, shutdown_local_models


def both(folder: Path) -> tuple[NativeLlama, LlamaForCausalLM]:
    return load_native_llama(folder), LlamaForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


ROWS = [[5, 9, 13, 4, 22, 7, 8], [30, 31], [3, 17, 50, 51, 52]]


@pytest.mark.parametrize("which", ["tied", "untied"])
def test_logits_match_transformers_on_a_left_padded_batch(which: str, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = tiny_model_dir if which == "tied" else save_untied_llama(tmp_path)
    native, hf = both(folder)
    ids, mask = left_pad(ROWS, 0)
    with torch.inference_mode():
        mine = native(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=native.new_cache())
        theirs = hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False)
    real = mask.bool()
    assert torch.allclose(mine.logits[real], theirs.logits[real], atol=1e-4)


def test_cached_continuation_matches_transformers(tiny_model_dir: Path) -> None:
    native, hf = both(tiny_model_dir)
    ids, mask = left_pad(ROWS, 0)
    step_ids = torch.tensor([[11], [12], [14]])
    full_mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
    step_positions = positions(full_mask)[:, -1:]
    with torch.inference_mode():
        mine_cache, their_cache = native.new_cache(), DynamicCache(config=hf.config)
        native(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=mine_cache)
        hf(input_ids=ids, attention_mask=mask, position_ids=positions(mask), cache=their_cache, use_cache=True)
        mine = native(input_ids=step_ids, attention_mask=full_mask, position_ids=step_positions, cache=mine_cache)
        theirs = hf(input_ids=step_ids, attention_mask=full_mask, position_ids=step_positions, cache=their_cache,
                    use_cache=True)  # fmt: skip
    assert torch.allclose(mine.logits[:, -1], theirs.logits[:, -1], atol=1e-4)
    real = full_mask.bool()  # padded columns hold whatever each runtime computed for a fully masked row
    mine_keys, their_keys = mine_cache.layers[1].keys.transpose(1, 2), their_cache.layers[1].keys.transpose(1, 2)
    assert torch.allclose(mine_keys[real], their_keys[real], atol=1e-4)


def test_engines_on_both_runtimes_generate_and_score_the_same(tiny_model_dir: Path) -> None:
    native = load_engine(tiny_model_dir, runtime="native")
    hf = load_engine(tiny_model_dir, runtime="transformers")
    assert isinstance(native.model, NativeLlama) and isinstance(hf.model, LlamaForCausalLM)
    assert native.eos_ids == hf.eos_ids and native.pad_id == hf.pad_id
    assert native.yes_ids == hf.yes_ids and native.no_ids == hf.no_ids
    turns = (("system", "Complete the sentence."), ("user", "Post: race happy"), ("assistant", "The user"))
    assert native.render(turns) == hf.render(turns)
    assert native.render(turns[:2]) == hf.render(turns[:2])


async def test_auto_runtime_serves_the_chat_model_natively(tiny_model_dir: Path, tmp_path: Path) -> None:
    chat = [SystemMessage("Complete the sentence."), HumanMessage("Post: marathon friends"), AIMessage("The user")]
    replies = {}
    for runtime in ("auto", "transformers"):
        config = LLMConfig(cache_dir=tmp_path, local_runtime=runtime, local_dtype="fp32")  # exact agreement: fp32
        model = build_chat_model(f"hf:{tiny_model_dir}", config)
        replies[runtime] = (await model.ainvoke(chat, max_tokens=12)).content
        scores = await model.ayes_probability([chat[:2]])  # type: ignore[attr-defined]
        replies[runtime + " score"] = round(scores[0], 4)
        if runtime == "auto":
            assert isinstance(model.handle.engine.model, NativeLlama)  # type: ignore[attr-defined]
        shutdown_local_models()
    assert replies["auto"] == replies["transformers"] and replies["auto"]
    assert replies["auto score"] == replies["transformers score"]


def test_chat_tokenizer_matches_transformers(tiny_model_dir: Path) -> None:
    mine, theirs = ChatTokenizer.from_folder(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (mine.eos_token_id, mine.pad_token_id) == (theirs.eos_token_id, theirs.pad_token_id)
    text = "Post: I ran my first marathon today, yes!  "
    assert mine.encode(text) == theirs.encode(text, add_special_tokens=False)
    ids = [*theirs.encode(text, add_special_tokens=False), theirs.eos_token_id]
    assert mine.decode(ids) == theirs.decode(ids, skip_special_tokens=True)
    chat = [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": " The user wants "}]
    for flags in ({"add_generation_prompt": True}, {"continue_final_message": True}):
        conversation = chat if "continue_final_message" in flags else chat[:1]
        assert mine.apply_chat_template(conversation, **flags) == theirs.apply_chat_template(
            conversation, tokenize=False, **flags
        )


def test_chat_tokenizer_refuses_what_it_cannot_render(tmp_path: Path, tiny_model_dir: Path) -> None:
    mine = ChatTokenizer.from_folder(tiny_model_dir)
    with pytest.raises(ValueError, match="cannot both"):
        mine.apply_chat_template([{"role": "user", "content": "x"}], add_generation_prompt=True,
                                 continue_final_message=True)  # fmt: skip
    bare = ChatTokenizer(mine._tokenizer, {}, None)
    with pytest.raises(ChatTemplateError, match="no chat template"):
        bare.apply_chat_template([{"role": "user", "content": "x"}])


def test_unsupported_configs_go_to_transformers(tmp_path: Path, tiny_model_dir: Path) -> None:
    raw = json.loads((tiny_model_dir / "config.json").read_text())
    assert is_native_llama(tiny_model_dir) and read_config(tiny_model_dir).num_key_value_heads == 2
    for change in ({"model_type": "mistral"}, {"attention_bias": True}, {"rope_parameters": {"rope_type": "llama3"}}):
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**raw, **change}))
        (folder / "model.safetensors").write_bytes(b"")
        assert not is_native_llama(folder)
        with pytest.raises(UnsupportedModelError):
            read_config(folder)
    with pytest.raises(ModelLoadError, match="native runtime"):
        load_engine(folder, runtime="native")
