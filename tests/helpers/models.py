"""Tiny random-weight models built in the test (no download, milliseconds), and what they eat.

Real transformers classes with random weights: enough to run every code path, never to judge quality.
torch, transformers, tokenizers and gguf are imported inside the builders.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import string
import threading
from collections.abc import AsyncIterator, Awaitable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageDraw, ImageFont

from helpers.wait import wait_until

if TYPE_CHECKING:
    from langchain_core.messages import BaseMessage

    from graph.models.local import LocalChatModel
    from graph.models.local.batcher import Running

# ChatML, as SmolLM2 uses it; the tiny tokenizers below know its markers.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def png(size: tuple[int, int] = (8, 6), color: str = "red", text: str | None = None) -> bytes:
    """A PNG of one colour, with ``text`` drawn in black when given (for OCR)."""
    image = Image.new("RGB", size, color)
    if text:
        ImageDraw.Draw(image).text((10, 20), text, fill="black", font=ImageFont.load_default(size=36))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------- Llama

LLAMA_CORPUS = [
    "After posting this, the user wants to share the post with friends and celebrate.",
    "Answer yes or no. Yes. No. yes no yes no",
    "Post: I ran my first marathon today and I am so happy about it",
    "The user posted this because the user is proud of the race.",
] * 5


def save_tiny_model(folder: Path) -> Path:
    """A 2-layer, 32-wide Llama and a word-piece tokenizer whose every token decodes to plain ASCII.

    The session fixture ``tiny_model_dir`` (conftest) builds it once; prefer that to calling this.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<unk>", "<pad>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=list(string.printable),
    )
    tokenizer.train_from_iterator(LLAMA_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="<|im_end|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        bos_token_id=None,
        initializer_range=0.5,  # big weights: context matters
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def save_untied_llama(folder: Path) -> Path:
    """A 3-layer Llama with its own output layer (not tied to the embeddings) and a non-default RoPE base."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=6,
        num_key_value_heads=3, max_position_embeddings=128, tie_word_embeddings=False, initializer_range=0.4,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, eos_token_id=2,
    )  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


def write_tiny_gguf(path: Path) -> Path:
    """A 2-layer llama GGUF with a byte-level BPE vocabulary, laid out like llama.cpp writes SmolLM2."""
    import gguf
    import numpy as np
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(["the user wants to share the post, yes or no"] * 5, trainer)
    data = json.loads(tokenizer.to_str())
    tokens = [token for token, _ in sorted(data["model"]["vocab"].items(), key=lambda item: item[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    hidden, layers, heads, kv_heads, ff = 32, 2, 4, 2, 64
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([gguf.TokenType.CONTROL if t.startswith("<|") else gguf.TokenType.NORMAL for t in tokens])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(0)
    kv_width = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (len(tokens), hidden), "output_norm.weight": (hidden,)}
    for i in range(layers):
        shapes |= {
            f"blk.{i}.attn_norm.weight": (hidden,),
            f"blk.{i}.ffn_norm.weight": (hidden,),
            f"blk.{i}.attn_q.weight": (hidden, hidden),
            f"blk.{i}.attn_k.weight": (kv_width, hidden),
            f"blk.{i}.attn_v.weight": (kv_width, hidden),
            f"blk.{i}.attn_output.weight": (hidden, hidden),
            f"blk.{i}.ffn_gate.weight": (ff, hidden),
            f"blk.{i}.ffn_up.weight": (ff, hidden),
            f"blk.{i}.ffn_down.weight": (hidden, ff),
        }
    for name, shape in shapes.items():
        writer.add_tensor(name, (rng.standard_normal(shape) * 0.3).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


# ------------------------------------------------------------------------ the real SmolLM2 (slow_model tests)


def real_cache_dir() -> Path:
    """Where ``miko-stream models pull`` put the real model (``MIKO_CACHE_DIR``, else ~/.cache/miko-stream)."""
    return Path(os.environ.get("MIKO_CACHE_DIR") or Path.home() / ".cache" / "miko-stream")


def prompt_messages(template: str, **values: str) -> list[BaseMessage]:
    """The project's prompt ``template`` rendered with ``values``, as chat messages."""
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    from prompts import load_prompts

    role = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [role[r](text) for r, text in load_prompts().templates[template].render(**values)]


# ------------------------------------------------------------------------------------------ image captioner

CAPTION_WORDS = ("a", "photo", "of", "cat", "dog", "bike", "street", "sign", "red", "blue", "person", "tree", "car")


def save_tiny_captioner(path: Path) -> Path:
    """A random-weight ViT encoder + GPT-2 decoder, a ViT image processor and a word tokenizer of
    :data:`CAPTION_WORDS`; greedy decoding emits only those words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        GPT2Config,
        PreTrainedTokenizerFast,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    specials = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
    vocab = {token: index for index, token in enumerate([*specials, *CAPTION_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )
    encoder = ViTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    )
    decoder = GPT2Config(
        vocab_size=len(vocab), n_embd=32, n_layer=1, n_head=2, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = 1, 0, 2
    torch.manual_seed(0)
    model = VisionEncoderDecoderModel(config)
    for name in ("decoder_start_token_id", "pad_token_id", "eos_token_id"):
        setattr(model.generation_config, name, getattr(config, name))
    with torch.no_grad():
        # Random weights would often pick a special token first (an empty caption); zeroing their embeddings
        # (tied to the output layer) makes their logits 0, so greedy decoding emits real words.
        model.decoder.get_input_embeddings().weight[: len(specials)] = 0.0
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------- BERT encoder

ENCODER_WORDS = [
    "yay", "great", "love", "wonderful", "best", "fun",
    "ugh", "bad", "hate", "awful", "worst", "boring",
    "the", "a", "user", "post", "image", "photo", "of", "cat", "dog", "wants", "will", "feels", "others", "is",
    "because", "needs", "share", "laugh", "cry", "sun", "rain", "shows", "people",
]  # fmt: skip


def save_tiny_encoder(folder: Path, seed: int = 0) -> Path:
    """A 2-layer, 32-wide BERT with a word-level vocabulary covering :data:`ENCODER_WORDS`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ENCODER_WORDS, "#", "@", ".", ",", ":", "!", "?", "(", ")"]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=True).save_pretrained(folder)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(folder)
    return folder


