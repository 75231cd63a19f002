"""Output parsing that survives small models (unparseable output is repaired, or marked ``parse_failed`` in the event).

A 135M-parameter model asked to complete "After posting this, the user wants to" answers with echoes of the
stem, labels, quotes, bullets, several lines, chat-template tokens, loops ("to to to") or nothing. Each
function here turns such text into the part worth keeping and says whether it had to repair it or gave up,
so the graph can count parse failures instead of crashing a post.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from difflib import SequenceMatcher
from functools import lru_cache

from graph.contracts import KeyInfo
from graph.normalize import is_common_word

MAX_COMPLETION_WORDS = 30
MAX_FIELD_WORDS = 12
_DUPLICATE_RATIO = 0.9

_SPECIAL_TOKEN = re.compile(r"<\|[^|<>]{1,40}\|>|</?s>|\[/?INST\]|<end_of_turn>|<start_of_turn>|<eos>|<bos>")
_ROLE_LINE = re.compile(r"^\s*(?:assistant|user|system|model)\s*:?\s*$", re.IGNORECASE)
_ROLE_PREFIX = re.compile(r"^\s*(?:assistant|model)\s*:\s*", re.IGNORECASE)
_LABEL = re.compile(
    r"^\s*(?:completion|complete|answer|output|response|result|intention|sentence|reply|a)\s*[:\-=]\s*",
    re.IGNORECASE,
)
_BULLET = re.compile(r"^\s*(?:[-*•·>]+|\(?\d{1,2}[.):]|\(?[a-e][.)](?=\s))\s*")
_MARKDOWN = re.compile(r"\*\*|__|`+|^#+\s*")
# Matches where any of the four above would: most lines have none of them, and one search is cheaper than four subs.
_DECORATION = re.compile(
    f"(?i:{_ROLE_PREFIX.pattern})|(?i:{_LABEL.pattern})|(?:{_BULLET.pattern})|(?:{_MARKDOWN.pattern})"
)
_QUOTES = "\"'“”‘’`«»"
_CLOSING_QUOTE = {'"': '"', "'": "'", "“": "”", "‘": "’", "«": "»", "`": "`"}
_PAIRS = {"(": ")", "[": "]", "{": "}"}
_OPENERS = frozenset(_QUOTES) | _PAIRS.keys()
_SENTENCE_END = re.compile(
    r"(?<!\b[A-Z])(?<!\b[eE]\.g)(?<!\b[iI]\.e)(?<!\betc)(?<!\b(?:vs|Mr|Ms|Dr|St|mr|ms|dr|st))[.!?]+(?=\s|$)"
    r"|\s+-{1,2}\s+|;"
)
_WORD = re.compile(r"[\w'-]+")
_SPACE_RUN = re.compile(r"\s+")
_ALPHA = re.compile(r"[^\W\d_]")
_PLACEHOLDER = re.compile(r"^\s*(?:<[^>]*>|\[[^\]]*\]|\.{2,}|…|n/?a|none|null|nothing|unknown|tbd|-+)\s*$", re.I)
_REFUSAL = re.compile(
    r"^\s*(?:i'?m sorry|sorry,|i (?:cannot|can't|can not|am unable|won't)|as an ai|i don'?t know\b)", re.I
)
_PRONOUN_SUBJECT = re.compile(r"^(?:he|she|they|the user|user|this user)\b\s*", re.IGNORECASE)
# Words a finished phrase never ends with, and more that only a cut-off one does.
_DANGLING_TEXT = "a an the and or but nor because if when while whose his their my your our its"
_DANGLING_CUT_TEXT = """to of for with in on at by from into onto about as than that which who whom her this
these those is are was were be been will would can could should may might must has have had do does did not
very more most some any such"""
_DANGLING = frozenset(_DANGLING_TEXT.split())
_DANGLING_CUT = _DANGLING | frozenset(_DANGLING_CUT_TEXT.split())
_KEEP_DOUBLE = frozenset({"had", "that", "very", "really", "so", "is", "no", "bye", "ha", "haha"})

_KEY_FIELDS = ("concept", "action", "object", "emotion", "keywords")
_FIELD_ALIASES = {
    "concept": "concept",
    "main concept": "concept",
    "topic": "concept",
    "action": "action",
    "main action": "action",
    "object": "object",
    "main object": "object",
    "emotion": "emotion",
    "emotions": "emotion",
    "feeling": "emotion",
    "sentiment": "emotion",
    "keywords": "keywords",
    "keyword": "keywords",
    "key words": "keywords",
    "tags": "keywords",
}
_FIELD_LABEL = re.compile(
    r"(?:^|(?<=[\s;,{\"'*|]))[\"'*_]*("
    + "|".join(sorted((re.escape(alias) for alias in _FIELD_ALIASES), key=len, reverse=True))
    + r")[\"'*_]*[ \t]*(?:[:=]|-(?=[ \t]))[ \t]*",
    re.IGNORECASE,
)
_JSON_OBJECT = re.compile(r"\{.*\}", re.DOTALL)
_KEYWORD_SPLIT = re.compile(r"\s*[,;|/\n]\s*|\s+(?:and)\s+|\s*#")

_YES = frozenset({"yes", "yeah", "yep", "yup", "y", "true", "correct", "plausible", "acceptable", "sure"})
_NO = frozenset({"no", "nope", "nah", "n", "false", "incorrect", "implausible", "unacceptable", "wrong", "not"})
_NEGATED_YES = re.compile(
    r"\b(?:(?:not|isn't|neither|nor)\s+(?:\w+\s+){0,2}?|un|im)(?:plausible|typical|acceptable|likely)\b", re.I
)
_POSITIVE = re.compile(r"\b(?:plausible|typical|acceptable|likely)\b", re.I)


@dataclass(frozen=True)
class Cleaned:
    """A completion to follow its stem; ``repaired``: something was removed; ``failed``: unusable."""

    text: str
    repaired: bool
    failed: bool


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


@lru_cache(maxsize=64)
def _stem_words(stem: str) -> list[str]:
    """A relation stem's words (ten stems, asked for on every completion; callers do not modify the list)."""
    return _words(stem)


