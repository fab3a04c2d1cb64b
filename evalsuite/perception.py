"""``xopd-eval perception``: is a speech LLM's modality gap mishearing, or reasoning over speech?

Each item is asked four ways, all to the same model with the same answer-format instruction:

- ``written``: the typed prompt (``gap``'s text mode), e.g. "What is 34 + 5 - 12?";
- ``words``: the words that were spoken, typed (what a perfect listener hears): "What is thirty four plus five
  minus twelve?";
- ``heard``: the model's *own* transcript of the audio, typed: it is asked to transcribe the clip
  (:data:`xopd.prompting.TRANSCRIBE_INSTRUCTION`), then its transcript is its text prompt;
- ``speech``: the audio itself (``gap``'s speech mode).

The gap telescopes: ``written − speech = (written − words) + (words − heard) + (heard − speech)``, i.e. the
cost of number words over digits (*form*), of what the model mishears (*hearing*), and of answering from the
audio rather than from the very words it heard (*reasoning over speech*). Only the last is what X-OPD trains with
the audio path frozen; a gap that is all hearing needs a better ear instead. Beside it, the model's
transcription WER and an ASR model's (default Whisper tiny.en) WER on the same clips, with a paired CI of their
difference. Items that errored in any of the four ways are left out of every number (and counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from evalsuite.cache import generate_cached
from evalsuite.run import SPEECH, TEXT, PreparedRequest, Sample, chance_level, evaluate, score
from evalsuite.speech import render_array
from evalsuite.types import GenParams, Request
from xopd.prompting import TRANSCRIBE_INSTRUCTION, messages_for

WAYS = ("written", "words", "heard", "speech")
TERMS = (("form", "written", "words"), ("hearing", "words", "heard"), ("reasoning", "heard", "speech"))
TRANSCRIPT = "transcript"  # the Sample.mode of the model's transcription requests


def typed_request(task: Any, item: Any, text: str, way: str, system_prompt: str | None) -> PreparedRequest:
    """``text`` typed as the user message, with the task's instruction after it as ``Task.render_text`` does."""
    instruction = task.spec.instruction or ""
    shown = f"{text.strip()}\n{instruction}" if instruction else text.strip()
    chance = chance_level(task.spec.answer_type, item.choices or tuple(task.spec.choices or ()))
    s = Sample(item.id, task.name, TEXT, way, shown, item.answer, chance=chance,
               benchmark=getattr(task.spec, "benchmark", None))
    if not text.strip():
        s.error = "empty transcript"
        return PreparedRequest(s, None, item)
    msgs = messages_for(shown, modality=TEXT, system_prompt=system_prompt)
    return PreparedRequest(s, Request(f"{item.id}|text|{way}", msgs), item)


def ask_typed(backend: Any, prepared: list[tuple[Any, PreparedRequest]], params: GenParams, cache: Any,
              chunk_size: int, progress: Callable[[int], None] | None) -> list[Sample]:

    live = [i for i, (_, p) in enumerate(prepared) if p.request is not None]
    outs = generate_cached(backend, [prepared[i][1].request for i in live], params, cache, chunk_size=chunk_size,
                           progress=progress)
    got = {i: (r.text, r.error) for i, r in zip(live, outs, strict=True)}
    return [score(t, p, *got.get(i, (None, None))) for i, (t, p) in enumerate(prepared)]


