"""The "image" side of ITC/ITM: frozen features of each post's image (an image encoder) or of its caption.

Features are computed once before training and stay frozen; only the student's projection of them learns. That
keeps an auxiliary loss almost free on a CPU (one extra forward pass over the captions, no backward), at the
price of not fine-tuning the image side as the paper's end-to-end models do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from graph.classifiers.inputs import LabelledPost
from graph.classifiers.model import StudentError, resolve_encoder

_CACHE: dict[tuple[str, tuple[str, ...]], torch.Tensor] = {}


@dataclass(frozen=True)
class ImageSide:
    """Per-post features (zeros where a post has none) and which posts have them."""

    kind: str  # "caption" | "image"
    features: torch.Tensor
    present: torch.Tensor

    @property
    def dim(self) -> int:
        return int(self.features.shape[1])


def caption_side(posts: Sequence[LabelledPost], encoder: str, *, max_length: int = 128) -> ImageSide:
    """Mean-pooled features of each caption from the (frozen, pretrained) encoder the student starts from."""
    captions = tuple(post.caption or "" for post in posts)
    key = (str(resolve_encoder(encoder)), captions)
    if key not in _CACHE:
        from transformers import AutoModel, AutoTokenizer

        model = AutoModel.from_pretrained(key[0], dtype=torch.float32).eval()
        tokenizer = AutoTokenizer.from_pretrained(key[0])
        _CACHE.clear()  # one file's captions at a time: a grid re-uses them, a new file replaces them
        _CACHE[key] = _encode_texts(model, tokenizer, list(captions), max_length)
    present = torch.tensor([bool(caption) for caption in captions])
    return ImageSide("caption", _CACHE[key], present)


@torch.inference_mode()
def _encode_texts(model: torch.nn.Module, tokenizer: object, texts: list[str], max_length: int) -> torch.Tensor:
    chunks = []
    for start in range(0, len(texts), 32):
        batch = tokenizer(
            texts[start : start + 32], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )  # type: ignore[operator]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        chunks.append((hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1.0))
    return torch.cat(chunks)


@torch.inference_mode()
def image_side(posts: Sequence[LabelledPost], image_encoder: str, base_dir: Path) -> ImageSide:
    """Pooled features from a local vision encoder folder (ViT, CLIP, SigLIP...) of each post's image file."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    folder = Path(image_encoder).expanduser()
    if not (folder / "config.json").is_file():
        raise StudentError(f"image encoder {image_encoder!r} is not a local Hugging Face model folder (no config.json)")
    model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoImageProcessor.from_pretrained(folder)
    rows: list[torch.Tensor | None] = []
    for post in posts:
        if not post.image_path:
            rows.append(None)
            continue
        path = (base_dir / post.image_path).resolve()
        if not path.is_relative_to(base_dir.resolve()) or not path.is_file():
            raise StudentError(f"post {post.id}: image {post.image_path!r} is not a file inside {base_dir}")
        with Image.open(path) as image:
            pixels = processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"]
        rows.append(_vision_features(model, pixels)[0])
    dim = next((row.shape[0] for row in rows if row is not None), 0)
    if not dim:
        raise StudentError("--image-encoder was given but no post has an image path")
    features = torch.stack([row if row is not None else torch.zeros(dim) for row in rows])
    return ImageSide("image", features, torch.tensor([row is not None for row in rows]))


def _vision_features(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "get_image_features"):  # CLIP-like: the projected image embedding
        out = model.get_image_features(pixel_values=pixels)
        return out if isinstance(out, torch.Tensor) else out.pooler_output
    output = model(pixel_values=pixels)
    pooled = getattr(output, "pooler_output", None)
    return pooled if pooled is not None else output.last_hidden_state[:, 0]