@lru_cache(maxsize=64)
def _stem_word_set(stem: str) -> frozenset[str]:
    return frozenset(_stem_words(stem))


@lru_cache(maxsize=4096)
def _comparable(text: str) -> str:
    """Cached: a post's accepted completions are compared with each of its later ones."""
    return " ".join(_words(text))


def _strip_chat_junk(text: str) -> str:
    """Drop template tokens before the answer and cut at the first one after it (end of turn)."""
    text = text.lstrip()
    while match := _SPECIAL_TOKEN.match(text):
        text = text[match.end() :].lstrip()
    match = _SPECIAL_TOKEN.search(text)
    return text[: match.start()] if match else text


def _strip_wrapping(text: str) -> str:
    """Remove quotes around text and brackets that enclose all of it; leave inner ones alone."""
    previous = None
    while previous != text:
        previous = text
        text = text.strip()
        if text[:1] not in _OPENERS and text[-1:] not in _QUOTES:
            break  # nothing any branch below would remove
        odd_quotes = sum(text.count(quote) for quote in _QUOTES) % 2 == 1
        if len(text) > 1 and text[0] in _CLOSING_QUOTE and text[-1] == _CLOSING_QUOTE[text[0]]:
            closing = re.escape(text[-1])
            if not re.search(rf"(?<!\w){closing}|{closing}(?!\w)", text[1:-1]):  # '"a" or "b"' stays
                text = text[1:-1]
            else:
                break
        elif text[:1] in _QUOTES and odd_quotes:
            text = text[1:]
        elif text[-1:] in _QUOTES and odd_quotes:
            text = text[:-1]
        elif text[:1] in _PAIRS and text.endswith(_PAIRS[text[0]]):
            text = text[1:-1]
    return text


def _clean_line(line: str) -> str:
    """Remove decoration a model puts around one answer line: roles, labels, bullets, markdown, quotes."""
    previous = None
    while previous != line:
        previous = line
        if _DECORATION.search(line):
            line = _ROLE_PREFIX.sub("", line)
            line = _LABEL.sub("", line)
            line = _BULLET.sub("", line)
            line = _MARKDOWN.sub("", line)
        line = _strip_wrapping(line)
    return line