def run_perception(backend: Any, tasks: Sequence[Any], variant: Any, *, params: GenParams,
                   transcribe: Callable[[list], list[str]] | None = None, cache: Any = None, chunk_size: int = 32,
                   system_prompt: str | None = None, progress: Callable[[int], None] | None = None,
                   transcript_tokens: int = 128) -> dict[str, Any]:
    """The samples of the four ways, the model's transcripts and (with ``transcribe``) the ASR model's:
    ``{"samples": {way: [Sample]}, "transcripts": [Sample], "asr": {(task, id): text}}``."""

    asked = evaluate(backend, tasks, modes=(TEXT, SPEECH), variants=[variant], params=params, cache=cache,
                     progress=progress, chunk_size=chunk_size, system_prompt=system_prompt)
    # Transcription: the task's answer instruction replaced by the transcription one; no answer is scored.
    said = [replace(t, spec=replace(t.spec, instruction=TRANSCRIBE_INSTRUCTION)) for t in tasks]
    heard = evaluate(backend, said, modes=(SPEECH,), variants=[variant],
                     params=replace(params, max_new_tokens=transcript_tokens), cache=cache, progress=progress,
                     chunk_size=chunk_size, system_prompt=system_prompt)
    transcripts = [replace(s, mode=TRANSCRIPT, correct=False, extracted=None, method=None) for s in heard]
    by_key = {(s.task, s.id): s for s in transcripts}
    typed: list[tuple[Any, PreparedRequest]] = []
    for task in tasks:
        for item in task.items:
            typed.append((task, typed_request(task, item, task.render_spoken(item), "words", system_prompt)))
            t = by_key.get((task.name, item.id))
            if t is None or t.error or t.response is None:
                p = typed_request(task, item, "", "heard", system_prompt)
                p.sample.error = f"no transcript: {t.error if t else 'not asked'}"
            else:
                p = typed_request(task, item, t.response, "heard", system_prompt)
            typed.append((task, p))
    answered = ask_typed(backend, typed, params, cache, chunk_size, progress)
    samples = {
        "written": [s for s in asked if s.mode == TEXT],
        "speech": [s for s in asked if s.mode == SPEECH],
        "words": [s for s in answered if s.variant == "words"],
        "heard": [s for s in answered if s.variant == "heard"],
    }
    asr: dict[tuple[str, str], str] = {}
    if transcribe is not None:
        keys = [(t.name, item.id) for t in tasks for item in t.items]
        audios = [render_array(t.render_spoken(item), variant) for t in tasks for item in t.items]
        asr = dict(zip(keys, transcribe(audios), strict=True))
    return {"samples": samples, "transcripts": transcripts, "asr": asr}


def _correct(rows: dict[str, Sample], ids: list[str]) -> np.ndarray:
    return np.array([int(rows[i].correct) for i in ids])


