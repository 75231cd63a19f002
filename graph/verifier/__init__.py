"""The learned verifier: P(a human expert would accept an intention), trained on MIKO's expert judgements.

Public API (stable; see /work/notes/verifier_api.md and the README):

* :class:`VerifierItem` - what is judged: post text, caption, relation, intention (sentence or stem completion).
* :func:`load_learned_verifier` - the committed default artifact (``path=None``) or a trained folder.
* :class:`LearnedVerifier` - ``score(items) -> list[float]`` (sync, batched, CPU), ``threshold(relation)``,
  ``name``, ``version``, ``label`` (what events carry in ``models.verifier``).
* :class:`BatchedVerifier` - the async front the graph uses, batching concurrent posts.
* :class:`VerifierArtifactError` - a missing or corrupt artifact; its message names the fix.
"""

from graph.verifier.artifact import (
    LearnedVerifier,
    VerifierArtifactError,
    default_artifact_dir,
    default_artifact_present,
    load_learned_verifier,
)
from graph.verifier.items import LabelledItem, VerifierDataError, VerifierItem, completion, read_labelled
from graph.verifier.service import BatchedVerifier

__all__ = [
    "BatchedVerifier",
    "LabelledItem",
    "LearnedVerifier",
    "VerifierArtifactError",
    "VerifierDataError",
    "VerifierItem",
    "completion",
    "default_artifact_dir",
    "default_artifact_present",
    "load_learned_verifier",
    "read_labelled",
]
