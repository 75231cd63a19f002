"""Loading a local model folder into a :class:`graph.models.local.engine.LocalEngine` and its batcher.

``auto`` runs plain Llama folders (the default SmolLM2 among them) on the native runtime
(:mod:`graph.models.local.llama`), which starts in about a third of the time, and anything else on transformers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from graph.models.local.batcher import ContinuousBatcher
from graph.models.local.engine import LocalEngine, LocalRequest, LocalResult
from graph.models.local.llama_config import is_native_llama
from graph.models.local.precision import LocalDtype, Precision, resolve_precision

__all__ = ["LocalDtype", "LocalEngineHandle", "ModelLoadError", "Runtime", "load_engine"]


class ModelLoadError(OSError):
    """A local model could not be loaded; the message says what to fix."""


Runtime = Literal["auto", "native", "transformers"]


def load_engine(
    source: str | Path, *, torch_threads: int | None = None, runtime: Runtime = "auto", dtype: LocalDtype = "auto"
) -> LocalEngine:
    """Load a model folder (or hub id present in the local cache) for CPU inference.

    ``dtype``: ``auto`` runs the weights in bf16 on CPUs that multiply it natively, else in fp32.
    """
    folder = Path(source)
    precision = resolve_precision(dtype)
    if runtime == "native" or (runtime == "auto" and is_native_llama(folder)):
        model, tokenizer = _load_native(folder, precision)
    else:
        model, tokenizer = _load_transformers(source, precision)
    try:
        return LocalEngine(model, tokenizer, torch_threads=torch_threads)
    except ValueError as error:
        raise ModelLoadError(f"cannot use local model {str(source)!r}: {error}") from error


def _torch_dtype(precision: Precision) -> Any:
    import torch

    return torch.bfloat16 if precision == "bf16" else torch.float32


def _load_native(folder: Path, precision: Precision) -> tuple[Any, Any]:
    from graph.models.local.chat_tokenizer import ChatTokenizer
    from graph.models.local.llama import load_native_llama

    try:
        return load_native_llama(folder, _torch_dtype(precision)), ChatTokenizer.from_folder(folder)
    except Exception as error:  # unsupported config, missing or corrupt files: all mean "fix the folder"
        raise ModelLoadError(
            f"cannot load local model {str(folder)!r} on the native runtime: {error}. "
            "Use a plain Llama folder with model.safetensors and tokenizer.json, or MIKO_LOCAL_RUNTIME=transformers."
        ) from error


def _load_transformers(source: str | Path, precision: Precision) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tqdm bars would interleave with the service's JSON logs
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source))
        model = AutoModelForCausalLM.from_pretrained(str(source), dtype=_torch_dtype(precision))
    except Exception as error:  # transformers raises OSError, ValueError, hub errors... all mean "fix the path"
        raise ModelLoadError(
            f"cannot load local model {str(source)!r}: {error}. Pass a folder with config.json, tokenizer "
            "and weights (hub downloads are off on this machine), or use the default `smollm2`."
        ) from error
    return model, tokenizer


class LocalEngineHandle:
    """An engine and the continuous batcher in front of it: one per loaded model per process.

    ``max_batch_size`` is the number of generations decoded together (and of prompts scored per pass).
    """

    def __init__(self, engine: LocalEngine, *, max_batch_size: int, max_wait_ms: float, name: str) -> None:
        self.engine = engine
        self.batcher: ContinuousBatcher[LocalRequest, LocalResult] = ContinuousBatcher(
            engine,
            max_batch_size=max_batch_size,
            max_wait_ms=max_wait_ms,
            name=name,
            on_worker_start=engine.on_worker_start,
        )

    def close(self) -> None:
        self.batcher.close()