def _strip_echo(text: str, stem: str) -> str:
    """Remove the stem (or its tail, or its head) when the model repeated it before its completion."""
    stem_words = _stem_words(stem)
    if not stem_words:
        return text
    # Most completions start with a word of their own: no echo to look for (the checks below need one).
    first = _WORD.search(text)
    if first is None or (
        first.group(0).lower() not in _stem_word_set(stem)
        and ("user" not in stem_words or not _PRONOUN_SUBJECT.match(_strip_wrapping(text)))
    ):
        return text
    tokens = list(_WORD.finditer(text))
    lowered = [t.group(0).lower() for t in tokens]
    # The whole stem or at least three words of its head ("After posting this, the user will ...").
    head = 0
    while head < min(len(stem_words), len(lowered)) and stem_words[head] == lowered[head]:
        head += 1
    if head >= 3 or head == len(stem_words):
        text = text[tokens[head - 1].end() :]
        tokens = list(_WORD.finditer(text))
        lowered = [t.group(0).lower() for t in tokens]
    else:
        # "He wants to share", "the user is happy": a pronoun standing for "the user".
        subject = _PRONOUN_SUBJECT.match(_strip_wrapping(text))
        if subject and "user" in stem_words:
            rest = _strip_wrapping(text)[subject.end() :]
            after_user = stem_words[len(stem_words) - stem_words[::-1].index("user") :]
            if after_user and _words(rest)[: len(after_user)] == after_user:
                text, tokens = rest, list(_WORD.finditer(rest))
                lowered = [t.group(0).lower() for t in tokens]
    # The stem's tail ("wants to share", "to share", "because ..."): longest suffix first.
    for size in range(min(len(stem_words), len(lowered)), 0, -1):
        if lowered[:size] == stem_words[-size:]:
            return text[tokens[size - 1].end() :]
    return text


def _collapse_loops(text: str) -> str:
    """``to to to`` -> ``to``; ``a band a band a band a`` -> ``a band``; ``very very`` stays."""

    out: list[str] = []
    keys: list[str] = []  # each kept word as compared: lowercase, without trailing punctuation
    unit: list[str] = []  # the last repeated word group, and where its kept copy ends
    unit_end = 0
    for word in text.split():
        out.append(word)
        keys.append(word.lower().strip(",.!?"))
        for size in (1, 2, 3, 4):
            if len(keys) < 2 * size or keys[-size:] != keys[-2 * size : -size]:
                continue
            tripled = len(keys) >= 3 and keys[-3] == keys[-1]
            if size == 1 and keys[-1] in _KEEP_DOUBLE and not tripled:
                continue
            del out[-size:], keys[-size:]
            unit, unit_end = keys[-size:], len(out)
            break
    tail = keys[unit_end:]
    if unit and 0 < len(tail) < len(unit) and tail == unit[: len(tail)]:
        del out[unit_end:]  # the loop's last, cut-off repetition
    return " ".join(out)


def _first_sentence(text: str) -> str:
    match = _SENTENCE_END.search(text)
    return text[: match.start()] if match else text


def _trim_dangling(text: str, truncated: bool) -> str:
    """Drop what a cut-off generation leaves at the end: a half-word, then function words (and, the...)."""
    words = text.split()
    if truncated and len(words) > 1 and not is_common_word(words[-1].strip(",:;'\"")):
        words.pop()
    dangling = _DANGLING_CUT if truncated else _DANGLING
    while len(words) > 1 and words[-1].lower().strip(",:;'\"") in dangling:
        words.pop()
    return " ".join(words).rstrip(",:;-– ")


def _cap_words(text: str) -> tuple[str, bool]:
    words = text.split()
    if len(words) <= MAX_COMPLETION_WORDS:
        return text, False
    capped = " ".join(words[:MAX_COMPLETION_WORDS])
    comma = capped.rfind(",")
    if comma > 0 and len(capped[:comma].split()) >= 5:
        return capped[:comma], True
    return capped, True


def _lowercase_start(text: str) -> str:
    """``Share the news`` -> ``share the news`` to read after the stem; ``I``, ``NASA``, ``iPhone`` stay."""
    first = text.split(" ", 1)[0]
    if len(first) > 1 and first[0].isupper() and first[1:].islower() and first not in {"I'm", "I've", "I'd"}:
        return first[0].lower() + text[1:]
    return text


def is_duplicate(text: str, previous: Sequence[str] | Completions) -> bool:
    """True when ``text`` is (nearly) the same as one of ``previous``, ignoring case and punctuation."""
    seen = previous if isinstance(previous, Completions) else Completions(previous)
    return seen.has_near_copy(text)


