"""Noisy-text normalisation for real tweets (the extract node's input; see README, "What it does, step by step").

Small models read ``"whew ... that extra <num> miles # nashvillesnow emoji_92"`` badly; they read
``"whew... that extra N miles nashville snow (emoji)"`` well. Every step here is a deterministic regex or
dictionary pass, so the same post always normalises to the same text and the result can be cached/compared.
Personal handles are dropped (``@user``) because MIKO's key information must not carry personal names.

Markers this module emits: ``@user``, ``(link)``, ``(emoji)``, ``N`` (a number the dataset masked) and
``(emoji name)`` for unicode emoji. ``normalize_text`` is idempotent: normalising its output changes nothing.
"""

from __future__ import annotations

import html
import re
import threading
from collections import Counter
from functools import cache, lru_cache

import emoji
from wordsegment import Segmenter

from graph.segment import FastSegmenter

USER = "@user"
LINK = "(link)"
EMOJI = "(emoji)"
NUMBER = "N"
MARKERS = frozenset({USER, LINK, EMOJI})

_MAX_HASHTAG_CHARS = 60  # wordsegment is quadratic-ish in length; longer tags are left whole
_COMMON_WORD_COUNT = 1_000_000  # unigram count above which a word is "common" in wordsegment's web corpus

_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"]+|<url>", re.IGNORECASE)
_USER = re.compile(r"<user>|(?<![\w@])@\w+", re.IGNORECASE)
_NUM = re.compile(r"<num>", re.IGNORECASE)
_MMSD_EMOJI = re.compile(r"\bemoji_\d+\b", re.IGNORECASE)
_GLUED_HASH = re.compile(r"(#[^\W_]\w*)(?=#[^\W_])")  # "#Trains#TheGrind"
_EMPTY_HASH = re.compile(r"#[ \t]*(?=#)")  # MMSD's "#  # dramaticthisweek"
_HASHTAG = re.compile(r"(?<![\w&#])#[ \t]{0,3}([^\W_]\w*)")
_CAMEL = re.compile(r"(?<=[A-Za-z][a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z]{2})")
_ELONGATED = re.compile(r"\b\w*([a-zA-Z])\1{2,}\w*\b")
_LETTER_RUN = re.compile(r"([a-zA-Z])\1{2,}")
_PUNCT_RUN = re.compile(r"([!?])[!? ]*[!?]|\.{4,}|,{2,}")
_SPACE_BEFORE = re.compile(r"\s+([.,!?%)\]}]|[:;](?![-']?[/\\()DPpO3*|]))")  # but keep " :/" and " ;)"
_SPACE_AFTER_OPEN = re.compile(r"([(\[{])\s+")
_QUOTED = re.compile(r"\"\s*([^\"]*?)\s*\"")
_CONTRACTION = re.compile(r"(\w)\s+'\s?(s|t|m|re|ve|ll|d)\b", re.IGNORECASE)
_SOLO_I = re.compile(r"(?<![\w'.-])i(?=$|[\s',!?;:]|\.(?!\w))")
_LEADING_JUNK = re.compile(r"^[\s.,;:|\-]+")
_SPACES = re.compile(r"[ \t\r\f\v]+")
_NEWLINES = re.compile(r"\s*\n\s*")
_WORD = re.compile(r"[a-zA-Z][a-zA-Z'-]*[a-zA-Z]|[a-zA-Z]")
_PAREN_SPAN = re.compile(r"\(([^()]*)\)")
_SKIN_TONE = re.compile(r",?\s*(?:medium-light|medium-dark|light|medium|dark) skin tone")

# Abbreviation table: whole tokens only (the regex below refuses letters, digits, @, #, ' and / next to them).
_ABBREVIATIONS: dict[str, str] = {
    "u": "you",
    "ur": "your",
    "urself": "yourself",
    "idk": "I don't know",
    "lol": "laughing out loud",
    "lmao": "laughing",
    "rofl": "laughing",
    "smh": "shaking my head",
    "tbh": "to be honest",
    "imo": "in my opinion",
    "imho": "in my opinion",
    "omg": "oh my god",
    "pls": "please",
    "plz": "please",
    "thx": "thanks",
    "thnx": "thanks",
    "ty": "thank you",
    "rt": "retweet",
    "btw": "by the way",
    "irl": "in real life",
    "ppl": "people",
    "bc": "because",
    "cuz": "because",
    "coz": "because",
    "bcuz": "because",
    "b4": "before",
    "gr8": "great",
    "thru": "through",
    "nvm": "never mind",
    "ikr": "I know, right",
    "fyi": "for your information",
    "dm": "direct message",
    "abt": "about",
    "tho": "though",
    "rn": "right now",
    "jk": "just kidding",
    "ily": "I love you",
    "bday": "birthday",
    "msg": "message",
    "govt": "government",
    "bf": "boyfriend",
    "gf": "girlfriend",
    "bff": "best friend",
    "tmrw": "tomorrow",
    "2day": "today",
    "2nite": "tonight",
    "im": "I'm",
    "ima": "I'm going to",
    "gonna": "going to",
    "wanna": "want to",
    "gotta": "got to",
    "w/o": "without",
    "w/e": "whatever",
    "b/c": "because",
}
_ABBREVIATION = re.compile(
    r"(?<![\w@#'/-])("
    + "|".join(sorted((re.escape(key).replace("/", r"\s?/\s?") for key in _ABBREVIATIONS), key=len, reverse=True))
    + r")(?![\w'/@#-]|\.\w)",
    re.IGNORECASE,
)
# "w/ friends", "w/friends" and MMSD's "w / friends"
_WITH = re.compile(r"(?<![\w@#'/-])w\s?/(?=\s*[\w@(])", re.IGNORECASE)

