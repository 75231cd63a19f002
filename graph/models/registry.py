"""Build the chat model a spec string names; local models are loaded once per process and shared.

Every concurrent graph run that asks for the same local model gets a chat model over the *same* engine and
continuous batcher, which is what lets prompts from different posts share ``generate`` calls.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import structlog
from langchain_core.language_models import BaseChatModel

from graph.models.base import ModelSpecError
from graph.models.local import LocalChatModel, LocalDtype, LocalEngineHandle, Runtime, load_engine
from graph.models.spec import LLMSpec, parse_llm_spec

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class LLMConfig:
    """Knobs of the text model, shared by every backend (each uses the ones that apply to it)."""

    cache_dir: Path
    max_batch_size: int = 64
    max_wait_ms: float = 15.0
    max_new_tokens: int = 24
    temperature: float = 0.0
    openai_api_key: str | None = None
    max_concurrency: int = 32
    torch_threads: int | None = None
    """Intra-op threads for local models; None = every core this process may use."""
    openai_continue_final_message: bool = False
    """vLLM: continue a trailing assistant (prefill) message instead of starting a new turn."""
    request_timeout_s: float = 120.0
    local_runtime: Runtime = "auto"
    """Local models: ``native`` Llama runtime, ``transformers``, or ``auto`` (native for plain Llamas)."""
    local_dtype: LocalDtype = "auto"
    """Local models' weights: ``bf16``, ``fp32``, or ``auto`` (bf16 where the CPU multiplies it natively)."""


_engines: dict[tuple[object, ...], LocalEngineHandle] = {}
_engines_lock = threading.Lock()


def local_source(spec: LLMSpec, config: LLMConfig) -> str:
    """A folder (or cached hub id) that ``from_pretrained`` can load without the network."""
    from graph.models import smollm2

    if spec.kind in ("distilled", "smollm2-miko"):
        return str(distilled_source(spec, config)[0])
    if spec.kind == "smollm2":
        folder = smollm2.converted_dir(config.cache_dir)
        if not smollm2.is_converted(folder):
            folder = smollm2.ensure_smollm2(config.cache_dir, status=lambda line: log.info("smollm2", step=line))
        return str(folder)
    path = Path(spec.target).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelSpecError(f"GGUF file {path} does not exist")
        return str(smollm2.ensure_converted_gguf(path, config.cache_dir))
    return str(path) if path.exists() else spec.target


def distilled_source(spec: LLMSpec, config: LLMConfig) -> tuple[Path, str]:
    """(plain model folder with the adapter merged in, training run id) of a distilled model spec."""
    from graph.distill.artifact import PACKAGED_DISTILLED, DistilledModelError, read_distilled, served_folder

    folder = PACKAGED_DISTILLED if spec.kind == "smollm2-miko" else Path(spec.target).expanduser()
    try:
        info = read_distilled(folder)
        base = parse_llm_spec(info.base)
        if base.kind in ("distilled", "smollm2-miko"):
            raise DistilledModelError(f"{folder}: the base of a distilled model must be a plain model, not {info.base}")
        return served_folder(folder, Path(local_source(base, config)), config.cache_dir), info.run_id
    except DistilledModelError as error:
        raise ModelSpecError(f"cannot use --llm {spec}: {error}") from error


def model_label(spec: LLMSpec, config: LLMConfig) -> str:
    """The name events carry: the spec, and for a distilled model the training run that made it."""
    if spec.kind in ("distilled", "smollm2-miko"):
        return f"{spec} run={distilled_source(spec, config)[1]}"
    return str(spec)


def _local_model(spec: LLMSpec, config: LLMConfig) -> BaseChatModel:
    source = local_source(spec, config)
    key = (
        source, config.max_batch_size, config.max_wait_ms, config.torch_threads, config.local_runtime,
        config.local_dtype,
    )  # fmt: skip
    with _engines_lock:
        handle = _engines.get(key)
        if handle is None or handle.batcher.closed:
            engine = load_engine(
                source, torch_threads=config.torch_threads, runtime=config.local_runtime, dtype=config.local_dtype
            )
            handle = LocalEngineHandle(
                engine, max_batch_size=config.max_batch_size, max_wait_ms=config.max_wait_ms, name=str(spec)
            )
            _engines[key] = handle
            log.info("local_model_loaded", model=str(spec), source=source, runtime=type(engine.model).__name__,
                     dtype=engine.precision)  # fmt: skip
    return LocalChatModel(
        spec=model_label(spec, config),
        handle=handle,
        max_new_tokens=config.max_new_tokens,
        temperature=config.temperature,
    )


def build_chat_model(spec: str, config: LLMConfig) -> BaseChatModel:
    """The chat model for ``spec`` (see :func:`graph.models.spec.parse_llm_spec`); also a YesNoScorer."""
    parsed = parse_llm_spec(spec)
    if parsed.kind == "fake":
        from graph.models.fake import FakeChatModel

        return FakeChatModel(
            spec=str(parsed),
            latency_ms=parsed.latency_ms,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
        )
    if parsed.kind == "openai":
        from graph.models.openai_backend import build_openai_model

        return build_openai_model(
            spec=str(parsed),
            model=parsed.target,
            base_url=parsed.base_url,
            api_key=config.openai_api_key,
            max_concurrency=config.max_concurrency,
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            timeout_s=config.request_timeout_s,
            continue_final_message=config.openai_continue_final_message,
        )
    return _local_model(parsed, config)


def describe_llm(model: BaseChatModel) -> str:
    """The name events carry for a model: its spec string when we built it, else its LangChain type."""
    spec = getattr(model, "spec", None)
    if isinstance(spec, str) and spec:
        return spec
    name = getattr(model, "model_name", None) or getattr(model, "model", None)
    return f"{model._llm_type}:{name}" if isinstance(name, str) else model._llm_type


def shutdown_local_models() -> None:
    """Stop every shared local model's worker thread (at service shutdown, or between tests)."""
    with _engines_lock:
        handles = list(_engines.values())
        _engines.clear()
    for handle in handles:
        handle.close()