def perception_report(result: dict[str, Any], *, confidence: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0) -> dict[str, Any]:
    """Per task and overall (macro over tasks): accuracy of each way, the three terms of the gap with paired
    bootstrap CIs, and the model's and the ASR model's transcription WER (corpus WER, paired CI)."""
    from evalsuite.reports.forgetting import paired_wer_delta, word_errors
    from evalsuite.stats import paired_bootstrap_ci, stratified_macro_bootstrap_ci

    by_way = {w: {} for w in WAYS}
    for way, rows in result["samples"].items():
        for s in rows:
            by_way[way].setdefault(s.task, {})[s.id] = s
    trans = {(s.task, s.id): s for s in result["transcripts"]}
    tasks: dict[str, Any] = {}
    strata: dict[str, list] = {name: [] for name, _, _ in TERMS} | {"gap": []}
    all_refs, all_mine, all_asr = [], [], []
    for task in by_way["written"]:
        ways = {w: by_way[w].get(task, {}) for w in WAYS}
        ids = sorted(i for i in ways["written"] if all(i in ways[w] and not ways[w][i].error for w in WAYS))
        entry: dict[str, Any] = {"n": len(ways["written"]), "n_used": len(ids),
                                 "excluded": len(ways["written"]) - len(ids)}
        if not ids:
            tasks[task] = entry
            continue
        acc = {w: _correct(ways[w], ids) for w in WAYS}
        entry["acc"] = {w: float(acc[w].mean()) for w in WAYS}
        for k, (name, a, b) in enumerate((*TERMS, ("gap", "written", "speech"))):
            d, lo, hi = paired_bootstrap_ci(acc[a], acc[b], confidence=confidence, n_boot=n_boot, seed=seed + k)
            entry[name] = {"diff": d, "ci": [lo, hi]}
            strata[name].append((acc[a], acc[b]))
        refs = [ways["speech"][i].prompt for i in ids]
        mine = [trans[(task, i)].response if (task, i) in trans else None for i in ids]
        err_mine, words = word_errors(refs, mine)
        entry["model_wer"] = float(err_mine.sum() / max(1.0, words.sum()))
        all_refs += refs
        all_mine += mine
        if result["asr"]:
            theirs = [result["asr"].get((task, i)) for i in ids]
            err_asr, _ = word_errors(refs, theirs)
            entry["asr_wer"] = float(err_asr.sum() / max(1.0, words.sum()))
            all_asr += theirs
        entry["examples"] = [{"said": r, "heard": h} for r, h in list(zip(refs, mine))[:3]]
        tasks[task] = entry
    report: dict[str, Any] = {"tasks": tasks, "ways": list(WAYS), "terms": [t[0] for t in TERMS]}
    used = [t for t in tasks.values() if t.get("n_used")]
    if used:
        overall: dict[str, Any] = {"n_used": sum(t["n_used"] for t in used),
                                   "acc": {w: float(np.mean([t["acc"][w] for t in used])) for w in WAYS}}
        for k, name in enumerate(strata):
            d, lo, hi = stratified_macro_bootstrap_ci(strata[name], confidence=confidence, n_boot=n_boot,
                                                      seed=seed + 10 + k)
            overall[name] = {"diff": d, "ci": [lo, hi]}
        err_mine, words = word_errors(all_refs, all_mine)
        if all_asr:
            err_asr, _ = word_errors(all_refs, all_asr)
            w = paired_wer_delta(words, err_asr, err_mine, confidence=confidence, n_boot=n_boot, seed=seed)
            overall |= {"asr_wer": w["base_wer"], "model_wer": w["model_wer"],
                        "wer_minus_asr": {"diff": w["delta"], "ci": w["ci"]}}
        else:
            overall["model_wer"] = float(err_mine.sum() / max(1.0, words.sum()))
        report["overall"] = overall
    return report


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _term(t: dict | None) -> str:
    if not t:
        return "—"
    return f"{100 * t['diff']:+.1f} [{100 * t['ci'][0]:+.1f}, {100 * t['ci'][1]:+.1f}]"


def format_perception_markdown(report: dict[str, Any]) -> str:
    cfg = report.get("config", {})
    head = (f"model {cfg.get('model', '?')}, voice {cfg.get('variant', '?')}, ASR {cfg.get('asr') or 'none'}\n\n"
            "| task | n | written | words | heard | speech | gap | form | hearing | reasoning over speech | "
            "WER model | WER ASR |\n|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    rows = list(report["tasks"].items())
    if "overall" in report:
        rows.append(("**overall (macro)**", report["overall"]))
    for name, t in rows:
        acc = t.get("acc", {})
        lines.append(
            f"| {name} | {t.get('n_used', 0)} | " + " | ".join(_pct(acc.get(w)) for w in WAYS) + " | "
            + " | ".join(_term(t.get(k)) for k in ("gap", *(name for name, _, _ in TERMS)))
            + f" | {_pct(t.get('model_wer'))} | {_pct(t.get('asr_wer'))} |")
    lines.append("\nAccuracy in % on the items answered in all four ways. written: the typed prompt; words: the "
                 "spoken words, typed; heard: the model's own transcript, typed; speech: the audio. "
                 "gap = form + hearing + reasoning over speech (paired bootstrap CIs; overall: macro over tasks).")
    o = report.get("overall", {})
    if o.get("wer_minus_asr"):
        lines.append(f"Transcription WER: model {_pct(o['model_wer'])}%, ASR {_pct(o['asr_wer'])}%, "
                     f"difference {_term(o['wer_minus_asr'])} points.")
    return "\n".join(lines)
