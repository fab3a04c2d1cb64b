"""reasoning-gym generators as a task source: seeded, offline, scored by the dataset's own ``score_answer``.

An entry is regenerated from (dataset, config, seed, index) whenever it is scored, so ``Item.meta`` only
needs ``{"reasoning_gym": {"index": i}}`` and stays JSON-serialisable (some entries hold tuples and numpy
strings).
"""

from __future__ import annotations

import difflib
import functools
from typing import Any

from evalsuite.tasks.source import Row, SourceData
from evalsuite.tasks.spec import ReasoningGymSource


@functools.lru_cache(maxsize=32)
def _dataset(src: ReasoningGymSource) -> Any:
    # late: reasoning_gym takes seconds to import; only the tasks built on it pay (evalsuite.tasks.counting
    # registers its generator with reasoning_gym, so it is imported here too)
    import reasoning_gym
    from reasoning_gym.factory import DATASETS

    import evalsuite.tasks.counting  # noqa: F401  (registers xopd_object_counting)

    if src.dataset not in DATASETS:
        close = difflib.get_close_matches(src.dataset, list(DATASETS), n=5)
        raise ValueError(f"reasoning-gym has no dataset {src.dataset!r}; close names: {close}")
    try:
        return reasoning_gym.create_dataset(src.dataset, size=src.size, seed=src.seed, **src.config_dict)
    except (TypeError, ValueError, AssertionError) as e:
        raise ValueError(f"reasoning-gym rejected the config of {src.dataset!r}: {e}") from e


def load_rows(src: ReasoningGymSource) -> SourceData:
    ds = _dataset(src)
    rows = []
    for i in range(src.size):
        entry = ds[i]
        answer = entry.get("answer")
        if answer is None:  # open-ended generators (propositional_logic) have no single gold answer
            raise ValueError(
                f"reasoning-gym dataset {src.dataset!r} item {i} has no gold answer; "
                "choose a generator with one (gsm_symbolic, basic_arithmetic, syllogism, ...)"
            )
        meta = {"source": f"reasoning_gym:{src.dataset}", "reasoning_gym": {"index": i}}
        rows.append(
            Row(local_id=f"{i:05d}", question=str(entry["question"]), answers=(str(answer),), meta=meta)
        )

    def scorer(meta: dict[str, Any], answer: str) -> float:
        return float(ds.score_answer(answer, ds[meta["reasoning_gym"]["index"]]))

    return SourceData(rows, scorer=scorer)
