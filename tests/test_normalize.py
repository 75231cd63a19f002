"""Noisy-text normalisation: one small example per rule, then whole tweets in the shapes real data has."""

from __future__ import annotations

import random

import pytest

from graph.normalize import content_keywords, is_common_word, normalize_text, segment_hashtag


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # hashtags: camelCase, lowercase runs, MMSD's "# tag" with spaces, glued tags, acronyms, digits
        ("#NoReligion", "no religion"),
        ("#BlackLivesMatter", "black lives matter"),
        ("# mymostepsup", "my mo steps up"),
        ("#  nashvillesnow", "nashville snow"),
        ("#Trains#TheGrind", "trains the grind"),
        ("#NYC", "nyc"),
        ("#NYCMarathon", "nyc marathon"),
        ("#COVID19", "covid 19"),
        ("# 2017", "2017"),
        ("#  # dramaticthisweek", "dramatic this week"),
        ("C# rocks", "C# rocks"),
        # unicode emoji to words; repeats and skin tones collapse
        ("great 😂", "great (face with tears of joy)"),
        ("so good 😂😂😂", "so good (face with tears of joy)"),
        ("nice 👍🏽", "nice (thumbs up)"),
        # MMSD emoji ids: one neutral marker per run
        ("done emoji_92", "done (emoji)"),
        ("done emoji_92 emoji_549 emoji_818", "done (emoji)"),
        ("emoji_1 text emoji_2", "(emoji) text (emoji)"),
        # mentions and <user>
        ("@JohnSmith hi", "@user hi"),
        ("hi <user> and <USER>", "hi @user and @user"),
        ("<user> <user> <user> look", "@user look"),
        (".@nypost wrong", "@user wrong"),
        ("mail me at jo.doe@example.com", "mail me at jo.doe@example.com"),
        # links
        ("see https://t.co/abc?x=1#frag now", "see (link) now"),
        ("www.example.com/page", "(link)"),
        ("two http://a.co/1 http://b.co/2", "two (link)"),  # runs of one marker collapse
        # masked numbers
        ("that extra <num> miles", "that extra N miles"),
        ("my <num> year old aunt", "my N year old aunt"),
        # elongation: shortened, real doubles kept
        ("sooooo tired", "soo tired"),
        ("goooood morning", "good morning"),
        ("yesssss", "yes"),
        ("loooove it", "love it"),
        ("too cool", "too cool"),
        ("coffee", "coffee"),
        ("wooooo", "woo"),
        # abbreviations, whole words only, any case
        ("u r late", "you r late"),
        ("ur dog", "your dog"),
        ("idk", "I don't know"),
        ("LOL", "laughing out loud"),
        ("smh tbh imo", "shaking my head to be honest in my opinion"),
        ("OMG pls thx", "oh my god please thanks"),
        ("RT @user: hello", "retweet @user: hello"),
        ("w/ friends", "with friends"),
        ("w/friends", "with friends"),
        ("w / friends", "with friends"),
        ("w/o sugar", "without sugar"),
        ("late b/c traffic", "late because traffic"),
        ("the U.S. team", "the U.S. team"),
        ("a u-turn", "a u-turn"),
        ("lollipop fur ura", "lollipop fur ura"),
        ("rtl rtx", "rtl rtx"),
        # MMSD spacing and contractions
        ("whew ... that was it .", "whew... that was it."),
        ("oh , good .", "oh, good."),
        ("don 't , it 's fine , we 're ok", "don't, it's fine, we're ok"),
        ("i 'm here", "I'm here"),
        ("you and i .", "you and I."),
        ('" oh , good . "', '"oh, good."'),
        ("( jan 5 )", "(jan 5)"),
        ("really ? ? ! !", "really?"),
        ("wait !!!!", "wait!"),
        ("a long day :/", "a long day :/"),
        ("fun ;)", "fun ;)"),
        (". <user> lucky", "@user lucky"),
        ("a   lot\t of   space ", "a lot of space"),
        # html entities, also double-escaped
        ("fish &amp; chips", "fish & chips"),
        ("fish &amp;amp; chips", "fish & chips"),
        ("&quot;hi&quot;", '"hi"'),
        ("", ""),
    ],
)
def test_normalize_rules(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            "whew ... that extra <num> miles today to the grocery store &amp; back wore me out .  "
            "so why are you using a car ? # mymostepsup emoji_92 emoji_549 emoji_818",
            "whew... that extra N miles today to the grocery store & back wore me out. "
            "so why are you using a car? my mo steps up (emoji)",
        ),
        (
            '" oh , good . now no one will know we \'re here . " # remingtonsteele # delivery  emoji_1594',
            '"oh, good. now no one will know we\'re here." remington steele delivery (emoji)',
        ),
        (
            "@Sam_Jones OMG sooooo tired of this 😩😩 #MondayBlues http://t.co/xyz",
            "@user oh my god soo tired of this (weary face) monday blues (link)",
        ),
        (
            "thanks <user> and <user>  . wtf am i paying for",
            "thanks @user and @user. wtf am I paying for",
        ),
    ],
)
def test_whole_tweets(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "whew ... <num> miles # mymostepsup emoji_92",
        "@a @b #x#y lol 😂 https://x.co",
        "\" quoted , text \" and ' single ' ones",
        "sooooo ... # hhh ! ! ?",
    ],
)
def test_normalize_is_idempotent(raw: str) -> None:
    once = normalize_text(raw)
    assert normalize_text(once) == once


def test_long_input_stays_fast_enough_to_finish() -> None:
    text = "soooo #hashtagsarefun @someone " * 2000 + "a" * 20_000
    assert "so" in normalize_text(text)


def test_segment_hashtag_leaves_very_long_tags_whole() -> None:
    tag = "x" * 100
    assert segment_hashtag(tag) == tag


def test_common_words() -> None:
    assert is_common_word("friends")
    assert not is_common_word("frien")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("whew ... that extra <num> miles today to the grocery store # mymostepsup emoji_92", 5),
        ("the dog and the other dog met a cat", 3),
    ],
)
def test_content_keywords_count(raw: str, expected: int) -> None:
    assert len(content_keywords(raw)) == expected


def test_content_keywords_rank_by_frequency_then_order() -> None:
    assert content_keywords("the dog and the other dog met a cat") == ["dog", "met", "cat"]
    assert content_keywords("bike bike store store store car", k=2) == ["store", "bike"]


def test_content_keywords_drop_markers_emoji_and_handles() -> None:
    keywords = content_keywords("@JohnSmith <user> loved the concert 😂 emoji_3 https://t.co/x #GreatNight <num>")
    assert keywords == ["loved", "concert", "great", "night"]


def test_content_keywords_of_empty_or_stopword_text() -> None:
    assert content_keywords("") == []
    assert content_keywords("it is what it is") == []


def test_fast_segmenter_splits_exactly_as_wordsegment() -> None:
    from graph.normalize import _fast_segmenter, _segmenter

    rng = random.Random(5)
    texts = ["nashvillesnow", "mymostepsup", "noreligion", "throwbackthursday", "ofthe" * 12, "a" * 60, "x", ""]
    texts += ["itsmondayagainandiamsotiredofthisweather", "bestdayever2018", "3daysleft", "zzzqqqxyz"]
    texts.append("thecatsatonthemat" * 16)  # over 250 letters: segmented in chunks
    texts += [
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123 ") for _ in range(rng.randint(1, 40))) for _ in range(60)
    ]
    reference, fast = _segmenter(), _fast_segmenter()
    for text in texts:
        assert fast.segment(text) == reference.segment(text), text
