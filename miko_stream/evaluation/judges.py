"""Which judge decides "accepted" in `eval generation`: the learned verifier when it is installed.

The learned verifier (issue 9, ``graph.verifier``) scores (post text, caption, relation, intention) without the
LLM, so acceptance is comparable across the models being evaluated. Without it, the graph's own verdicts
(``verified`` in each event, from whatever ``MIKO_VERIFIER`` the run used) stand in, and the report says so.
"""

from __future__ import annotations

from miko_stream.evaluation.generation import AcceptanceJudge, GraphVerdicts


def load_judge(graph_verifier: str = "graph") -> AcceptanceJudge:
    """The learned verifier if its code and artifact are present, else the graph's own verdicts."""
    return GraphVerdicts(f"graph-verdicts:{graph_verifier}")
