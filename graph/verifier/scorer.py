"""What the verify node calls in modes ``learned`` and ``hybrid``: one post's candidates, judged in context.

The learned verifier looks at a post's intentions together, so the candidates of a regeneration round are
scored next to the intentions the post already kept for its other relations, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence

from graph.state import Candidate, PostState
from graph.verifier.artifact import HybridWeights, LearnedVerifier
from graph.verifier.head import logit, sigmoid
from graph.verifier.items import VerifierItem
from graph.verifier.service import BatchedVerifier


class LearnedScorer:
    """Learned scores for a post's candidates (batched across posts), and the hybrid combination with a judge."""

    def __init__(self, verifier: LearnedVerifier, hybrid: HybridWeights | None = None, max_wait_ms: float = 5.0):
        self.verifier = verifier
        self.hybrid = hybrid
        self.batched = BatchedVerifier(verifier, max_wait_ms=max_wait_ms)

    async def score_candidates(self, state: PostState, candidates: Sequence[Candidate]) -> list[float]:
        post = state["post"]
        caption = state.get("caption")
        text = state.get("text", post.text)
        pending = {c["relation"] for c in candidates}
        kept = [(r, i.text) for r, i in state.get("intentions", {}).items() if r not in pending and i.text]
        judged = [(c["relation"], c["text"]) for c in candidates] + kept
        items = [VerifierItem(text, caption, relation, intention, post_id=post.id) for relation, intention in judged]
        scores = await self.batched.score(items)
        return scores[: len(candidates)]

    def combine(
        self, learned: Sequence[float], judged: Sequence[float | None], candidates: Sequence[Candidate]
    ) -> list[float | None]:
        """Hybrid scores: the fitted combination where the judge answered, the learned score where it did not."""
        if self.hybrid is None:
            raise RuntimeError("hybrid verifier needs hybrid weights for this LLM in the verifier artifact")
        out: list[float | None] = []
        for candidate, mine, theirs in zip(candidates, learned, judged, strict=True):
            if candidate["parse_failed"]:
                out.append(0.0)
            elif theirs is None:
                out.append(mine)
            else:
                z = self.hybrid.learned_weight * logit(mine) + self.hybrid.llm_weight * logit(theirs) + self.hybrid.bias
                out.append(float(sigmoid(z)))
        return out
