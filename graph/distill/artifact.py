"""The distilled model on disk, and the plain folder that serves it.

A run writes ``OUT/``: ``distill.json`` (run id, base spec, settings, data, figures), ``README.md`` (model card)
and either a LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``, peft's format, bfloat16)
or, for a full fine-tune, a complete model folder. Serving never runs peft: :func:`served_folder` adds each
adapter's ``B @ A * alpha / r`` into the base weights once, writes the result as a plain Llama folder into the
model cache (keyed by the adapter's content) and hands that to either runtime, so a distilled model costs
exactly what its base costs per token.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from graph.models.smollm2 import locked_folder

MANIFEST = "distill.json"
PACKAGED_DISTILLED = Path(__file__).resolve().parent.parent / "models" / "distilled" / "smollm2-miko"
"""The MIKO-distilled SmolLM2 adapter shipped in the package (spec ``smollm2-miko``)."""
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
COMPLETE_MARKER = ".miko-complete"
_COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def default_llm() -> str:
    """The embedded default: the distilled SmolLM2 when its adapter ships in the package, else the plain one."""
    return "smollm2-miko" if (PACKAGED_DISTILLED / MANIFEST).is_file() else "smollm2"


class DistilledModelError(OSError):
    """A distilled model folder that cannot be served; the message says what to do."""


@dataclass(frozen=True)
class DistilledInfo:
    folder: Path
    run_id: str
    base: str
    mode: str  # "lora" | "full"
    manifest: dict[str, Any]


def read_distilled(folder: Path) -> DistilledInfo:
    """The manifest of a `distill generator` output folder."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise DistilledModelError(
            f"{folder} is not a distilled model (no {MANIFEST}); build one with `miko-stream distill generator`"
        )
    try:
        manifest = json.loads(path.read_text())
        return DistilledInfo(Path(folder), manifest["run_id"], manifest["base"], manifest["mode"], manifest)
    except (ValueError, KeyError) as error:
        raise DistilledModelError(f"{path} is damaged ({error}); rerun `miko-stream distill generator`") from None


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def merge_lora(base_weights: dict[str, Any], adapter: dict[str, Any], scale: float) -> dict[str, Any]:
    """Base weights with every adapter pair folded in: ``W + scale * B @ A`` (float32), other weights as they are."""
    merged = dict(base_weights)
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        module = key.removeprefix("base_model.model.").split(".lora_A.")[0]
        target = f"{module}.weight"
        if target not in merged:
            raise DistilledModelError(f"the adapter changes {target}, which the base model does not have")
        weight = merged[target]
        merged[target] = (weight.float() + scale * (b.float() @ a.float())).to(weight.dtype).contiguous()
    return merged


def served_folder(folder: Path, base_folder: Path, cache_dir: Path) -> Path:
    """A plain model folder for a distilled model: the folder itself (full) or base + adapter merged (cached)."""
    info = read_distilled(folder)
    if info.mode == "full":
        return info.folder
    adapter_path = info.folder / ADAPTER_WEIGHTS
    if not adapter_path.is_file():
        raise DistilledModelError(f"{folder} has no {ADAPTER_WEIGHTS}; rebuild it with `miko-stream distill generator`")
    key = hashlib.sha256(f"{_digest(adapter_path)}:{base_folder.resolve()}".encode()).hexdigest()[:16]
    home = Path(cache_dir) / "distilled" / f"{info.run_id}-{key}"
    out = home / "hf"
    if (out / COMPLETE_MARKER).is_file():
        return out
    with locked_folder(home):
        if not (out / COMPLETE_MARKER).is_file():
            _write_merged(info, adapter_path, base_folder, out)
    return out


def _write_merged(info: DistilledInfo, adapter_path: Path, base_folder: Path, out: Path) -> None:
    from safetensors.torch import load_file, save_file

    config = json.loads((info.folder / ADAPTER_CONFIG).read_text())
    scale = float(config["lora_alpha"]) / float(config["r"])
    merged = merge_lora(load_file(base_folder / "model.safetensors"), load_file(adapter_path), scale)
    staging = Path(tempfile.mkdtemp(prefix=".merge-", dir=out.parent))
    try:
        save_file(merged, staging / "model.safetensors", metadata={"format": "pt"})
        for name in _COPIED:
            if (base_folder / name).is_file():
                shutil.copy2(base_folder / name, staging / name)
        (staging / COMPLETE_MARKER).write_text(f"{info.run_id}\n")
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.replace(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