class Completions:
    """A post's completions so far, kept as the duplicate check compares them (each new one meets them all).

    Cheap checks first: exact match, then a length bound that no near-copy can break, then difflib's letter
    bound, and only then difflib itself (it dominated the graph's CPU when run on every pair).
    """

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._comparables: list[tuple[str, int]] = []
        for text in texts:
            self.add(text)

    def add(self, text: str) -> None:
        comparable = _comparable(text)
        self._comparables.append((comparable, len(comparable)))

    def has_near_copy(self, text: str) -> bool:
        mine = _comparable(text)
        size = len(mine)
        for theirs, their_size in self._comparables:
            if mine == theirs:
                return True
            total = size + their_size
            if not total or 2 * min(size, their_size) / total < _DUPLICATE_RATIO:
                continue
            if 2 * _shared_letters(mine, theirs) / total < _DUPLICATE_RATIO:  # difflib's quick_ratio
                continue
            if SequenceMatcher(None, mine, theirs, autojunk=False).ratio() >= _DUPLICATE_RATIO:
                return True
        return False


def _shared_letters(a: str, b: str) -> int:
    """How many characters two strings have in common, as multisets (``Counter & Counter``, in one set operation)."""
    return len(_occurrences(a) & _occurrences(b))


@lru_cache(maxsize=4096)
def _occurrences(text: str) -> frozenset[int]:
    """Each character with its occurrence number ("aab": a#0, a#1, b#0): multisets as sets, so ``&`` intersects."""
    seen: dict[str, int] = {}
    out = []
    for char in text:
        number = seen.get(char, 0)
        seen[char] = number + 1
        out.append(ord(char) << 32 | number)
    return frozenset(out)


def _as_written(text: str) -> str:
    """What counts as unchanged: spacing, a final period and the first letter's case do not."""
    text = _SPACE_RUN.sub(" ", text).strip().rstrip(".!")
    return text[:1].lower() + text[1:]


def clean_completion(
    raw: str, stem: str, *, previous: Sequence[str] | Completions = (), truncated: bool = False
) -> Cleaned:
    """The completion of ``stem`` inside a model's raw output.

    ``previous`` holds completions already accepted for the post's other relations: a near-copy of one fails.
    ``truncated`` says the generation hit its token limit (finish reason "length"), so the last word may be
    a fragment; a text that had to be capped at :data:`MAX_COMPLETION_WORDS` is treated the same way.
    """
    cleaned = _clean_alone(raw or "", stem, truncated)
    if cleaned.failed or not is_duplicate(cleaned.text, previous):
        return cleaned
    return replace(cleaned, failed=True)


@lru_cache(maxsize=8192)
def _clean_alone(raw: str, stem: str, truncated: bool) -> Cleaned:
    """:func:`clean_completion` without the duplicate check (cached: small models repeat themselves)."""
    chosen = ""
    for line in _strip_chat_junk(raw).splitlines():
        if _ROLE_LINE.match(line) or _PLACEHOLDER.match(line):
            continue
        candidate = _clean_line(_strip_echo(_clean_line(line), stem).lstrip(" ,:;.-–…"))
        if _ALPHA.search(candidate) and not _PLACEHOLDER.match(candidate):
            chosen = candidate
            break
    sentence = _first_sentence(chosen)
    cut_short = truncated and sentence == chosen
    sentence = _collapse_loops(sentence)
    sentence = _clean_line(_strip_echo(sentence, stem).lstrip(" ,:;.-–…"))
    sentence, capped = _cap_words(sentence)
    sentence = _trim_dangling(sentence, cut_short or capped)
    sentence = _SPACE_RUN.sub(" ", _strip_wrapping(sentence.rstrip(".,;:!?… "))).strip()
    sentence = _lowercase_start(sentence)
    usable = bool(_ALPHA.search(sentence)) and not _PLACEHOLDER.match(sentence)
    return Cleaned(
        text=sentence if usable else "",
        repaired=_as_written(sentence) != _as_written(_strip_chat_junk(raw)),
        failed=not usable or bool(_REFUSAL.match(sentence)),
    )


def full_sentence(stem: str, completion: str) -> str:
    """``("After posting this, the user wants to", "share it")`` -> ``"... the user wants to share it."``"""
    sentence = f"{stem.strip()} {completion.strip()}".strip()
    return sentence if sentence.endswith((".", "!", "?")) else sentence + "."


# -- key information -----------------------------------------------------------------------------------------


