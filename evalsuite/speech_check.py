"""``xopd-eval speech-check``: is the spoken version of a task what its text says, and does it fit Whisper?

For every item of a split, per TTS variant (voice):
- the spoken prompt's duration; Whisper's window is 30 s and longer audio is cut silently, so a task's
  spoken prompts must stay under a bound (``--max-seconds``, default 25) at its slowest voice;
- a round trip: an ASR model (default whisper-tiny.en) transcribes the audio, and the prompt *keeps its
  content* when every number and operator word that was said comes back, in order (digits or words alike,
  :func:`evalsuite.spoken_form.keeps_content`); the word error rate is reported beside it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from evalsuite.speech import SAMPLE_RATE, Variant, render_array
from evalsuite.spoken_form import content_tokens, keeps_content
from evalsuite.textnorm import corpus_wer

DEFAULT_ASR = "whisper-tiny.en"


def load_transcriber(asr: str = DEFAULT_ASR) -> Callable[[list], list[str]]:
    """A batched greedy Whisper transcriber (zoo name, local path or hub id)."""
    # late: torch and transformers (and the two xopd modules built on them) only when a transcriber loads
    import torch
    from transformers import AutoProcessor, WhisperForConditionalGeneration

    from xopd.cascade import Cascade
    from xopd.loading import ModelLoadError, checked_from_pretrained, resolve_config

    path, config = resolve_config(asr, trust_remote_code=False)
    if config.model_type != "whisper":
        raise ModelLoadError(f"speech-check ASR {asr!r} is a {config.model_type!r} model; a Whisper checkpoint is needed")
    model = checked_from_pretrained(WhisperForConditionalGeneration, path, asr, dtype=torch.float32).eval()
    cascade = Cascade(model, checked_from_pretrained(AutoProcessor, path, asr), None, None, asr)
    return cascade.transcribe


def check_task(task: Any, variants: Sequence[Variant], transcribe: Callable[[list], list[str]] | None,
               *, max_seconds: float = 25.0, progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Per variant: durations, the content round trip (when ``transcribe`` is given), failures by item."""
    out: dict[str, Any] = {}
    for variant in variants:
        said, audios, durations, ids = [], [], [], []
        for item in task.items:
            text = task.render_spoken(item)
            audio = render_array(text, variant)
            said.append(text)
            audios.append(audio)
            durations.append(len(audio) / SAMPLE_RATE)
            ids.append(item.id)
            if progress:
                progress(1)
        entry: dict[str, Any] = {
            "n": len(ids),
            "max_seconds": round(max(durations), 2),
            "mean_seconds": round(sum(durations) / len(durations), 2),
            "over_limit": [i for i, d in zip(ids, durations) if d > max_seconds],
            "with_numbers_or_operators": sum(bool(content_tokens(t)) for t in said),
        }
        if transcribe is not None:
            heard = transcribe(audios)
            kept = [keeps_content(s, h) for s, h in zip(said, heard)]
            entry |= {
                "keep_rate": round(sum(kept) / len(kept), 4),
                "wer": round(corpus_wer(said, heard), 4),
                "lost": [{"id": i, "said": s, "heard": h} for i, s, h, k in zip(ids, said, heard, kept) if not k][:20],
            }
        out[variant.name] = entry
    return out


def run_speech_check(tasks: Sequence[Any], variants: Sequence[Variant], *, asr: str | None = DEFAULT_ASR,
                     max_seconds: float = 25.0, min_keep_rate: float = 0.95,
                     progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    t0 = time.perf_counter()
    transcribe = load_transcriber(asr) if asr else None
    report = {"asr": asr, "max_seconds_allowed": max_seconds, "min_keep_rate": min_keep_rate, "tasks": {}}
    for task in tasks:
        report["tasks"][task.name] = check_task(task, variants, transcribe, max_seconds=max_seconds, progress=progress)
    problems = []
    for name, per_variant in report["tasks"].items():
        for v, e in per_variant.items():
            if e["over_limit"]:
                problems.append(f"{name}/{v}: {len(e['over_limit'])} prompts longer than {max_seconds} s")
            if e.get("keep_rate") is not None and e["keep_rate"] < min_keep_rate:
                problems.append(f"{name}/{v}: content kept in {e['keep_rate']:.1%} < {min_keep_rate:.0%}")
    report["problems"] = problems
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    return report


def format_markdown(report: dict[str, Any]) -> str:
    rows = ["| task | voice | n | max s | mean s | > limit | content kept | WER |", "|---|---|---|---|---|---|---|---|"]
    for name, per_variant in report["tasks"].items():
        for v, e in per_variant.items():
            keep = f"{e['keep_rate']:.1%}" if "keep_rate" in e else "-"
            wer = f"{e['wer']:.3f}" if "wer" in e else "-"
            rows.append(f"| {name} | {v} | {e['n']} | {e['max_seconds']:.1f} | {e['mean_seconds']:.1f} | "
                        f"{len(e['over_limit'])} | {keep} | {wer} |")
    tail = ["", "problems: " + ("; ".join(report["problems"]) if report["problems"] else "none")]
    return "\n".join(rows + tail)
