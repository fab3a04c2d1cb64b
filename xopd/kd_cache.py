"""Offline KD's fixed set of teacher answers: sampled once, kept on disk, read by every later run.

Sequence-level KD, the X-OPD paper's offline-KD baseline, fine-tunes the student on a *fixed* set of responses
the teacher generated beforehand (``loss.kd_samples_per_prompt`` per prompt, default ``rollout.n``, at the
rollout temperature / top_p / max_new_tokens). The set is generated the first time a teacher and decoding are
asked for and then reused as is: every seed, learning rate or schedule of a sweep trains on the same answers.

Layout: ``<root>/<key>/`` with ``root`` = ``loss.kd_cache_dir`` (default ``$XOPD_HOME/kd-cache``) and ``key``
the first 20 hex digits of the sha256 of :func:`key_doc`, i.e. of

* the teacher's *content*: the sha256 of every file of its checkpoint that can change an answer (config,
  generation config, tokenizer, chat template, weights; :func:`evalsuite.backends.fingerprint.dir_digest`),
  and its dtype -- a retrained checkpoint under the same name gets a new set, a copy elsewhere the same one;
* the decoding: samples per prompt, temperature, top_p, max_new_tokens, the shared vocabulary size, the banned
  ids (the student's audio placeholders) and the EOS ids that end a sample;
* the format version.

In the folder:

``meta.json``       the key's inputs, readable (written once, atomically; a folder whose meta.json says
                    otherwise is refused)
``samples.jsonl``   append-only, one record per prompt, each append flushed and fsynced:
                    ``{"prompt": <sha256 of the teacher's prompt token ids>, "id": <pair id>,
                    "completions": [[token ids, up to and including the EOS id] x n]}``
``.lock``           held by the run that reads and extends the file (a concurrent run waits, then reuses)

The prompts are the third part of the key, record by record: a record is found by the digest of the teacher's
prompt *token ids* (question, chat template and system prompt all in them), so a run on other data (another
seed's subset, a larger ``data.limit``) reuses the prompts already there and generates only its missing ones.

Resumable: a killed generation leaves whole records and at most one torn last line; the next run cuts the torn
line and generates the prompts still missing. Each prompt's answers are drawn from their own RNG, seeded by
the prompt's digest (the caller's RNG is left untouched), so a resumed generation writes the very records an
uninterrupted one would, and a run trains the same whether it found the cache cold or warm.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from evalsuite.backends.fingerprint import dir_digest
from xopd.distributed import Dist
from xopd.models import Prompt
from xopd.paths import atomic_write_text, file_lock, xopd_home
from xopd.rollout import RolloutEngine, Rollouts, SamplingParams

FORMAT = 1
KEY_CHARS = 20
SAMPLES = "samples.jsonl"
META = "meta.json"


class KDCacheError(RuntimeError):
    """The answer cache cannot be used as it is; the message names the file."""


def default_root() -> Path:
    return xopd_home() / "kd-cache"


def prompt_digest(prompt: Prompt) -> str:
    """sha256 of the teacher prompt's token ids: what a record is found by."""
    return hashlib.sha256(json.dumps([int(i) for i in prompt.ids]).encode()).hexdigest()


def answer_seed(digest: str) -> int:
    """The seed of one prompt's answers: from its digest only (not the run's seed, batch or process)."""
    return int(digest[:16], 16) & ((1 << 63) - 1)


def key_doc(
    teacher_dir: str | Path, teacher_dtype: str, params: SamplingParams, *, vocab_size: int,
    banned_ids: Sequence[int], eos_ids: Sequence[int],
) -> dict[str, Any]:
    """Everything an answer depends on: the teacher's file digests and dtype, the decoding, the format."""
    return {
        "format": FORMAT,
        "teacher": {"files": dir_digest(teacher_dir), "dtype": str(teacher_dtype)},
        "decoding": {
            "n": params.n,
            "temperature": float(params.temperature),
            "top_p": float(params.top_p),
            "max_new_tokens": params.max_new_tokens,
            "vocab_size": int(vocab_size),
            "banned_ids": sorted({int(i) for i in banned_ids}),
            "eos_ids": sorted({int(i) for i in eos_ids}),
        },
    }


def cache_key(doc: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:KEY_CHARS]


@dataclass
class TeacherAnswers:
    """One run's view of the fixed set: prompt digest -> its n answers (token ids)."""

    folder: Path
    n: int
    completions: dict[str, list[list[int]]]

    def rollouts(self, prompts: Sequence[Prompt]) -> Rollouts:
        """The cached answers of ``prompts`` as completion rows, prompt-major (prompt ``i``'s n answers, then
        ``i + 1``'s); no sampler log-probs (zeros: the student did not sample them)."""
        rows: list[list[int]] = []
        index: list[int] = []
        for i, p in enumerate(prompts):
            found = self.completions.get(prompt_digest(p))
            if found is None:
                raise KDCacheError(f"{self.folder / SAMPLES}: no answers for the prompt {p.text[:60]!r}")
            rows += found
            index += [i] * len(found)
        t = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (t - len(r)) for r in rows], dtype=torch.long)
        mask = torch.tensor([[True] * len(r) + [False] * (t - len(r)) for r in rows], dtype=torch.bool)
        return Rollouts(torch.tensor(index, dtype=torch.long), ids, mask, torch.zeros(ids.shape))


# ------------------------------------------------------------------------------------------------------------
# the file
# ------------------------------------------------------------------------------------------------------------


