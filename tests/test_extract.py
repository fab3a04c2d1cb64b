"""Answer extraction on tidy and messy chat-model outputs, and on real SmolLM2 generations.

Every case states what a careful reader would take as the answer, or None where a reader could only guess.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from evalsuite.extract import Extraction, extract_answer, is_correct, parse_number

# --- numbers ------------------------------------------------------------------------------------------------

NUMBER_CASES = [
    # (response, value, method)
    ("The answer is 12 apples.", "12", "answer-phrase"),
    ("12", "12", "last-number"),
    ("There are twelve apples in the basket.", "12", "last-number-word"),
    ("twenty-one", "21", "last-number-word"),
    ("She has a hundred marbles.", "100", "last-number-word"),
    ("one hundred and five", "105", "last-number-word"),
    ("two thousand three hundred forty-five people came", "2345", "last-number-word"),
    ("The answer is twelve.", "12", "answer-phrase"),
    ("The answer is: **twelve**", "12", "answer-phrase"),
    ("negative three", "-3", "last-number-word"),
    ("So there are 1,250 people in total.", "1250", "last-number"),
    ("The total cost is $1,234.50", "1234.5", "last-number"),
    ("The temperature dropped to -12.5 degrees.", "-12.5", "last-number"),
    ("x = −4", "-4", "last-number"),  # unicode minus
    ("It rose by 50%.", "50", "last-number"),
    ("3/4 of the cake is left", "0.75", "last-number"),
    ("$\\boxed{\\frac{1}{2}}$", "0.5", "boxed"),
    ("so $x = \\boxed{42}$ and we check 42 - 2 = 40", "42", "boxed"),
    ("#### 72", "72", "answer-phrase"),
    ("Answer: 7", "7", "answer-phrase"),
    ("So the result is **12**.", "12", "bold"),
    ("The answer is 3 + 4 = 7.", "7", "answer-phrase"),
    ("The 2nd step gives 5", "5", "last-number"),  # an ordinal is not an answer
    (
        "Let's think step by step. First, 15 - 7 = 8. Then 8 * 2 = 16. So, the final answer is 16.",
        "16",
        "answer-phrase",
    ),
    (
        "Sure! Here's the solution:\n\n1. Start with 5 apples.\n2. Eat 2 apples.\n\n**Final Answer: 3**",
        "3",
        "answer-phrase",
    ),
    # A heading in bold is not an answer; the last number is.
    ("**Step 1:** add 3 and 4.\n**Step 2:** that gives 7", "7", "last-number"),
    # Models restate: the last "the answer is" wins.
    ("I first thought the answer is 5. Wait, 2 + 4 = 6, so the answer is 6.", "6", "answer-phrase"),
    # Pronoun "one" in prose must not beat the digits.
    ("Each one has 3 pens, so 4 x 3 = 12. Each one is blue.", "12", "last-number"),
    ("Tom has 3 apples and 4 more apples, so he has 3 + 4 = 7 apples.\nTom has 3 + 4 = 7 apples now.", "7",
     "last-number"),
    ("The result is 1,000,000.", "1000000", "last-number"),
    ("I'd say the answer is about 1.5 million.", "1500000", "answer-phrase"),
    ("The answer is not 5, it is 6.", "6", "last-number"),  # a denial states no answer
    ("The answer to 7 + 5 is 12.", "12", "answer-phrase"),
    ("The final answer is $\\$18$.", "18", "answer-phrase"),
    ("She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer's market.\n#### 18", "18", "answer-phrase"),
    ("Between 1,2,3 the largest is 3", "3", "last-number"),
]


@pytest.mark.parametrize(("response", "value", "method"), NUMBER_CASES)
def test_number_extraction(response: str, value: str, method: str) -> None:
    assert extract_answer(response, "number") == Extraction(value, method)


@pytest.mark.parametrize(
    ("response", "method"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        ("I don't know.", "no-number"),
        ("I cannot determine that from the information given.", "no-number"),
        ("No one knows. Answer: none", "no-number"),  # "no one" is a pronoun, not 1
    ],
)
def test_number_extraction_fails_with_a_reason(response: str, method: str) -> None:
    assert extract_answer(response, "number") == Extraction(None, method)


# --- multiple choice ----------------------------------------------------------------------------------------

COLORS = ("red", "green", "blue")
ANIMALS = ("dog", "eagle", "fish")

CHOICE_CASES = [
    ("I think it's (C) because the others are wrong.", COLORS, "blue", "letter"),
    ("B)", COLORS, "green", "letter"),
    ("B. green", COLORS, "green", "letter"),
    ("B", COLORS, "green", "letter"),
    ("Option B is correct.", COLORS, "green", "letter"),
    ("Answer: B", COLORS, "green", "answer-phrase:letter"),
    ("The answer is (B) eagle.", ANIMALS, "eagle", "answer-phrase:letter"),
    ("The answer is A because dogs bark.", ANIMALS, "dog", "answer-phrase:letter"),
    ("(A) dog\n(B) eagle\n(C) fish\nThe answer is (B).", ANIMALS, "eagle", "answer-phrase:letter"),
    ("The answer is B) eagle because eagles have wings.", ANIMALS, "eagle", "answer-phrase:letter"),
    ("The answer is blue.", COLORS, "blue", "answer-phrase:option-text"),
    ("The answer is 21 because 21 > 12.", ("12", "21"), "21", "answer-phrase:option-text"),
    ("The answer is 123, not 12.", ("12", "123"), "123", "answer-phrase:option-text"),
    ("**Blue**", COLORS, "blue", "bold:option-text"),
    ("$\\boxed{C}$", COLORS, "blue", "boxed:letter"),
    ("It is Paris, not London.", ("London", "Paris"), "Paris", "option-text"),
    ("Eagles can fly: the eagle.", ANIMALS, "eagle", "option-text"),
    # "A" as an article is not option A; the option text decides.
    ("A dog is the answer.", ("A dog", "A cat"), "A dog", "option-text"),
    # An option contained in another's match does not count twice.
    ("The sentence is not plausible at all", ("plausible", "not plausible"), "not plausible", "option-text"),
]


@pytest.mark.parametrize(("response", "choices", "value", "method"), CHOICE_CASES)
def test_choice_extraction(response: str, choices: tuple[str, ...], value: str, method: str) -> None:
    assert extract_answer(response, "choice", choices) == Extraction(value, method)


@pytest.mark.parametrize(
    ("response", "choices", "method"),
    [
        ("(A) or (B), hard to say.", COLORS, "ambiguous-choice"),
        ("Both (A) and (C) could work.", COLORS, "ambiguous-choice"),
        ("The answer is red or blue.", COLORS, "ambiguous-choice"),
        ("The answer is (B) or (C).", COLORS, "ambiguous-choice"),
        ("A: 12\nB: 21", ("12", "21"), "ambiguous-choice"),  # it listed the options back
        # Conservative by design: "fish" is named too, so this is not read as "eagle".
        ("The correct option is eagle, since dogs and fish can't fly.", ANIMALS, "ambiguous-choice"),
        ("I'm not sure.", COLORS, "no-choice"),
        ("Let me think about this question carefully.", COLORS, "no-choice"),
        ("(E)", COLORS, "no-choice"),  # a letter beyond the options is no answer
        ("", COLORS, "empty"),
    ],
)
def test_choice_extraction_never_guesses(response: str, choices: tuple[str, ...], method: str) -> None:
    assert extract_answer(response, "choice", choices) == Extraction(None, method)


# --- yes/no-type --------------------------------------------------------------------------------------------

YN, VALID, TF, PLAUS = ("Yes", "No"), ("valid", "invalid"), ("True", "False"), ("plausible", "implausible")

YESNO_CASES = [
    ("Yes, because there is no other way to get there.", YN, "Yes", "leading-word"),
    ("No.", YN, "No", "leading-word"),
    ("no", YN, "No", "leading-word"),
    ("Answer: No", YN, "No", "answer-phrase"),
    ("The answer is yes.", VALID, "valid", "answer-phrase"),  # mapped onto the task's own words
    ("Yes", TF, "True", "leading-word"),
    ("**Answer:** False", TF, "False", "answer-phrase"),
    ("Valid. The conclusion follows from the premises.", VALID, "valid", "leading-word"),
    ("The argument is deductively invalid, the premises do not imply it.", VALID, "invalid", "answer-word"),
    ("The argument is not valid.", VALID, "invalid", "answer-word"),
    ("No one would doubt it; the argument is valid.", VALID, "valid", "answer-word"),
    ("The statement is true.", TF, "True", "answer-word"),
    ("That sentence is implausible.", PLAUS, "implausible", "answer-word"),
    ("That sounds plausible.", YN, "Yes", "mapped-word"),
    ("**Yes**, the man would be blamed.", YN, "Yes", "bold"),
]


@pytest.mark.parametrize(("response", "choices", "value", "method"), YESNO_CASES)
def test_yesno_extraction(response: str, choices: tuple[str, ...], value: str, method: str) -> None:
    assert extract_answer(response, "yesno", choices) == Extraction(value, method)


@pytest.mark.parametrize(
    ("response", "choices", "method"),
    [
        ("Yes and no.", YN, "ambiguous-yesno"),
        ("The sentence is plausible, but it's not entirely plausible.", PLAUS, "ambiguous-yesno"),
        ("I'm not sure whether it is true or false.", TF, "ambiguous-yesno"),
        ("There is no reason to doubt it.", YN, "no-yesno"),  # "no" as a determiner is no answer
        ("Let me think.", VALID, "no-yesno"),
        ("", YN, "empty"),
    ],
)
def test_yesno_extraction_never_guesses(response: str, choices: tuple[str, ...], method: str) -> None:
    assert extract_answer(response, "yesno", choices) == Extraction(None, method)


def test_text_extraction() -> None:
    assert extract_answer("The answer is Paris.", "text") == Extraction("Paris", "answer-phrase")
    assert extract_answer("  Paris  ", "text") == Extraction("Paris", "whole-response")
    assert extract_answer("", "text") == Extraction(None, "empty")


# --- scoring and helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "gold", "answer_type", "correct"),
    [
        ("12", "12", "number", True),
        ("12.0", "12", "number", True),
        ("1200", "1,200", "number", True),
        ("0.5", "1/2", "number", True),
        ("0.333333333333333", "1/3", "number", True),
        ("0.33", "1/3", "number", False),
        ("-3", "3", "number", False),
        ("Yes", "yes", "yesno", True),
        ("valid", "Yes", "yesno", True),
        ("False", "True", "yesno", False),
        ("Eagle", "eagle", "choice", True),
        ("dog", "eagle", "choice", False),
        ("Paris.", "paris", "text", True),
    ],
)
def test_is_correct(value: str, gold: str, answer_type: str, correct: bool) -> None:
    assert is_correct(Extraction(value, "test"), gold, answer_type) is correct


def test_failed_extraction_is_wrong_and_never_filled() -> None:
    failed = extract_answer("(A) or (C)", "choice", COLORS)
    assert failed.value is None and not failed.ok
    assert not any(is_correct(failed, gold, "choice") for gold in COLORS)


def test_random_text_never_raises_and_values_are_canonical() -> None:
    """Whatever the output, extraction returns a value or a reason, and a choice-type value is a choice."""
    import random
    import string

    rng = random.Random(0)
    vocab = "the answer is yes no one hundred a (A) (B) B) 12 -4 1,234 / = ** \\boxed{ } not valid".split()
    for i in range(400):
        if i % 2:
            text = "".join(rng.choice(string.printable) for _ in range(rng.randint(0, 60)))
        else:
            text = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 25)))
        for answer_type, choices in (("number", ()), ("choice", COLORS), ("yesno", YN), ("text", ())):
            got = extract_answer(text, answer_type, choices)
            assert got.value is not None or got.method
            if choices and got.value is not None:
                assert got.value in choices, (text, got)
            if answer_type == "number" and got.value is not None:
                assert parse_number(got.value) is not None, (text, got)


def test_parse_number() -> None:
    assert parse_number("$1,234") == 1234
    assert parse_number("twenty-one") == 21
    assert parse_number("3/4") == Fraction(3, 4)
    assert parse_number("50%") == 50
    assert parse_number("12 apples") is None and parse_number("1 2") is None and parse_number("") is None


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown answer_type 'mcq'"):
        extract_answer("B", "mcq")
    with pytest.raises(ValueError, match="needs the option texts"):
        extract_answer("B", "choice")
    with pytest.raises(ValueError, match=r"one positive and one negative.*\['maybe', 'no'\]"):
        extract_answer("no", "yesno", ("maybe", "no"))
    with pytest.raises(ValueError, match="gold answer 'twelve-ish' is not a number"):
        is_correct(Extraction("12", "x"), "twelve-ish", "number")
    with pytest.raises(ValueError, match="gold answer 'maybe' is not a yes/no-type word"):
        is_correct(Extraction("Yes", "x"), "maybe", "yesno")


# --- real SmolLM2-135M-Instruct outputs ---------------------------------------------------------------------

# Greedy, float32 on CPU, one left-padded batch of these 12 chat prompts, max_new_tokens=40. The expected
# extractions were checked by eye against each response; the model is often wrong (100 − 37 "is 21"), but
# extraction is about what it said, not whether it was right.
SMOLLM2 = [
    ("What is 7 + 5?", "number", (),
     "To add 7 and 5, you simply add them together: 7 + 5 = 12.", Extraction("12", "last-number")),
    ("What is 12 times 3? Answer with a number.", "number", (),
     "12 times 3 is 36.", Extraction("36", "last-number")),
    ("Tom has 3 apples and buys 4 more. How many apples does he have now?", "number", (),
     "Tom has 3 apples and 4 more apples, so he has 3 + 4 = 7 apples.\nTom has 3 + 4 = 7 apples now.",
     Extraction("7", "last-number")),
    ("What is 100 minus 37?", "number", (),
     "100 minus 37 is 21.", Extraction("21", "last-number")),
    ("A box holds 6 eggs. How many eggs are in 5 boxes? Give the final answer as 'The answer is N'.",
     "number", (),
     "The answer is 5.\n\nThis is a classic example of a mathematical puzzle that requires careful "
     "interpretation of the given information. The puzzle asks for the number of boxes that contain 6 eggs,",
     Extraction("5", "answer-phrase")),
    ("How many legs does a spider have? Write the number as a word.", "number", (),
     'The answer is "A spider has 8 legs."', Extraction("8", "answer-phrase")),
    ("Is Paris the capital of France? Answer yes or no.", "yesno", YN,
     "No, Paris is not the capital of France. Paris is a city located in the northern part of France, known "
     "for its iconic landmarks like the Eiffel Tower and Louvre Museum.", Extraction("No", "leading-word")),
    ("Is 17 a prime number? Answer yes or no.", "yesno", YN,
     "No, 17 is not a prime number. A prime number is a positive integer greater than 2 that cannot be "
     "divided evenly by any positive integer other than 1 and itself.", Extraction("No", "leading-word")),
    ('Is the following sentence plausible? "Lionel Messi scored a touchdown." '
     "Answer plausible or implausible.", "yesno", PLAUS,
     "The sentence is plausible, but it's not entirely plausible. The sentence is based on a common myth "
     "about Lionel Messi, which is that he scored a touchdown. However, the actual score",
     Extraction(None, "ambiguous-yesno")),
    ("True or false: water boils at 100 degrees Celsius at sea level.", "yesno", TF,
     "False. Water does not boil at sea level. The boiling point of water is a measure of its ability to "
     "expand when heated, but it does not directly boil at sea level due to the pressure at",
     Extraction("False", "leading-word")),
    ("Which is larger? (A) 12 (B) 21. Answer with the letter.", "choice", ("12", "21"),
     "A: 12\nB: 21", Extraction(None, "ambiguous-choice")),
    ("Which animal can fly? (A) dog (B) eagle (C) fish", "choice", ANIMALS,
     "The answer is (B) eagle.", Extraction("eagle", "answer-phrase:letter")),
]  # fmt: skip


@pytest.mark.parametrize(("prompt", "answer_type", "choices", "response", "expected"), SMOLLM2)
def test_recorded_smollm2_outputs(prompt, answer_type, choices, response, expected: Extraction) -> None:
    assert extract_answer(response, answer_type, choices) == expected


@pytest.mark.slow
def test_live_smollm2_outputs_extract_as_recorded(zoo_smollm2: Path) -> None:
    """Regenerate the recorded responses with the real model and extract from what it says now."""
    import torch

    from xopd.loading import load_text_lm

    model, tok = load_text_lm(str(zoo_smollm2))
    tok.padding_side = "left"
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        for p, *_ in SMOLLM2
    ]
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=40, do_sample=False, pad_token_id=tok.pad_token_id)
    responses = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    for (prompt, answer_type, choices, recorded, expected), response in zip(SMOLLM2, responses):
        got = extract_answer(response, answer_type, choices)
        assert got.value is not None or got.method, prompt  # a value, or a reason
        assert response == recorded, f"{prompt!r}: greedy output changed: {response!r}"
        assert got == expected, f"{prompt!r} -> {response!r}"


SPOKEN = "I have two tomatoes and a pepper. How many vegetables do I have?"
TYPED = SPOKEN + "\nAnswer with the number only."


@pytest.mark.parametrize(
    "response, restated",
    [
        ("I have two tomatoes and a pepper. How many vegetables do I have?", True),  # said back
        ("i have two tomatoes and a pepper how many vegetables", True),  # cut short, no punctuation
        ("How many vegetables do I have?", True),
        ("3", False),
        ("I have 3 vegetables.", False),
        ("I have two tomatoes and a pepper, so I have 3 vegetables.", False),  # restates, then answers
        ("You have two tomatoes plus one pepper: three vegetables.", False),
        ("", False),
    ],
)
def test_restated_question_is_recognised(response: str, restated: bool) -> None:
    from evalsuite.extract import restates_question

    assert restates_question(response, (TYPED, SPOKEN)) is restated


def test_a_restated_question_scores_as_an_extraction_failure_not_its_last_number() -> None:
    from evalsuite.run import judge
    from evalsuite.tasks import load_task

    task = load_task("sums", split="test", limit=40)
    item = task.items[0]
    parrot = task.render_spoken(item)  # "What is six minus eight?"
    assert extract_answer(parrot, "number").method == "last-number-word"  # what scoring took before
    ext, correct = judge(task, item, parrot)
    assert (ext.value, ext.method, correct) == (None, "restates-question", False)
    ext, correct = judge(task, item, f"The answer is {item.answer}.")
    assert correct and ext.value is not None


def test_quoting_the_chosen_option_is_an_answer_not_a_restatement(tmp_path) -> None:
    import json

    from evalsuite.run import judge
    from evalsuite.tasks import build_task, load_spec

    (tmp_path / "q.jsonl").write_text(json.dumps({
        "id": "x1", "question": "Why does the sea get warm in summer?",
        "choices": ["the moon pulls the water", "the sun heats the ocean water"],
        "answer": "the sun heats the ocean water"}) + "\n")
    (tmp_path / "q.yaml").write_text('source: {jsonl: q.jsonl}\nanswer_type: choice\n'
                                     'prompt: "{question}\\n{choices}"\n')
    task = build_task(load_spec(tmp_path / "q.yaml"))
    item = task.items[0]
    ext, correct = judge(task, item, "B) the sun heats the ocean water")
    assert correct and ext.method != "restates-question"
    ext, correct = judge(task, item, "Why does the sea get warm in summer?")
    assert (ext.method, correct) == ("restates-question", False)
