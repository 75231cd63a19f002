"""A chat tokenizer on the ``tokenizers`` library alone, for the native Llama runtime.

Why: ``transformers``' tokenizer classes cost over a second of imports, a quarter of the cold-start budget.
This reads the same files (``tokenizer.json``, ``tokenizer_config.json``, ``chat_template.jinja``) and renders
chat templates the way ``transformers`` does (a sandboxed Jinja environment with ``trim_blocks`` and
``lstrip_blocks``; ``continue_final_message`` cuts the text where the last message's content ends), which the tests
check against ``PreTrainedTokenizerFast`` on the same files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer


class ChatTemplateError(ValueError):
    """The chat template cannot render these messages."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


def _token_text(value: Any) -> str | None:
    """Special tokens appear in tokenizer_config.json as strings or as ``{"content": ...}`` objects."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class ChatTokenizer:
    """The subset of a Hugging Face tokenizer the engine uses: encode, decode, chat templates, special ids."""

    def __init__(self, tokenizer: Tokenizer, special: dict[str, str | None], chat_template: str | None) -> None:
        self._tokenizer = tokenizer
        self.chat_template = chat_template
        self.eos_token = special.get("eos_token")
        self.pad_token = special.get("pad_token")
        self.bos_token = special.get("bos_token")
        self.unk_token = special.get("unk_token")

    @classmethod
    def from_folder(cls, folder: Path) -> ChatTokenizer:
        config_path = folder / "tokenizer_config.json"
        config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template_path = folder / "chat_template.jinja"
        template = template_path.read_text() if template_path.is_file() else config.get("chat_template")
        if not isinstance(template, str):  # a list of named templates: not used by the engine
            template = None
        special = {name: _token_text(config.get(name)) for name in ("eos_token", "pad_token", "bos_token", "unk_token")}
        return cls(Tokenizer.from_file(str(folder / "tokenizer.json")), special, template)

    # -- ids -------------------------------------------------------------------------------------------------

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self._tokenizer.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def unk_token_id(self) -> int | None:
        return self._id(self.unk_token)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # -- chat templates ----------------------------------------------------------------------------------------

    @cached_property
    def _template(self) -> Any:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        if self.chat_template is None:
            raise ChatTemplateError("this tokenizer has no chat template")
        environment = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
        environment.globals["raise_exception"] = _raise
        return environment.from_string(self.chat_template)

    def apply_chat_template(
        self,
        chat: Sequence[dict[str, str]],
        *,
        tokenize: bool = False,
        add_generation_prompt: bool = False,
        continue_final_message: bool = False,
    ) -> str:
        """The prompt text for ``chat`` (``tokenize`` must be False: the engine encodes it itself)."""
        if tokenize:
            raise ValueError("ChatTokenizer.apply_chat_template renders text only; call encode() on it")
        if add_generation_prompt and continue_final_message:
            raise ValueError("add_generation_prompt and continue_final_message cannot both be set")
        messages = [dict(message) for message in chat]
        if continue_final_message:
            messages[-1]["content"] = messages[-1]["content"] + CONTINUE_TAG
        rendered: str = self._template.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            eos_token=self.eos_token,
            bos_token=self.bos_token,
            pad_token=self.pad_token,
        )
        return _cut_at_tag(rendered) if continue_final_message else rendered


CONTINUE_TAG = "CONTINUE_FINAL_MESSAGE_TAG "


def _cut_at_tag(rendered: str) -> str:
    """The rendered chat up to the end of the final message, so the model continues it (as transformers does)."""
    tag = CONTINUE_TAG.strip()
    if tag not in rendered:
        raise ChatTemplateError("the chat template dropped the final message, so it cannot be continued")
    at = rendered.rindex(tag)
    return rendered[:at] if rendered[at : at + len(CONTINUE_TAG)] == CONTINUE_TAG else rendered[:at].rstrip()
