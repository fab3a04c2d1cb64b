"""``xopd_object_counting``: BIG-bench-style object counting as a reasoning-gym generator (offline, seeded).

"I have a peach, two carrots, a banana and three apples. How many fruits do I have?" -> 6. The answer is a
count of objects *named in the question*: a listener hears every noun and every count (counts are words,
never digits or letters), and nothing needs world knowledge beyond which category a common noun is in.
Items of other categories are distractors. Registered into reasoning-gym's factory on import, so a task file
names it like any other generator (``reasoning_gym: {dataset: xopd_object_counting, ...}``) and it is scored
by its own ``score_answer``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from reasoning_gym.dataset import ProceduralDataset
from reasoning_gym.factory import DATASETS, register_dataset

NAME = "xopd_object_counting"

# category (as asked, plural) -> nouns (singular, plural); everyday words a small model and a listener know
CATEGORIES: dict[str, tuple[tuple[str, str], ...]] = {
    "fruits": (("apple", "apples"), ("banana", "bananas"), ("orange", "oranges"), ("peach", "peaches"),
               ("plum", "plums"), ("pear", "pears"), ("strawberry", "strawberries"), ("lemon", "lemons"),
               ("grape", "grapes"), ("mango", "mangoes")),
    "vegetables": (("carrot", "carrots"), ("onion", "onions"), ("potato", "potatoes"), ("cabbage", "cabbages"),
                   ("cucumber", "cucumbers"), ("tomato", "tomatoes"), ("pepper", "peppers"),
                   ("garlic bulb", "garlic bulbs"), ("lettuce", "lettuces"), ("pumpkin", "pumpkins")),
    "animals": (("cat", "cats"), ("dog", "dogs"), ("cow", "cows"), ("pig", "pigs"), ("goat", "goats"),
                ("rabbit", "rabbits"), ("duck", "ducks"), ("chicken", "chickens"), ("frog", "frogs"),
                ("horse", "horses")),
    "musical instruments": (("piano", "pianos"), ("flute", "flutes"), ("trumpet", "trumpets"),
                            ("violin", "violins"), ("drum", "drums"), ("guitar", "guitars"),
                            ("clarinet", "clarinets"), ("trombone", "trombones"), ("harp", "harps"),
                            ("accordion", "accordions")),
}  # fmt: skip
_COUNT_WORDS = ("", "one", "two", "three", "four", "five")


@dataclass
class ObjectCountingConfig:
    min_items: int = 2  # kinds of object named in the question (targets + distractors)
    max_items: int = 5
    max_count: int = 3  # each named kind comes 1..max_count times
    min_targets: int = 1  # kinds of the asked category among them
    seed: int | None = None
    size: int = 500

    def validate(self) -> None:
        assert 1 <= self.min_targets <= self.min_items <= self.max_items <= 8, "need 1 <= min_targets <= min_items <= max_items <= 8"
        assert 1 <= self.max_count < len(_COUNT_WORDS), f"max_count must be 1..{len(_COUNT_WORDS) - 1}"


def _phrase(count: int, singular: str, plural: str) -> str:
    if count == 1:
        return ("an " if singular[0] in "aeiou" else "a ") + singular
    return f"{_COUNT_WORDS[count]} {plural}"


class ObjectCountingDataset(ProceduralDataset):
    def __init__(self, config: ObjectCountingConfig):
        super().__init__(config=config, seed=config.seed, size=config.size)

    def __getitem__(self, idx: int) -> dict[str, Any]:
        cfg = self.config
        rng = random.Random(self.seed + idx)
        category = rng.choice(sorted(CATEGORIES))
        n_items = rng.randint(cfg.min_items, cfg.max_items)
        n_targets = rng.randint(cfg.min_targets, n_items)
        targets = rng.sample(CATEGORIES[category], n_targets)
        others = [noun for c in sorted(CATEGORIES) if c != category for noun in CATEGORIES[c]]
        named = [(noun, True) for noun in targets] + [(noun, False) for noun in rng.sample(others, n_items - n_targets)]
        rng.shuffle(named)
        counts = [rng.randint(1, cfg.max_count) for _ in named]
        phrases = [_phrase(k, *noun) for k, (noun, _) in zip(counts, named)]
        listed = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
        answer = sum(k for k, (_, is_target) in zip(counts, named) if is_target)
        return {
            "question": f"I have {listed}. How many {category} do I have?",
            "answer": str(answer),
            "metadata": {"category": category, "items": [[n[0], k, t] for k, (n, t) in zip(counts, named)]},
        }

    def score_answer(self, answer: str | None, entry: dict[str, Any]) -> float:
        try:
            return float(int(str(answer).strip()) == int(entry["answer"]))
        except (TypeError, ValueError):
            return 0.0


if NAME not in DATASETS:
    register_dataset(NAME, ObjectCountingDataset, ObjectCountingConfig)
