"""Partial fine-tuning for CPUs: the bottom encoder layers stay frozen, so their output is computed once per post.

Fine-tuning only the top ``k`` layers of a 6-layer MiniLM skips the bottom layers' backward pass, and caching
their (deterministic, dropout-free) output skips their forward pass too, after the first epoch and across every
run of an ablation grid on the same posts. The saved student is a whole encoder either way.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from graph.classifiers.inputs import LabelledPost
from graph.classifiers.model import SarcasmStudent, StudentError

_STATES: dict[tuple[object, ...], dict[str, torch.Tensor]] = {}


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if not isinstance(layers, nn.ModuleList):
        raise StudentError(
            "--train-layers needs a BERT-style encoder (encoder.layer); leave it out to train all layers"
        )
    return layers


class FrozenBottom:
    """Freezes all but the top ``train_layers`` layers of the student's encoder and caches the bottom's output."""

    def __init__(self, student: SarcasmStudent, train_layers: int) -> None:
        layers = encoder_layers(student.encoder)
        if not 1 <= train_layers <= len(layers):
            raise StudentError(f"--train-layers must be between 1 and {len(layers)} for this encoder")
        self.student = student
        self.split = len(layers) - train_layers
        self.top = layers[self.split :]
        for param in student.encoder.parameters():
            param.requires_grad = False
        for param in self.top.parameters():
            param.requires_grad = True
        config = student.config
        key = (config.encoder, str(config.inputs), config.max_length, self.split)
        if key not in _STATES:
            _STATES.clear()  # one input variant at a time keeps memory bounded (a grid runs variants in turn)
        self.states = _STATES.setdefault(key, {})

    @torch.inference_mode()
    def fill(self, posts: Sequence[LabelledPost], batch_size: int = 32) -> None:
        """Computes the frozen bottom's output for posts not yet cached (similar lengths batched together)."""
        missing = [post for post in {post.id: post for post in posts}.values() if post.id not in self.states]
        if not missing:
            return
        encoder = self.student.encoder
        was_training = encoder.training
        encoder.eval()
        lengths = {post.id: len(self.student.tokenize([post])["input_ids"][0]) for post in missing}
        missing.sort(key=lambda post: lengths[post.id])
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            batch = self.student.tokenize(chunk)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hidden = encoder(**batch, output_hidden_states=True).hidden_states[self.split]
            for row, post in enumerate(chunk):
                self.states[post.id] = hidden[row, : lengths[post.id]].to(torch.bfloat16).clone()
        encoder.train(was_training)

    def pooled(self, posts: Sequence[LabelledPost]) -> torch.Tensor:
        """Mean-pooled output of the trainable top layers, from the cached bottom (call under autocast)."""
        self.fill(posts)
        states = [self.states[post.id] for post in posts]
        lengths = torch.tensor([len(state) for state in states])
        hidden = nn.utils.rnn.pad_sequence(states, batch_first=True).float()
        keep = torch.arange(hidden.shape[1])[None, :] < lengths[:, None]
        mask = self._attention_mask(keep, hidden)
        for layer in self.top:
            output = layer(hidden, attention_mask=mask)
            hidden = output[0] if isinstance(output, tuple) else output
        weights = keep.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def _attention_mask(self, keep: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """SDPA takes a boolean mask (True = attend); eager attention adds a large negative to padded keys."""
        if getattr(self.student.encoder.config, "_attn_implementation", "eager") == "sdpa":
            return keep[:, None, None, :]
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else hidden.dtype
        return (~keep[:, None, None, :]).to(dtype) * torch.finfo(dtype).min
