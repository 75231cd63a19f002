"""Word segmentation of hashtags (``nashvillesnow`` -> ``nashville snow``), the same as ``wordsegment``, faster.

``wordsegment.Segmenter.segment`` finds the most probable split under its unigram/bigram tables with a memoised
recursion that builds a generator, a tuple and a list for every candidate; on a real tweet stream that was the
largest single cost of the graph (~0.6 ms per hashtag). :class:`FastSegmenter` runs the same search bottom-up on
the same tables, with the same floating-point sums and the same tie-breaking (the larger word list wins an exact
tie, as ``max`` over ``(score, words)`` does), so it returns exactly what ``wordsegment`` returns (checked in
tests/test_normalize.py), in a fraction of the time.
"""

from __future__ import annotations

import math

from wordsegment import Segmenter

_START = "<s>"
_CHUNK = 250  # wordsegment segments long text in chunks of this size, re-segmenting the last five words


class FastSegmenter:
    """``segment(text)`` as ``wordsegment.Segmenter.segment``, on a loaded ``Segmenter``'s tables."""

    def __init__(self, tables: Segmenter) -> None:
        self.unigrams: dict[str, float] = tables.unigrams
        self.bigrams: dict[str, float] = tables.bigrams
        self.total: float = tables.total
        self.limit: int = tables.limit
        self.clean = tables.clean
        # Known words that start a known bigram (only they can change the next word's score), with the words
        # that follow them in a bigram and its count: one lookup per candidate instead of building "a b" keys.
        self.followers: dict[str, dict[str, float]] = {}
        for bigram, count in self.bigrams.items():
            previous, _, word = bigram.partition(" ")
            if previous in self.unigrams:
                self.followers.setdefault(previous, {})[word] = count
        # log10 unigram scores computed once: per known word (bounded by the table), per length for unknown ones.
        self._known_logs: dict[str, float] = {}
        self._unknown_logs = [math.log10(10.0 / (self.total * 10**length)) for length in range(self.limit + 1)]

    def segment(self, text: str) -> list[str]:
        clean = self.clean(text)
        words: list[str] = []
        prefix = ""
        for offset in range(0, len(clean), _CHUNK):
            chunk_words = self._search(prefix + clean[offset : offset + _CHUNK])
            prefix = "".join(chunk_words[-5:])
            words.extend(chunk_words[:-5])
        words.extend(self._search(prefix))
        return words

    def _unigram_score(self, word: str) -> float:
        if word in self.unigrams:
            return self.unigrams[word] / self.total
        return 10.0 / (self.total * 10 ** len(word))

    def _log_unigram(self, word: str) -> float:
        """log10 of :meth:`_unigram_score`, the same float as computing it afresh."""
        known = self._known_logs.get(word)
        if known is not None:
            return known
        count = self.unigrams.get(word)
        if count is None:
            return self._unknown_logs[len(word)]
        known = self._known_logs[word] = math.log10(count / self.total)
        return known

    def _search(self, text: str) -> list[str]:
        """The best words for ``text`` from ``<s>``.

        A word's score depends on the previous word only through a bigram, and few (previous, word) pairs are
        bigrams: so the best split of each suffix ``text[start:]`` is found once from unigram scores
        (``plain[start]``), and again only after the previous words that form a bigram with one of its
        candidate first words (``after[start, previous]``).
        """
        if not text:
            return []
        n, limit, starters, unigrams, unknown = len(text), self.limit, self.followers, self.unigrams, self._unknown_logs
        plain: dict[int, tuple[float, list[str]]] = {n: (0.0, [])}
        after: dict[tuple[int, str], tuple[float, list[str]]] = {}
        for start in range(n - 1, -1, -1):
            candidates = []  # (end, word, unigram log-score, best suffix after the word)
            for end in range(start + 1, min(n, start + limit) + 1):
                word = text[start:end]
                suffix = after.get((end, word)) or plain[end]
                # Most substrings are not words: their score depends only on their length.
                log_score = self._log_unigram(word) if word in unigrams else unknown[end - start]
                candidates.append((end, word, log_score, suffix))
            if start:
                known = [word for i in range(max(0, start - limit), start) if (word := text[i:start]) in starters]
            else:
                known = [_START] if _START in starters else []
            plain[start] = _top(candidates, {})
            for previous, scores in self._bigram_scores(known, candidates).items():
                after[start, previous] = _top(candidates, scores)
        return (after.get((0, _START)) or plain[0])[1]

    def _bigram_scores(
        self, known: list[str], candidates: list[tuple[int, str, float, tuple[float, list[str]]]]
    ) -> dict[str, dict[int, float]]:
        """``{previous: {end: log-score of text[start:end] after previous}}`` where that pair is a bigram."""
        found: dict[str, dict[int, float]] = {}
        for previous in known:
            follows = self.followers[previous]
            for end, word, _, _ in candidates:
                count = follows.get(word)
                if count is not None:
                    score = count / self.total / self._unigram_score(previous)
                    found.setdefault(previous, {})[end] = math.log10(score)
        return found


def _top(
    candidates: list[tuple[int, str, float, tuple[float, list[str]]]], bigram_scores: dict[int, float]
) -> tuple[float, list[str]]:
    """max() over (score, [word, *suffix words]) as wordsegment takes it: the first best, word lists on a tie."""
    top_score, top_index = 0.0, -1
    for index, (end, word, unigram, (suffix_score, suffix_words)) in enumerate(candidates):
        score = bigram_scores.get(end, unigram) + suffix_score
        if top_index < 0 or score > top_score:
            top_score, top_index = score, index
        elif score == top_score:
            _, top_word, _, (_, top_words) = candidates[top_index]
            if [word, *suffix_words] > [top_word, *top_words]:
                top_index = index
    _, word, _, (_, suffix_words) = candidates[top_index]
    return top_score, [word, *suffix_words]