# ------------------------------------------------------------------------------------ the continuous batcher


@contextlib.asynccontextmanager
async def arriving_together(model: LocalChatModel, count: int) -> AsyncIterator[None]:
    """The next ``count`` requests to ``model`` (started in the block) share one admission, however loaded the
    machine is.

    The batcher's own wait for company (``max_wait_ms``) is a latency setting, far too short to rely on when
    a test shares two cores with a dozen processes. So the worker is held inside a pass of one extra
    question ("hold", scored: it takes no slot and is no generate call) until ``count`` requests are queued
    behind it; on release it admits them all at once. That pass adds one to ``batcher.stats.batches``.
    """
    from langchain_core.messages import HumanMessage

    engine, batcher = model.handle.engine, model.handle.batcher
    entered, release = threading.Event(), threading.Event()
    queued = 0

    def held_start(requests: Sequence[Any]) -> Any:
        del engine.start  # only this pass is held
        entered.set()
        release.wait(120)
        return engine.start(requests)

    def counting_submit(request: Any) -> Any:
        nonlocal queued
        queued += 1
        return type(batcher).submit(batcher, request)

    engine.start = held_start
    holder = asyncio.ensure_future(model.ayes_probability([[HumanMessage("hold")]]))
    try:
        await wait_until(entered.is_set, what="the batcher to start the holding pass")
        batcher.submit = counting_submit
        yield
        await wait_until(lambda: queued >= count, what=f"{count} requests queued")
    finally:
        release.set()
        vars(batcher).pop("submit", None)
        vars(engine).pop("start", None)
        await holder


async def gather_together(model: LocalChatModel, *calls: Awaitable[Any], requests: int | None = None) -> list[Any]:
    """``asyncio.gather(*calls)`` whose requests to ``model`` (one per call unless ``requests`` says how many)
    share one admission: see :func:`arriving_together`."""
    async with arriving_together(model, len(calls) if requests is None else requests):
        tasks = [asyncio.ensure_future(call) for call in calls]
    return await asyncio.gather(*tasks)


# ------------------------------------------------------------------------------- a stepper for the batcher


class CountingStepper:
    """A pure-Python :class:`~graph.models.local.batcher.Stepper`: request "n" runs n steps and returns
    "n done"; "score" needs no slot; "bad" fails (and fails any pass it shares).

    ``gate`` holds every step while cleared (a test sets it when it has arranged what it wants to see).
    """

    def __init__(self) -> None:
        self.rows: dict[int, list[int]] = {}  # handle -> [steps left, n]
        self.next = 0
        self.starts: list[list[str]] = []
        self.widths: list[int] = []
        self.crash_step = False
        self.gate = threading.Event()
        self.gate.set()

    @property
    def live(self) -> int:
        return len(self.rows)

    def needs_slot(self, request: str) -> bool:
        return request != "score"

    def start(self, requests: Sequence[str]) -> list[str | BaseException | Running]:
        from graph.models.local.batcher import Running  # imports torch: only where a batcher runs

        self.starts.append(list(requests))
        if "bad" in requests and len(requests) > 1:
            raise RuntimeError("the pass blew up")
        outcomes: list[str | BaseException | Running] = []
        for request in requests:
            if request == "bad":
                outcomes.append(ValueError("bad request"))
            elif request == "score":
                outcomes.append("scored")
            else:
                self.next += 1
                self.rows[self.next] = [int(request), int(request)]
                outcomes.append(Running(self.next))
        return outcomes

    def step(self) -> list[tuple[Hashable, str]]:
        assert self.gate.wait(120), "the test never opened the gate"
        if self.crash_step:
            raise RuntimeError("step blew up")
        self.widths.append(len(self.rows))
        done = []
        for handle, row in list(self.rows.items()):
            row[0] -= 1
            if row[0] == 0:
                done.append((handle, f"{row[1]} done"))
                del self.rows[handle]
        return done

    def abandon(self) -> None:
        self.rows.clear()
