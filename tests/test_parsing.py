"""Output parsing on the kind of text a 135M-parameter model really writes."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from graph.contracts import KeyInfo
from graph.parsing import (
    MAX_COMPLETION_WORDS,
    Cleaned,
    Completions,
    _shared_letters,
    clean_completion,
    full_sentence,
    is_duplicate,
    parse_key_info,
    parse_yes_no,
)
from prompts import load_prompts

X_WANT = "After posting this, the user wants to"
X_ATTR = "The user posted this because the user is"
X_INTENT = "The user posted this because the user intended to"
X_REACT = "After posting this, the user feels"
O_EFFECT = "After viewing this, others will"
O_REACT = "After viewing this, others feel"
OPEN = "The user posted this because"


@pytest.mark.parametrize(
    ("stem", "raw", "text"),
    [
        # stem echoes: whole, any case, head only, tail only, with a pronoun
        (X_WANT, "After posting this, the user wants to share the news.", "share the news"),
        (X_WANT, "after posting this, the user wants to: share the news", "share the news"),
        (X_WANT, "AFTER POSTING THIS, THE USER WANTS TO share the news", "share the news"),
        (X_WANT, "the user wants to share the news", "share the news"),
        (X_WANT, "wants to share the news", "share the news"),
        (X_WANT, "to share the news", "share the news"),
        (X_WANT, "He wants to share the news.", "share the news"),
        (X_WANT, "They wants to share the news.", "share the news"),
        (X_WANT, "After posting this, the user will laugh", "will laugh"),
        (X_WANT, "After posting this, the user wants to\nshare the news", "share the news"),
        (
            X_INTENT,
            "The user posted this because the user intended to make people laugh.",
            "make people laugh",
        ),
        (X_ATTR, "the user is happy", "happy"),
        (X_ATTR, "is proud of his bike", "proud of his bike"),
        (X_REACT, "feels happy!", "happy"),
        (OPEN, "because they love their dog", "they love their dog"),
        (OPEN, "the user loves their dog", "the user loves their dog"),
        (O_EFFECT, "will be amused", "be amused"),
        # labels, quotes, bullets, markdown
        (X_WANT, "Completion: share the news", "share the news"),
        (X_WANT, 'Answer: "share the news"', "share the news"),
        (X_WANT, "Complete: After posting this, the user wants to ... share the news", "share the news"),
        (X_WANT, '"Share the news."', "share the news"),
        (X_WANT, "“share the news”", "share the news"),
        (X_WANT, "'share the news'", "share the news"),
        (X_WANT, "1. share the news\n2. get likes", "share the news"),
        (X_WANT, "- share the news", "share the news"),
        (X_WANT, "* share the news", "share the news"),
        (X_WANT, "**share the news**", "share the news"),
        (X_WANT, "`share the news`", "share the news"),
        (X_WANT, "(share the news)", "share the news"),
        # several lines or sentences: the first meaningful one
        (
            X_WANT,
            "share the news with friends.\nThe user posted this because they were happy.",
            "share the news with friends",
        ),
        (X_WANT, "\n\nshare the news\n", "share the news"),
        (X_WANT, "...\nshare the news", "share the news"),
        (O_EFFECT, " laugh at the joke. Others will also share it.", "laugh at the joke"),
        (X_WANT, "share the news; then sleep", "share the news"),
        (X_WANT, "share the news -- and sleep", "share the news"),
        # chat-template junk
        (X_WANT, "share the news<|im_end|>\n<|im_start|>user\nNext post", "share the news"),
        (X_WANT, "<|im_start|>assistant\nshare the news<|im_end|>", "share the news"),
        (X_WANT, "assistant\nshare the news", "share the news"),
        (X_WANT, "Assistant: share the news", "share the news"),
        (X_WANT, "share the news</s>", "share the news"),
        (X_WANT, "share the news<|endoftext|>garbage", "share the news"),
        # shapes seen from SmolLM2-135M: end-of-turn padding, loops cut mid-repeat, quoted words inside
        (X_WANT, " find out more.<|im_end|><|im_end|><|im_end|><|im_end|>", "find out more"),
        (X_ATTR, " a marching band marching band marching band marching band marching", "a marching band"),
        (X_WANT, ' "help" or "support" their team', '"help" or "support" their team'),
        (
            O_REACT,
            " a sense of wonder and admiration.<|im_end|><|im_end|>",
            "a sense of wonder and admiration",
        ),
        # loops
        (X_WANT, "share the the the the news", "share the news"),
        (X_WANT, "share it share it share it share it", "share it"),
        (X_WANT, "go to to to the park", "go to the park"),
        # trailing fragments
        (X_WANT, "share the news with her friends and", "share the news with her friends"),
        (X_WANT, "share the news,", "share the news"),
        (X_WANT, "share the news about the", "share the news about"),
        # kept as written
        (X_WANT, "share the news about the U.S. election", "share the news about the U.S. election"),
        (X_WANT, "share news, e.g. the promotion", "share news, e.g. the promotion"),
        (X_WANT, "share the news (and brag)", "share the news (and brag)"),
        (X_WANT, "show off her new iPhone", "show off her new iPhone"),
        (X_WANT, "Share the news", "share the news"),
        (X_WANT, "NASA news", "NASA news"),
        (X_ATTR, "very very happy", "very very happy"),
    ],
)
def test_clean_completion_text(stem: str, raw: str, text: str) -> None:
    cleaned = clean_completion(raw, stem)
    assert cleaned.text == text
    assert not cleaned.failed


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "\n\n",
        "...",
        "!!!",
        "…",
        "<completion>",
        "[your answer]",
        "N/A",
        "none",
        "12345",
        "to to to to to to to to",
        "wants to wants to wants to",
        "After posting this, the user wants to",
        "<|im_end|>",
        "<|im_start|>assistant\n<|im_end|>",
        "I'm sorry, but I cannot help with that.",
        "As an AI language model, I cannot know this.",
    ],
)
def test_unusable_completions_fail(raw: str) -> None:
    cleaned = clean_completion(raw, X_WANT)
    assert cleaned.failed


def test_clean_completion_never_raises_on_odd_input() -> None:
    for raw in ["\x00\x01", "🙂🙂", "<<<>>>", "{" * 50, "a" * 10_000, "\u200b", "'''", "- - -", "1."]:
        assert isinstance(clean_completion(raw, X_WANT), Cleaned)


def test_repaired_flag() -> None:
    assert clean_completion(" share the news.", X_WANT) == Cleaned("share the news", repaired=False, failed=False)
    assert clean_completion("Share the news", X_WANT).repaired is False  # only the case of the first letter
    assert clean_completion('"share the news"', X_WANT).repaired is True
    assert clean_completion("to share the news", X_WANT).repaired is True
    assert clean_completion("share the news. Then more.", X_WANT).repaired is True
    assert clean_completion("", X_WANT) == Cleaned("", repaired=False, failed=True)
    # an end-of-turn token is how a completion ends, not something repaired
    assert clean_completion(" share the news.<|im_end|><|im_end|>", X_WANT).repaired is False
    assert clean_completion("<|im_start|>assistant\nshare the news", X_WANT).repaired is True


def test_too_long_completion_is_capped_at_a_clause() -> None:
    raw = "share the news, " + " ".join(["and tell everyone about the great day at the beach"] * 5)
    cleaned = clean_completion(raw, X_WANT)
    assert cleaned.repaired and not cleaned.failed
    assert len(cleaned.text.split()) <= MAX_COMPLETION_WORDS
    assert not cleaned.text.endswith((" and", " the", " at"))


def test_cut_off_generation_drops_the_half_word() -> None:
    cleaned = clean_completion("share the news with her frien", X_WANT, truncated=True)
    assert cleaned.text == "share the news"
    assert cleaned.repaired
    # a finished sentence or a common last word survives the cut-off rule
    assert clean_completion("share the news with friends", X_WANT, truncated=True).text == (
        "share the news with friends"
    )
    assert clean_completion("share the news. and then som", X_WANT, truncated=True).text == "share the news"


def test_duplicates_of_other_relations_fail() -> None:
    previous = ["share the news", "feel proud"]
    assert clean_completion("Share the news.", X_WANT, previous=previous).failed
    assert clean_completion("share the news!", X_WANT, previous=previous).failed
    assert clean_completion("share the  news", X_WANT, previous=previous).failed
    assert not clean_completion("share the big news with family", X_WANT, previous=previous).failed
    assert not clean_completion("tell her friends", X_WANT, previous=previous).failed


def test_is_duplicate() -> None:
    assert is_duplicate("Make people laugh", ["make people laugh."])
    assert not is_duplicate("make people think", ["make people laugh"])
    assert not is_duplicate("anything", [])


def test_every_relation_stem_strips_its_own_echo() -> None:
    for relation in load_prompts().relations:
        cleaned = clean_completion(f"{relation.stem} something quite specific.", relation.stem)
        assert cleaned.text == "something quite specific", relation.name


def test_full_sentence() -> None:
    assert full_sentence(X_WANT, "share the news") == "After posting this, the user wants to share the news."
    assert full_sentence(X_WANT, "share it!") == "After posting this, the user wants to share it!"
    assert full_sentence(X_REACT + " ", " happy ") == "After posting this, the user feels happy."


# -- key information ---------------------------------------------------------------------------------------

FULL = KeyInfo(
    concept="grocery trip",
    action="biking to the store",
    object="bicycle",
    emotion="tired",
    keywords=["bike", "groceries", "car"],
)


@pytest.mark.parametrize(
    "raw",
    [
        "concept: grocery trip\naction: biking to the store\nobject: bicycle\nemotion: tired\n"
        "keywords: bike, groceries, car",
        "Concept: grocery trip\nAction: biking to the store\nObject: bicycle\nEmotion: tired\n"
        "Keywords: bike, groceries, car, Bike",
        "- **Concept:** grocery trip\n- **Action:** biking to the store\n- **Object:** bicycle\n"
        "- **Emotion:** tired\n- **Keywords:** bike, groceries, car",
        "1. concept: grocery trip\n2. action: biking to the store\n3. object: bicycle\n4. emotion: tired\n"
        "5. keywords: bike; groceries; car",
        "Here is the key information:\n\nconcept: grocery trip\naction: biking to the store\n"
        "object: bicycle\n"
        "emotion: tired\nkeywords: #bike #groceries #car\n\nI hope this helps!",
        '```json\n{"concept": "grocery trip", "action": "biking to the store", "object": "bicycle", '
        '"emotion": "tired", "keywords": ["bike", "groceries", "car"]}\n```',
        '{"Concept": "grocery trip", "Action": "biking to the store", "Object": "bicycle", '
        '"Emotion": "tired", "Keywords": "bike, groceries, car"}',
        "concept: grocery trip; action: biking to the store; object: bicycle; emotion: tired; "
        "keywords: bike, groceries, car",
        "concept: grocery trip\naction: biking to the store\nobject: bicycle\nemotion: tired\nkeywords:\n"
        "- bike\n- groceries\n- car\n\nThat is all.",
        "<|im_start|>assistant\nconcept: grocery trip\naction: biking to the store\nobject: bicycle\n"
        "emotion: tired\nkeywords: bike, groceries, car<|im_end|>",
        "concept: grocery trip\naction: biking to the store\nobject: bicycle\nemotion: tired.\n"
        "keywords: bike groceries car",
    ],
)
def test_parse_key_info_formats(raw: str) -> None:
    info, ok = parse_key_info(raw)
    assert ok
    assert info == FULL


def test_parse_key_info_partial_and_single_quoted() -> None:
    info, ok = parse_key_info("{'concept': 'grocery trip', 'emotion': 'tired'}")
    assert ok
    assert (info.concept, info.emotion, info.action, info.keywords) == ("grocery trip", "tired", "", [])


def test_parse_key_info_dash_separator_and_first_value_wins() -> None:
    info, ok = parse_key_info("Concept - trip\nAction - ride\nconcept: other")
    assert ok
    assert (info.concept, info.action) == ("trip", "ride")


def test_parse_key_info_fails_below_two_fields() -> None:
    assert parse_key_info("The post is about a grocery trip.") == (KeyInfo(), False)
    assert parse_key_info("") == (KeyInfo(), False)
    info, ok = parse_key_info("concept: grocery trip")
    assert info.concept == "grocery trip"
    assert not ok


def test_parse_key_info_ignores_template_echoes_and_placeholders() -> None:
    raw = (
        "concept: <the main concept, a few words>\naction: <the main action, a few words>\nobject: bike\n"
        "emotion: N/A\nkeywords: <3 to 5 keywords, comma separated, no personal names>"
    )
    info, ok = parse_key_info(raw)
    assert info == KeyInfo(object="bike")
    assert not ok


def test_parse_key_info_keywords_are_capped_deduped_and_stripped() -> None:
    info, _ = parse_key_info("concept: x\nkeywords:  Bike , bike, #car, 'store', , shop, market, mall, @user")
    assert info.keywords == ["Bike", "car", "store", "shop", "market"]


def test_parse_key_info_long_values_are_cut() -> None:
    info, _ = parse_key_info("concept: " + "word " * 50 + "\naction: ride")
    assert len(info.concept.split()) <= 12


# -- yes / no ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Yes", 1.0),
        (" yes.", 1.0),
        ("YES!", 1.0),
        ("Yes, it is plausible.", 1.0),
        ("**Yes**", 1.0),
        ("Answer: yes", 1.0),
        ("True", 1.0),
        ("The statement is plausible.", 1.0),
        ("I think yes.", 1.0),
        ("<|im_start|>assistant\nYes<|im_end|>", 1.0),
        ("No", 0.0),
        ("no.", 0.0),
        ("NO, it is not", 0.0),
        ("Nope, not typical", 0.0),
        ("Answer: No", 0.0),
        ("The statement is not plausible.", 0.0),
        ("The statement is not entirely plausible and typical", 0.0),
        ("The statement is plausible for this post,", 1.0),
        ("It is unlikely.", 0.0),
        ("implausible", 0.0),
        ("I would say no.", 0.0),
        ("", None),
        ("Maybe", None),
        ("I don't know", None),
        ("yes or no", None),
        ("Yes/No", None),
        ("The user is happy.", None),
    ],
)
def test_parse_yes_no(raw: str, expected: float | None) -> None:
    assert parse_yes_no(raw) == expected


def test_shared_letters_is_the_multiset_intersection() -> None:
    rng = random.Random(7)
    for _ in range(300):
        a = "".join(rng.choices("abcde '-", k=rng.randint(0, 20)))
        b = "".join(rng.choices("abcdef ", k=rng.randint(0, 20)))
        assert _shared_letters(a, b) == sum((Counter(a) & Counter(b)).values())


def test_decoration_precheck_matches_whenever_a_cleaning_pattern_would() -> None:
    from graph.parsing import _BULLET, _DECORATION, _LABEL, _MARKDOWN, _ROLE_PREFIX

    rng = random.Random(11)
    pieces = ["Assistant:", "model :", "Answer -", "a:", " - ", "* ", "1.", "(b) ", "**", "__", "`", "# ", "ok", " x "]
    for _ in range(2000):
        line = "".join(rng.choices(pieces, k=rng.randint(0, 4)))
        expected = any(p.search(line) for p in (_ROLE_PREFIX, _LABEL, _BULLET, _MARKDOWN))
        assert bool(_DECORATION.search(line)) == expected, line


def test_completions_so_far_catch_a_near_copy_of_any_of_them() -> None:
    seen = Completions(["make people laugh"])
    seen.add("share the news with friends")
    assert seen.has_near_copy("Share the news with friends!")
    assert seen.has_near_copy("make people laugh.")
    assert not seen.has_near_copy("ask for advice")
    assert clean_completion(" make people laugh.", X_WANT, previous=seen).failed