_STOPWORD_TEXT = """
    a about above after again against all almost also am an and any are aren't as at be because been
    before being below between both but by can can't cannot could couldn't did didn't do does doesn't
    doing don't down during each even ever every few for from further get gets getting got had hadn't
    has hasn't have haven't having he he'd he'll he's her here here's hers herself him himself his how
    how's however i i'd i'll i'm i've if in into is isn't it it's its itself just know let's like lot
    make made many may me might more most much must mustn't my myself never new no nor not now of off
    oh ok okay on once one only or other ought our ours ourselves out over own really right said same
    say says see she she'd she'll she's should shouldn't so some still such take than that that's the
    their theirs them themselves then there there's these they they'd they'll they're they've thing
    things think this those though through thus to today too under until up upon us very via want was
    wasn't way we we'd we'll we're we've well were weren't what what's when when's where where's
    whether which while who who's whom why why's will with without won't would wouldn't yes yet you
    you'd you'll you're you've your yours yourself yourselves
"""
_STOPWORDS = frozenset(_STOPWORD_TEXT.split())

_segmenter_lock = threading.Lock()
_loaded_segmenter: Segmenter | None = None
_loaded_fast_segmenter: FastSegmenter | None = None


def _segmenter() -> Segmenter:
    """wordsegment's unigram/bigram tables (~1 s to load): loaded once, on first use, thread-safely."""
    global _loaded_segmenter, _loaded_fast_segmenter
    if _loaded_segmenter is None:
        with _segmenter_lock:
            if _loaded_segmenter is None:
                segmenter = Segmenter()
                segmenter.load()
                _loaded_fast_segmenter = FastSegmenter(segmenter)
                _loaded_segmenter = segmenter
    return _loaded_segmenter


def _fast_segmenter() -> FastSegmenter:
    """wordsegment's search on the same tables, ~3x faster (graph/segment.py)."""
    _segmenter()
    assert _loaded_fast_segmenter is not None
    return _loaded_fast_segmenter


@cache
def _emoji_names() -> frozenset[str]:
    """The spoken names of all unicode emoji, to tell ``(face with tears of joy)`` from a real parenthesis."""
    names = set()
    for data in emoji.EMOJI_DATA.values():
        names.add(_emoji_words(data["en"]))
    return frozenset(names)


def _emoji_words(name: str) -> str:
    words = name.strip(":").replace("_", " ").lower()
    return _SKIN_TONE.sub("", words).strip()


def is_common_word(word: str) -> bool:
    """True when ``word`` is frequent in wordsegment's web corpus (used to spot cut-off half-words)."""
    return _segmenter().unigrams.get(word.lower(), 0.0) >= _COMMON_WORD_COUNT


@lru_cache(maxsize=65536)
def segment_hashtag(tag: str) -> str:
    """``NoReligion`` -> ``no religion``; ``mymostepsup`` -> ``my mo steps up``; camelCase first."""
    if len(tag) > _MAX_HASHTAG_CHARS:
        return tag.lower()
    words: list[str] = []
    for part in _CAMEL.split(tag.replace("_", " ")):
        for piece in part.split():
            if piece.isupper() and len(piece) <= 5:
                words.append(piece.lower())  # acronyms (NYC, MAGA): segmenting them invents words
            else:
                words.extend(_fast_segmenter().segment(piece) or [piece.lower()])
    return " ".join(words)


def _replace_unicode_emoji(text: str) -> str:
    if text.isascii():  # every emoji has a non-ASCII code point; most tweets have none
        return text

    def name(chars: str, data: dict[str, str]) -> str:
        return f" ({_emoji_words(data['en'])}) "

    return emoji.replace_emoji(text, replace=name)


