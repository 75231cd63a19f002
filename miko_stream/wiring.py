"""Builds the pipeline (models, captioner, prompts, graph) from settings: the one place that knows every layer."""

from __future__ import annotations

from pathlib import Path

from graph.classifiers.serving import PostClassifier
from graph.contracts import ModelInfo
from graph.images import ImageLimits
from graph.models.base import ModelSpecError
from graph.models.registry import LLMConfig, build_chat_model, describe_llm
from graph.models.spec import parse_llm_spec, without_credentials
from graph.models.vision import build_captioner
from graph.nodes import GraphConfig, GraphDeps
from graph.pipeline import MikoPipeline
from graph.verifier import VerifierArtifactError, load_learned_verifier
from graph.verifier.scorer import LearnedScorer
from miko_stream.settings import Settings
from prompts import load_prompts

# P(yes) from a judge is only comparable within one model. SmolLM2-135M puts P(yes) between 0.08 and 0.22 on
# MIKO's human-judged intentions (../shared/data/verifier_dev.jsonl, 600 intentions, median 0.12, AUC 0.54):
# 0.10 accepts about the share humans accepted (72%). Other models start at 0.5 until measured.
CALIBRATED_THRESHOLDS = {"smollm2": 0.10, "smollm2-miko": 0.10}  # the distilled model: same judge weights, unmeasured


def verify_threshold(settings: Settings) -> float:
    if settings.verify_threshold is not None:
        return settings.verify_threshold
    if settings.verifier == "llm":
        return CALIBRATED_THRESHOLDS.get(settings.llm, 0.5)
    return 0.5


def secret(value: object) -> str | None:
    return value.get_secret_value() if value is not None else None  # type: ignore[attr-defined]


def llm_config(settings: Settings) -> LLMConfig:
    return LLMConfig(
        cache_dir=settings.cache_dir,
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_new_tokens=settings.max_new_tokens,
        openai_api_key=secret(settings.openai_api_key),
        local_runtime=settings.local_runtime,
        local_dtype=settings.local_dtype,
        request_timeout_s=settings.llm_request_timeout_s,
    )


def learned_scorer(settings: Settings) -> LearnedScorer | None:
    """The learned verifier for modes ``learned`` and ``hybrid``; raises VerifierArtifactError naming the fix."""
    if settings.verifier not in ("learned", "hybrid"):
        return None
    verifier = load_learned_verifier(settings.verifier_path)
    if settings.verifier == "learned":
        return LearnedScorer(verifier)
    hybrid = verifier.hybrid(settings.llm)
    if hybrid is None:
        fitted = [h.llm for h in verifier.meta.hybrid] or "none"
        raise VerifierArtifactError(
            f"the verifier artifact has no hybrid weights for --llm {settings.llm} (fitted for: {fitted}); use "
            "--verifier learned, or fit them with `miko-stream verifier train --data FILE --out DIR --llm SPEC`"
        )
    return LearnedScorer(verifier, hybrid)


def relation_thresholds(settings: Settings, scorer: LearnedScorer | None) -> dict[str, float]:
    """Per-relation thresholds of the learned verifier, unless one threshold was set explicitly."""
    if scorer is None or settings.verify_threshold is not None:
        return {}
    if scorer.hybrid is not None:
        return dict(scorer.hybrid.thresholds)
    return dict(scorer.verifier.meta.thresholds)


def verifier_label(settings: Settings, scorer: LearnedScorer | None) -> str:
    """What events carry in ``models.verifier``: the mode, and the learned model's name and version."""
    if settings.verifier == "llm":
        return f"llm:{settings.llm}"
    if scorer is None:
        return settings.verifier
    if settings.verifier == "hybrid":
        return f"hybrid:{scorer.verifier.label}+llm:{settings.llm}"
    return f"learned:{scorer.verifier.label}"


def graph_config(
    settings: Settings, image_dir: Path | None = None, thresholds: dict[str, float] | None = None
) -> GraphConfig:
    limits = ImageLimits(
        max_bytes=settings.max_image_bytes,
        fetch_timeout_s=settings.image_fetch_timeout_s,
        allow_private_hosts=settings.image_fetch_private,
        base_dir=image_dir or settings.image_dir,
    )
    return GraphConfig(
        verifier=settings.verifier,
        threshold=verify_threshold(settings),
        thresholds=thresholds or {},
        max_rounds=settings.max_rounds,
        max_new_tokens=settings.max_new_tokens,
        image_limits=limits,
    )


def graph_batch_size(settings: Settings) -> int:
    """Posts per graph run: big batches for instant or remote models (LangGraph's per-step cost is shared),
    small ones for local models, where a batch's posts wait for each other's model calls at every step."""
    if settings.graph_batch_size is not None:
        return settings.graph_batch_size
    return 64 if parse_llm_spec(settings.llm).kind in ("fake", "openai") else 8


def classifiers(spec: str) -> dict[str, PostClassifier]:
    """The students of ``MIKO_CLASSIFIERS`` (none by default); an unusable value is a ModelSpecError."""
    if not spec.strip():
        return {}
    from graph.classifiers.model import StudentError  # torch: only when students are configured
    from graph.classifiers.serving import ClassifierSpecError, load_classifiers

    try:
        return load_classifiers(spec)
    except (ClassifierSpecError, StudentError) as error:
        raise ModelSpecError(f"MIKO_CLASSIFIERS: {error}") from error


def build_pipeline(settings: Settings, image_dir: Path | None = None) -> MikoPipeline:
    """The pipeline for ``settings``; raises ModelSpecError for an unusable --llm/--vision spec or verifier."""
    scorer = learned_scorer(settings)
    llm = build_chat_model(settings.llm, llm_config(settings))
    captioner = build_captioner(settings.vision, openai_api_key=secret(settings.openai_api_key))
    config = graph_config(settings, image_dir, relation_thresholds(settings, scorer))
    deps = GraphDeps(
        llm=llm,
        prompts=load_prompts(),
        captioner=captioner,
        config=config,
        classifiers=classifiers(settings.classifiers),
        learned=scorer,
    )
    models = ModelInfo(
        llm=without_credentials(describe_llm(llm)),
        vision=without_credentials(settings.vision),
        verifier=without_credentials(verifier_label(settings, scorer)),
    )
    return MikoPipeline(deps, models=models, deadline_s=settings.post_deadline_s, batch_size=graph_batch_size(settings))
