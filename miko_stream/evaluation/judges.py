"""Which judge decides "accepted" in `eval generation`: the learned verifier when it is installed.

The learned verifier (issue 9, :mod:`graph.verifier`, trained on MIKO's expert judgements) scores (post text,
caption, relation, intention) without the LLM, so acceptance is comparable across the models being evaluated.
Without its code or artifact, the graph's own verdicts (``verified`` in each event, from whatever
``MIKO_VERIFIER`` the run used) stand in, and the report names that judge.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from miko_stream.evaluation.generation import AcceptanceJudge, GraphVerdicts, JudgeItem


class LearnedJudge:
    """Accepts an intention when the learned verifier scores it at least its relation's threshold."""

    def __init__(self, verifier: Any, item_type: Any) -> None:
        self._verifier = verifier
        self._item = item_type
        self.name = f"learned:{verifier.label}"

    def accepts(self, items: Sequence[JudgeItem]) -> list[bool]:
        scored = [i for i, item in enumerate(items) if item.text]
        requests = [
            self._item(items[i].post_text, items[i].caption, items[i].relation, items[i].text, post_id=items[i].post_id)
            for i in scored
        ]
        scores = self._verifier.score(requests) if requests else []
        verdicts = [False] * len(items)
        for i, score in zip(scored, scores, strict=True):
            verdicts[i] = score >= self._verifier.threshold(items[i].relation)
        return verdicts


def load_judge(graph_verifier: str = "graph") -> AcceptanceJudge:
    """The learned verifier if its code and artifact are present, else the graph's own verdicts."""
    try:
        from graph.verifier import VerifierItem, default_artifact_present, load_learned_verifier
    except ImportError:
        return GraphVerdicts(f"graph-verdicts:{graph_verifier}")
    if not default_artifact_present():
        return GraphVerdicts(f"graph-verdicts:{graph_verifier}")
    return LearnedJudge(load_learned_verifier(), VerifierItem)