def read_samples(path: Path, n: int, *, repair: bool = False) -> dict[str, list[list[int]]]:
    """The records of ``samples.jsonl`` (digest -> answers; the first record of a digest wins). A torn last
    line (a write cut by a kill) is ignored, and with ``repair`` cut off the file so appends start clean."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    whole = data.rfind(b"\n") + 1  # bytes up to the end of the last complete line
    if whole < len(data) and repair:
        with open(path, "r+b") as fh:
            fh.truncate(whole)
            fh.flush()
            os.fsync(fh.fileno())
    out: dict[str, list[list[int]]] = {}
    for number, line in enumerate(data[:whole].splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            digest, answers = rec["prompt"], rec["completions"]
            ok = isinstance(digest, str) and isinstance(answers, list) and len(answers) == n
            ok = ok and all(isinstance(a, list) and a and all(isinstance(i, int) for i in a) for a in answers)
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise KDCacheError(
                f"{path}:{number}: not a record of {n} answers; the cache is damaged (delete the folder to "
                "generate it again)"
            )
        out.setdefault(digest, answers)
    return out


def append_samples(path: Path, records: Sequence[dict[str, Any]]) -> None:
    """Append whole records in one write, then flush and fsync: a kill leaves at most one torn line."""
    if not records:
        return
    blob = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    with open(path, "ab") as fh:
        fh.write(blob)
        fh.flush()
        os.fsync(fh.fileno())


def _check_meta(folder: Path, doc: dict[str, Any]) -> None:
    meta = folder / META
    if meta.is_file():
        try:
            found = json.loads(meta.read_text())
        except ValueError:
            found = None
        if found != doc:
            raise KDCacheError(
                f"{meta} describes another teacher or decoding than its key says; the folder is not this "
                "cache (delete it to generate the answers again)"
            )
        return
    atomic_write_text(meta, json.dumps(doc, indent=1, sort_keys=True) + "\n")


# ------------------------------------------------------------------------------------------------------------
# build or reuse
# ------------------------------------------------------------------------------------------------------------


def teacher_answers(
    items: Sequence[tuple[str, Prompt]],
    *,
    engine: RolloutEngine,
    params: SamplingParams,
    doc: dict[str, Any],
    root: str | Path | None = None,
    dist: Dist | None = None,
    say: Callable[[str], None] = print,
    prompts_per_round: int = 8,
    gathered: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
    progress: bool = False,
) -> TeacherAnswers:
    """The fixed answers to ``items`` (``(pair id, teacher prompt)``): read from the cache, the missing ones
    generated with ``engine`` (the teacher's) and appended first. ``doc``: :func:`key_doc` of the same
    ``params``. Under several processes each generates its share of every round and the main process writes
    (it alone holds the lock); ``gathered`` wraps the generation (FSDP: the teacher's layers whole)."""
    dist = dist or Dist()
    folder = Path(root).expanduser() if root is not None else default_root()
    folder = folder / cache_key(doc)
    path = folder / SAMPLES
    wanted: dict[str, tuple[str, Prompt]] = {}
    for pair_id, prompt in items:
        wanted.setdefault(prompt_digest(prompt), (pair_id, prompt))
    with file_lock(folder / ".lock") if dist.is_main else contextlib.nullcontext():
        if dist.is_main:
            _check_meta(folder, doc)
            read_samples(path, params.n, repair=True)  # cut a torn last line before anyone reads
        dist.barrier()
        have = read_samples(path, params.n)
        missing = [d for d in wanted if d not in have]
        if not missing:
            say(f"xopd-train: offline_kd: reusing the teacher's answers in {folder} ({len(wanted)} prompts x "
                f"{params.n})")  # fmt: skip
        else:
            done = len(wanted) - len(missing)
            say(f"xopd-train: offline_kd: generating the teacher's answers for {len(missing)} of "
                f"{len(wanted)} prompts x {params.n} into {folder}"
                + (f" (resuming: {done} already there)" if done else ""))  # fmt: skip
            _generate(
                missing, wanted, have, engine, params, path, dist, prompts_per_round, gathered, progress
            )
        dist.barrier()
    return TeacherAnswers(folder, params.n, {d: have[d] for d in wanted})


def _generate(
    missing: list[str], wanted: dict[str, tuple[str, Prompt]], have: dict[str, list[list[int]]],
    engine: RolloutEngine, params: SamplingParams, path: Path, dist: Dist, per_round: int,
    gathered: Callable[[], contextlib.AbstractContextManager[Any]], progress: bool,
) -> None:
    shown = progress and dist.is_main
    bar = tqdm(total=len(missing), desc="teacher answers", unit="prompt", disable=not shown, file=sys.stderr)
    step = max(1, per_round) * dist.world_size
    with gathered():
        for start in range(0, len(missing), step):
            mine = dist.shard(missing[start : start + step])  # every process runs every round (collectives)
            records = []
            if mine:
                prompts = [wanted[d][1] for d in mine]
                rolls = engine.generate(prompts, params, [answer_seed(d) for d in mine])
                index, lengths = rolls.prompt_index.tolist(), rolls.lengths.tolist()
                answers: list[list[list[int]]] = [[] for _ in mine]
                for r, i in enumerate(index):
                    answers[i].append([int(x) for x in rolls.ids[r, : lengths[r]].tolist()])
                records = [
                    {"prompt": d, "id": wanted[d][0], "completions": a}
                    for d, a in zip(mine, answers, strict=True)
                ]
            records = [r for part in dist.gather(records) for r in part]
            if dist.is_main:
                append_samples(path, records)
            for r in records:
                have.setdefault(r["prompt"], r["completions"])
            bar.update(len(records))
    bar.close()
