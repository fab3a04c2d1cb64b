"""The default task mix: offline, deduplicated, split by question text into train/validation/test, and spoken
as words that Whisper hears back; plus the spoken-form rules and the TTS voices it is spoken with."""

from __future__ import annotations

import re

import numpy as np
import pytest

from evalsuite.speech import parse_variants, render_array
from evalsuite.spoken_form import content_tokens, keeps_content, say
from evalsuite.tasks import DEFAULT_MIX, get_spec, load_task
from evalsuite.tasks.task import normalized_question
from evalsuite.tts import SAMPLE_RATE, TTSError, flite_synthesize, hibari_synthesize

SLOWEST = "hibari-slow,flite-slt-slow,slow"  # the slowest variant of each engine


@pytest.fixture(scope="module")
def splits():
    return {name: {s: load_task(name, split=s) for s in ("train", "validation", "test")} for name in DEFAULT_MIX}


def test_the_mix_has_four_answer_kinds_and_needs_no_download():
    kinds = {get_spec(n).answer_type for n in DEFAULT_MIX}
    assert kinds == {"number", "yesno", "choice"} and len(DEFAULT_MIX) == 4
    for name in DEFAULT_MIX:
        spec = get_spec(name)
        assert not spec.needs_hub and spec.source.key.startswith("reasoning_gym:"), name


def test_splits_are_large_disjoint_and_deduplicated(splits):
    for name, parts in splits.items():
        sizes = {s: len(t) for s, t in parts.items()}
        assert sizes["train"] >= 2000 and sizes["validation"] >= 200 and sizes["test"] >= 200, (name, sizes)
        seen: dict[str, str] = {}
        for split, task in parts.items():
            for item in task.items:
                key = normalized_question(item.question)
                assert key not in seen, f"{name}: {item.id} is in {split} and {seen.get(key)} (or twice)"
                seen[key] = split


def test_split_follows_the_question_text_not_the_row(splits):
    """The same question always lands in the same split, whatever its row index or the generator's size."""
    import dataclasses

    spec = get_spec("sums")
    bigger = dataclasses.replace(spec, source=dataclasses.replace(spec.source, size=spec.source.size + 500))
    from evalsuite.tasks import build_task

    grown = {normalized_question(i.question) for i in build_task(bigger, split="test").items}
    test = {normalized_question(i.question) for i in splits["sums"]["test"].items}
    assert test <= grown  # adding rows never moves an old question out of test


def test_spoken_prompts_are_words_and_ask_what_the_text_asks(splits):
    for name, parts in splits.items():
        task = parts["test"]
        for item in task.items:
            text, spoken = task.render_text(item), task.render_spoken(item)
            assert not re.search(r"[0-9+*/=]|\s-\s", spoken), (item.id, spoken)
            asked = re.sub(r"^\d+\. ", "", text.replace(task.instruction, ""), flags=re.M)  # "1." is said "First,"
            numbers = [t for t in content_tokens(asked) if t.isdigit()]
            assert [t for t in content_tokens(spoken) if t.isdigit()] == numbers, (item.id, text, spoken)


def test_longest_spoken_prompts_fit_whispers_window_at_the_slowest_voices(splits):
    """Whisper's window is 30 s and longer audio is cut silently: every prompt stays under 25 s. Duration grows
    with length, so the longest prompts of each task are the ones to check."""
    variants = parse_variants(SLOWEST)
    for name, parts in splits.items():
        task = parts["test"]
        longest = sorted(task.items, key=lambda i: len(task.render_spoken(i)), reverse=True)[:2]
        for item in longest:
            for v in variants:
                seconds = len(render_array(task.render_spoken(item), v)) / SAMPLE_RATE
                assert 0.5 < seconds <= 25.0, (item.id, v.name, seconds)


# --- the spoken form ---------------------------------------------------------------------------------------


def test_say_spells_numbers_and_symbols():
    assert say("What is 34 + 5 - 12?") == "What is thirty four plus five minus twelve?"
    assert say("What is 5 - 2 - 4 =") == "What is five minus two minus four equals"
    assert say("-7 * 3 = 21") == "minus seven times three equals twenty one"
    assert say("1,200 / 4") == "one thousand two hundred divided by four"
    assert say("Consider:\n1. All cats purr\n2. Tom is a cat") == "Consider:\nFirst, all cats purr\nSecond, tom is a cat"
    assert say("a well-known e-mail") == "a well-known e-mail"  # hyphens between words stay


def test_content_tokens_read_digits_and_words_alike():
    assert content_tokens("What is thirty-four plus 5 minus twelve?") == ["34", "plus", "5", "minus", "12"]
    assert content_tokens("one hundred twenty three, five two") == ["123", "5", "2"]
    assert keeps_content("What is thirty four plus five minus twelve?", "What is 34 plus 5 minus 12?")
    assert not keeps_content("What is thirty four plus five minus twelve?", "What is 34 + 5, 12?")
    assert not keeps_content("I have three pears", "I have free pears")  # espeak-ng's "three", as Whisper hears it


# --- the voices ---------------------------------------------------------------------------------------------


def test_hibari_and_flite_are_deterministic_16k_mono():
    for synth, kw in ((hibari_synthesize, {}), (flite_synthesize, {"voice": "kal"}), (flite_synthesize, {})):
        a = synth("What is thirty four plus five?", **kw)
        b = synth("What is thirty four plus five?", **kw)
        assert a.dtype == np.float32 and a.ndim == 1 and np.abs(a).max() <= 1.0
        assert 1.0 < len(a) / SAMPLE_RATE < 6.0 and np.array_equal(a, b)
    slow = hibari_synthesize("What is thirty four plus five?", length_scale=1.25)
    assert len(slow) > 1.15 * len(hibari_synthesize("What is thirty four plus five?"))
    with pytest.raises(TTSError, match="downloaded at run time"):
        hibari_synthesize("hello", voice="emma")  # hibari's other voices download: refused
    with pytest.raises(TTSError, match="unknown flite voice"):
        flite_synthesize("hello", voice="nosuch")


@pytest.mark.slow
def test_whisper_hears_the_numbers_of_the_default_voice(splits, zoo_whisper):
    """The round trip on a sample (the full-split figures are in reports/speech_check.md)."""
    from evalsuite.speech_check import check_task

    transcribe = __import__("evalsuite.speech_check", fromlist=["load_transcriber"]).load_transcriber()
    for name in ("sums", "counting"):
        task = load_task(name, split="test", limit=10)
        result = check_task(task, parse_variants("hibari"), transcribe)["hibari"]
        assert result["keep_rate"] >= 0.9 and not result["over_limit"], (name, result["lost"])