def _clean_value(value: str) -> str:
    value = _MARKDOWN.sub("", value).strip()
    if _PLACEHOLDER.match(value):  # includes the template's own "<the main concept, a few words>"
        return ""
    value = _strip_wrapping(value.strip(" .,;:{}"))
    if _PLACEHOLDER.match(value) or not _ALPHA.search(value):
        return ""
    return " ".join(value.split()[:MAX_FIELD_WORDS])


def _split_keywords(value: str | list[object]) -> list[str]:
    """Up to 5 keywords from ``"a, b, c"``, ``"#a #b"``, ``"a b c"`` or a JSON list; deduplicated."""
    if isinstance(value, list):
        parts = [str(item) for item in value]
    elif _PLACEHOLDER.match(value):
        return []
    else:
        parts = _KEYWORD_SPLIT.split(value)
        if len(parts) == 1 and len(value.split()) > 2:
            parts = value.split()
    keywords: list[str] = []
    seen: set[str] = set()
    for part in parts:
        keyword = _clean_value(part)
        if not keyword or len(keyword.split()) > 4 or keyword.lower() in seen or "@user" in keyword.lower():
            continue
        seen.add(keyword.lower())
        keywords.append(keyword)
    return keywords[:5]


def _fields_from_json(raw: str) -> dict[str, object]:
    match = _JSON_OBJECT.search(raw)
    if not match:
        return {}
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return {}
    if not isinstance(data, dict):
        return {}
    fields: dict[str, object] = {}
    for key, value in data.items():
        name = _FIELD_ALIASES.get(str(key).strip().lower().replace("_", " "))
        if name and name not in fields and isinstance(value, str | list):
            fields[name] = value
    return fields


def _fields_from_lines(raw: str) -> dict[str, object]:
    """``concept: x`` lines, bullets and bold included; also one line of ``concept: x; action: y``."""
    fields: dict[str, object] = {}
    labels = list(_FIELD_LABEL.finditer(raw))
    for index, label in enumerate(labels):
        end = labels[index + 1].start() if index + 1 < len(labels) else len(raw)
        value = raw[label.end() : end]
        name = _FIELD_ALIASES[label.group(1).lower()]
        first_line, _, rest = value.partition("\n")
        if name == "keywords" and not first_line.strip():
            # A bulleted list under the label: the lines up to the first blank or non-bullet line.
            items = []
            for line in rest.splitlines():
                if not line.strip() or not _BULLET.match(line):
                    break
                items.append(_BULLET.sub("", line))
            value = "\n".join(items)
        else:
            value = first_line
        if name not in fields:
            fields[name] = value.strip().rstrip(";,")
    return fields


def parse_key_info(raw: str) -> tuple[KeyInfo, bool]:
    """Key information from the extract node's output; ``ok`` is False when fewer than 2 fields were readable.

    Accepts the requested ``field: value`` lines in any case, with bullets or markdown, or a JSON object
    (also inside a code fence). Missing fields stay empty.
    """
    raw = _strip_chat_junk(raw or "")
    fields = _fields_from_json(raw) or _fields_from_lines(raw)
    values: dict[str, object] = {}
    for name in _KEY_FIELDS:
        value = fields.get(name)
        if value is None:
            continue
        if name == "keywords":
            values[name] = _split_keywords(value if isinstance(value, list) else str(value))
        else:
            text = ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)
            values[name] = _clean_value(text)
    info = KeyInfo(**values)
    readable = sum(1 for name in _KEY_FIELDS if getattr(info, name))
    return info, readable >= 2


# -- yes / no ------------------------------------------------------------------------------------------------


def parse_yes_no(raw: str) -> float | None:
    """1.0 for a yes-ish answer, 0.0 for a no-ish one, None when the text does not say."""
    text = _clean_line(_strip_chat_junk(raw or "").strip())
    words = _words(text)
    if not words or ({"yes", "no"} <= set(words[:3])):  # an echo of "Answer yes or no"
        return None
    if words[0] in _YES:
        return 1.0
    if words[0] in _NO:
        return 0.0
    if _NEGATED_YES.search(text):
        return 0.0
    said_yes = any(word in {"yes", "yeah", "yep"} for word in words)
    said_no = any(word in {"no", "nope"} for word in words)
    if said_yes != said_no:
        return 1.0 if said_yes else 0.0
    if not said_yes and _POSITIVE.search(text):
        return 1.0
    return None