def _collapse_repeats(text: str) -> str:
    """``(emoji) (emoji)`` -> ``(emoji)``; the same for ``@user`` and identical emoji names in a row."""
    tokens = re.split(r"(\([^()]*\)|@user)", text)
    out: list[str] = []
    last_marker: str | None = None
    for token in tokens:
        if not token:
            continue
        is_marker = token == USER or (token.startswith("(") and token.endswith(")"))
        if is_marker and token == last_marker:
            continue
        if token.strip():
            last_marker = token if is_marker else None
        out.append(token)
    return "".join(out)


def _fix_elongation(match: re.Match[str]) -> str:
    """``goooood`` -> ``good``, ``yesss`` -> ``yes``, ``sooooo`` -> ``soo``: runs become 2 or 1 letters.

    A common word as written (xxx) stays; else a common word with doubles wins (real doubles: good, too,
    cool), then any known word, else the doubled form.
    """
    word = match.group(0)
    unigrams = _segmenter().unigrams
    if unigrams.get(word.lower(), 0.0) >= _COMMON_WORD_COUNT:
        return word
    runs = list(_LETTER_RUN.finditer(word))
    doubled = _LETTER_RUN.sub(r"\1\1", word)
    if len(runs) > 3:
        return doubled
    candidates = [""]
    position = 0
    for run in runs:
        prefix = word[position : run.start()]
        letter = run.group(1)
        candidates = [c + prefix + letter * n for c in candidates for n in (2, 1)]
        position = run.end()
    candidates = [c + word[position:] for c in candidates]
    common = [c for c in candidates if unigrams.get(c.lower(), 0.0) >= _COMMON_WORD_COUNT]
    if common:
        return max(common, key=lambda c: (len(c), unigrams[c.lower()]))
    known = max(candidates, key=lambda c: unigrams.get(c.lower(), 0.0))
    return known if unigrams.get(known.lower(), 0.0) > 0 else doubled


def _expand_abbreviation(match: re.Match[str]) -> str:
    key = re.sub(r"\s+", "", match.group(0)).lower()
    return _ABBREVIATIONS.get(key, match.group(0))


def _hashtag(match: re.Match[str]) -> str:
    return " " + segment_hashtag(match.group(1)) + " "


def _tidy_spacing(text: str) -> str:
    text = _CONTRACTION.sub(r"\1'\2", text)
    text = _QUOTED.sub(lambda m: f'"{m.group(1)}"', text)
    text = _SPACE_BEFORE.sub(r"\1", text)
    text = _SPACE_AFTER_OPEN.sub(r"\1", text)
    text = _PUNCT_RUN.sub(lambda m: m.group(0)[0] if m.group(0)[0] in "!?," else "...", text)
    text = _SPACES.sub(" ", text)
    text = _NEWLINES.sub("\n", text)
    return _LEADING_JUNK.sub("", text).strip()


def normalize_text(text: str) -> str:
    """Readable, name-free text for a model: see the module docstring for what changes."""
    for _ in range(2):  # "&amp;amp;" is common in scraped tweets
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    text = _URL.sub(f" {LINK} ", text)
    text = _USER.sub(f" {USER} ", text)
    text = _NUM.sub(f" {NUMBER} ", text)
    text = _MMSD_EMOJI.sub(f" {EMOJI} ", text)
    text = _replace_unicode_emoji(text)
    text = _EMPTY_HASH.sub("", _GLUED_HASH.sub(r"\1 ", text))
    text = _HASHTAG.sub(_hashtag, text)
    text = _ELONGATED.sub(_fix_elongation, text)
    text = _tidy_spacing(text)
    text = _ABBREVIATION.sub(_expand_abbreviation, text)
    text = _WITH.sub("with ", text)
    text = _SOLO_I.sub("I", text)
    text = _collapse_repeats(text)
    return _tidy_spacing(text)


def content_keywords(text: str, k: int = 5) -> list[str]:
    """Up to ``k`` content words, commonest first (ties: first seen): the fallback when key info is unusable.

    Drops stopwords, markers, emoji names, numbers and words under three letters.
    """
    normalised = normalize_text(text)
    emoji_names = _emoji_names()
    normalised = _PAREN_SPAN.sub(lambda m: " " if m.group(1).lower() in emoji_names else m.group(0), normalised)
    for marker in MARKERS:
        normalised = normalised.replace(marker, " ")
    words = [w.lower() for w in _WORD.findall(normalised)]
    words = [w for w in words if len(w) >= 3 and w not in _STOPWORDS]
    counts = Counter(words)
    first_seen = {word: index for index, word in reversed(list(enumerate(words)))}
    ranked = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
    return ranked[:k]
