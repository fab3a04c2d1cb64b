"""The demo world's measured numbers, from the reports of ``xopd-eval gap`` and ``xopd-eval perception``.

    python -m xopd.world.report --gap artifacts/world/gap/report.json \\
        --perception artifacts/world/perception/report.json --out reports/demo/world

Writes ``world.json`` (the issue's schema: ``{"teacher": {"text_acc", "per_task"}, "student": {"text_acc",
"speech_acc_seen", "speech_acc_heldout", "gap_heldout", "gap_heldout_ci", "n_paired", "repeat_wer",
"whisper_wer", "perception_gap", "delta_s", "delta_t"}}`` plus per-task detail, the commands and their wall
times) and ``world.md`` (the same as tables, with the checks of the issue marked). Accuracies are fractions in
the JSON and percents in the Markdown; ΔS and ΔT are the paper's Avg. Drop % against the teacher's text.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from evalsuite.reports import write_json
from xopd.world.cli import parser

SEEN, HELD_OUT = "hibari", "flite-kal"


def _mode(voice: str) -> str:
    return f"speech:{voice}"


def world_numbers(gap: dict[str, Any], perception: dict[str, Any], *, seen: str = SEEN,
                  held_out: str = HELD_OUT) -> dict[str, Any]:
    """The world.json body from a gap report (student + ``--teacher``, both voices) and a perception report."""
    if "teacher" not in gap:
        raise SystemExit("the gap report has no teacher: run `xopd-eval gap` with --teacher xopd-demo-teacher")
    for v in (seen, held_out):
        if _mode(v) not in gap["overall"]["macro"]:
            raise SystemExit(f"the gap report has no voice {v!r}: run it with --variants {seen},{held_out}")
    t_acc = gap["teacher"]["text_accuracy"]
    o = gap["overall"]
    g = o["gap"][_mode(held_out)]
    po = perception.get("overall", {})
    drops, drop_ci = gap["avg_drop"]["percent"], gap["avg_drop"]["ci"]
    per_task = {}
    for task, e in gap["tasks"].items():
        modes = e["modes"]
        pt = perception.get("tasks", {}).get(task, {})
        per_task[task] = {
            "chance": e.get("chance"),
            "teacher_text": t_acc.get(task),
            "text": modes["text"]["accuracy"],
            "speech_seen": modes[_mode(seen)]["accuracy"],
            "speech_heldout": modes[_mode(held_out)]["accuracy"],
            "gap_seen": e["gap"][_mode(seen)]["diff"], "gap_seen_ci": e["gap"][_mode(seen)]["ci"],
            "gap_heldout": e["gap"][_mode(held_out)]["diff"], "gap_heldout_ci": e["gap"][_mode(held_out)]["ci"],
            "n_paired_heldout": e["gap"][_mode(held_out)]["n"],
            "restated_seen": modes[_mode(seen)].get("restated_rate"),
            "restated_heldout": modes[_mode(held_out)].get("restated_rate"),
            "repeat_wer": pt.get("model_wer"), "whisper_wer": pt.get("asr_wer"),
            "perception": {k: pt.get(k) for k in ("acc", "form", "hearing", "reasoning", "gap")} if pt else None,
        }
    return {
        "teacher": {"text_acc": sum(t_acc.values()) / len(t_acc), "per_task": t_acc},
        "student": {
            "text_acc": o["macro"]["text"],
            "speech_acc_seen": o["macro"][_mode(seen)],
            "speech_acc_heldout": o["macro"][_mode(held_out)],
            "gap_heldout": g["diff"], "gap_heldout_ci": g["ci"], "n_paired": g["n"],
            "gap_seen": o["gap"][_mode(seen)]["diff"], "gap_seen_ci": o["gap"][_mode(seen)]["ci"],
            "repeat_wer": po.get("model_wer"), "whisper_wer": po.get("asr_wer"),
            "perception_gap": (po.get("reasoning") or {}).get("diff"),
            "perception_gap_ci": (po.get("reasoning") or {}).get("ci"),
            "delta_s": drops.get(_mode(held_out)), "delta_s_ci": drop_ci.get(_mode(held_out)),
            "delta_s_seen": drops.get(_mode(seen)), "delta_s_seen_ci": drop_ci.get(_mode(seen)),
            "delta_t": drops.get("text"), "delta_t_ci": drop_ci.get("text"),
            "restated_seen": _mean([e["restated_seen"] for e in per_task.values()]),
            "restated_heldout": _mean([e["restated_heldout"] for e in per_task.values()]),
            "per_task": per_task,
        },
        "voices": {"seen": seen, "held_out": held_out},
        "perception_voice": perception.get("config", {}).get("variant"),
    }


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def checks(w: dict[str, Any]) -> list[tuple[str, bool]]:
    """The issue's acceptance checks on the measured numbers, each (what, passed)."""
    s, t = w["student"], w["teacher"]
    chance = {k: v["chance"] or 0.0 for k, v in s["per_task"].items()}
    out = [
        ("teacher macro text accuracy >= 0.70", t["text_acc"] >= 0.70),
        ("teacher >= chance + 25 points on every task",
         all(t["per_task"][k] >= chance[k] + 0.25 for k in chance)),
        ("student text 5-15 points below the teacher", 0.05 <= t["text_acc"] - s["text_acc"] <= 0.15),
        ("held-out gap >= 13 points", s["gap_heldout"] >= 0.13),
        ("held-out gap CI excludes 0", s["gap_heldout_ci"][0] > 0),
        (">= 600 paired items", s["n_paired"] >= 600),
        ("speech above chance on every task (held-out voice)",
         all(v["speech_heldout"] > chance[k] for k, v in s["per_task"].items())),
    ]
    if s["repeat_wer"] is not None and s["whisper_wer"] is not None:
        out.append(("repeat-WER within 0.05 of Whisper's (seen voice)", s["repeat_wer"] - s["whisper_wer"] <= 0.05))
    if s["perception_gap"] is not None:
        out.append(("text on own transcripts - speech >= 10 points", s["perception_gap"] >= 0.10))
    return out


