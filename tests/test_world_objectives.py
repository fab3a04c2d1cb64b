"""The alignment objectives: each target is a function of the spoken words only, and the draw is stateless."""

from __future__ import annotations

import collections

import pytest

from xopd.prompting import TRANSCRIBE_INSTRUCTION
from xopd.world.objectives import DEFAULT_OBJECTIVES, OBJECTIVES, objective_for, parse_objectives

SPOKEN = "I have two tomatoes and a pepper. How many vegetables do I have?"
OTHER = "What is six minus eight?"


@pytest.mark.parametrize(
    "name, instruction, target",
    [
        ("transcribe", TRANSCRIBE_INSTRUCTION, SPOKEN),
        ("you-said", 'Say back what you heard, starting with "You said:".', f"You said: {SPOKEN}"),
        ("last-word", "What was the last word you heard? Reply with that word only.", "have"),
        ("first-words", "Write the first four words you heard, nothing else.", "I have two tomatoes"),
        ("capitals", "Write what you heard in capital letters.",
         "I HAVE TWO TOMATOES AND A PEPPER. HOW MANY VEGETABLES DO I HAVE?"),
    ],
)
def test_targets_are_functions_of_the_spoken_words(name, instruction, target):
    assert OBJECTIVES[name].make(SPOKEN, OTHER, "k") == (instruction, target)


def test_heard_word_asks_about_a_spoken_or_a_distractor_word_and_answers_truly():
    seen = collections.Counter()
    spoken = {w.lower() for w in SPOKEN.replace(".", " ").replace("?", " ").split()}
    for k in range(200):
        instruction, target = OBJECTIVES["heard-word"].make(SPOKEN, OTHER, f"0:{k}:0")
        word = instruction.split('"')[1]
        assert len(word) > 3  # content words only
        assert target == ("yes" if word in spoken else "no")
        seen[target] += 1
    assert 60 < seen["yes"] < 140  # about half and half
    assert OBJECTIVES["heard-word"].make(SPOKEN, SPOKEN, "k")[1] == "yes"  # no distractor word: asks a real one


def test_objective_draw_is_a_pure_weighted_function_of_seed_step_slot():
    objs = parse_objectives(DEFAULT_OBJECTIVES)
    draws = [objective_for(objs, 0, step, slot).name for step in range(1, 200) for slot in range(8)]
    assert draws == [objective_for(objs, 0, step, slot).name for step in range(1, 200) for slot in range(8)]
    counts = collections.Counter(draws)
    assert set(counts) == set(OBJECTIVES)
    assert counts["transcribe"] > 1.5 * counts["capitals"]  # listed twice: drawn twice as often
    assert draws != [objective_for(objs, 1, step, slot).name for step in range(1, 200) for slot in range(8)]


def test_unknown_objective_is_named():
    with pytest.raises(SystemExit, match="answer"):
        parse_objectives("transcribe,answer")