def _p(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _ci(d: float | None, ci: list | None) -> str:
    if d is None:
        return "—"
    return f"{100 * d:+.1f} [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else f"{100 * d:+.1f}"


def _pct_ci(d: float | None, ci: list | None) -> str:
    return "—" if d is None else f"{d:.1f} [{ci[0]:.1f}, {ci[1]:.1f}]"


def markdown(w: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    s, t, v = w["student"], w["teacher"], w["voices"]
    lines = [
        f"Student `xopd-demo-student` vs teacher `xopd-demo-teacher` on the test split of the default mix; seen "
        f"voice `{v['seen']}` (trained on), held-out voice `{v['held_out']}` (never heard in training).", "",
        "| | teacher text | student text | speech (seen) | speech (held-out) | gap held-out [95% CI] | "
        "gap seen [95% CI] | n paired |", "|---|---|---|---|---|---|---|---|",
        f"| **overall (macro)** | {_p(t['text_acc'])} | {_p(s['text_acc'])} | {_p(s['speech_acc_seen'])} | "
        f"{_p(s['speech_acc_heldout'])} | {_ci(s['gap_heldout'], s['gap_heldout_ci'])} | "
        f"{_ci(s['gap_seen'], s['gap_seen_ci'])} | {s['n_paired']} |",
    ]
    for task, e in s["per_task"].items():
        lines.append(f"| {task} (chance {_p(e['chance'])}) | {_p(e['teacher_text'])} | {_p(e['text'])} | "
                     f"{_p(e['speech_seen'])} | {_p(e['speech_heldout'])} | "
                     f"{_ci(e['gap_heldout'], e['gap_heldout_ci'])} | {_ci(e['gap_seen'], e['gap_seen_ci'])} | "
                     f"{e['n_paired_heldout']} |")
    lines += ["", "Avg. Drop % against the teacher's text (the paper's ΔT, ΔS), 95% CI:", "",
              f"- ΔT (student text): {_pct_ci(s['delta_t'], s['delta_t_ci'])}",
              f"- ΔS held-out voice: {_pct_ci(s['delta_s'], s['delta_s_ci'])}; seen voice: "
              f"{_pct_ci(s['delta_s_seen'], s['delta_s_seen_ci'])}", ""]
    if s.get("restated_seen") is not None:
        per = ", ".join(f"{task} {_p(e['restated_seen'])} / {_p(e['restated_heldout'])}"
                        for task, e in s["per_task"].items())
        lines += [f"Speech responses that only restate the question (scored wrong), seen / held-out voice: "
                  f"{_p(s['restated_seen'])}% / {_p(s['restated_heldout'])}% (macro); per task: {per}.", ""]
    if s["repeat_wer"] is not None:
        lines += [f"Perception (voice `{w.get('perception_voice')}`): the student's transcription WER "
                  f"{_p(s['repeat_wer'])}% vs Whisper tiny.en's {_p(s['whisper_wer'])}% on the same clips; its text "
                  f"accuracy on its own transcripts minus its speech accuracy (reasoning over speech) "
                  f"{_ci(s['perception_gap'], s.get('perception_gap_ci'))} points.", "",
                  "| task | written | words | heard | speech | form | hearing | reasoning over speech | WER student | "
                  "WER Whisper |", "|---|---|---|---|---|---|---|---|---|---|"]
        for task, e in s["per_task"].items():
            p = e["perception"] or {}
            acc = p.get("acc") or {}
            terms = " | ".join(_ci((p.get(k) or {}).get("diff"), (p.get(k) or {}).get("ci"))
                               for k in ("form", "hearing", "reasoning"))
            lines.append(f"| {task} | {_p(acc.get('written'))} | {_p(acc.get('words'))} | {_p(acc.get('heard'))} | "
                         f"{_p(acc.get('speech'))} | {terms} | {_p(e['repeat_wer'])} | {_p(e['whisper_wer'])} |")
        lines.append("")
    lines += ["Checks of the issue:", ""]
    lines += [f"- [{'x' if ok else ' '}] {what}" for what, ok in checks(w)]
    if runs:
        lines += ["", "Commands (wall time on the machine named):", ""]
        lines += [f"- `{r['command']}` — {r['wall_s']} s ({r.get('machine', '?')})" for r in runs]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = parser("xopd.world.report", __doc__)
    p.add_argument("--gap", required=True, type=Path, help="report.json of xopd-eval gap (student + teacher)")
    p.add_argument("--perception", required=True, type=Path, help="report.json of xopd-eval perception")
    p.add_argument("--out", required=True, type=Path, help="writes OUT.json and OUT.md")
    p.add_argument("--machine", default="2-core CPU", help="named beside each wall time")
    p.add_argument("--seen", default=SEEN, help="the trained-on voice of the gap report")
    p.add_argument("--held-out", default=HELD_OUT, help="the voice no training step heard")
    args = p.parse_args(argv)
    gap, perception = (json.loads(path.read_text()) for path in (args.gap, args.perception))
    w = world_numbers(gap, perception, seen=args.seen, held_out=args.held_out)
    runs = [{"command": r["config"].get("command") or f"xopd-eval {r.get('kind', 'perception')} "
             f"--model {r['config']['model']}", "wall_s": r.get("wall_time_s"), "machine": args.machine}
            for r in (gap, perception)]
    w["runs"] = runs
    w["checks"] = {what: ok for what, ok in checks(w)}
    args.out.parent.mkdir(parents=True, exist_ok=True)

    write_json(args.out.with_suffix(".json"), w)
    text = markdown(w, runs)
    args.out.with_suffix(".md").write_text("# The demo world, measured\n\n" + text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
