"""The trainer's xopd-eval hook: the text/speech gap of the *live* student, on evalsuite tasks, every N steps.

The reasoning gap is what X-OPD is meant to close, so training measures it the way ``xopd-eval gap`` does --
same tasks, test splits, TTS, answer extraction, paired statistics and report format -- but on the weights in
memory (no export, no reload): the evalsuite's transformers backend is pointed at the student module being
trained, and asks in the prompt format the student is trained on (:mod:`xopd.prompting`, with the run's
``data.system_prompt`` and ``models.trust_remote_code``). Greedy decoding, so a report depends on the weights
alone. Reports go to ``<output_dir>/evals/step-NNNNNN/`` (report.json, samples.jsonl, gap.png), where
``xopd-eval gate`` and the explorer's Gap page read them; the returned numbers land in ``eval.jsonl``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from evalsuite.backends.hf import HFBackend
from evalsuite.reports import REPORT_VERSION, environment, write_json, write_jsonl
from evalsuite.reports.gap import gap_report
from evalsuite.reports.plot import gap_chart
from evalsuite.run import SPEECH, TEXT, evaluate
from evalsuite.speech import parse_variants
from evalsuite.tasks import load_task
from evalsuite.types import GenParams
from xopd.config import RunConfig
from xopd.models import ModelAdapter


class GapEvalHook:
    """``hook(step, student) -> {"gap_acc_text": a, "gap_acc_speech:clean": b, "gap_speech:clean": d}``

    The numbers are the report's overall row, a macro over tasks as in ``xopd-eval gap``: ``gap_acc_<mode>``
    the mean over tasks of each task's accuracy, ``gap_<speech mode>`` the mean over tasks of each task's
    paired gap (so d = a − b when every item could be asked), errored items left out of both.
    """

    def __init__(self, cfg: RunConfig, out: Path) -> None:
        e = cfg.eval
        self.cfg, self.out = cfg, Path(out)
        # loaded once (a bad task name fails at setup, not at the first evaluation)
        # the validation split: the test split is kept for final reports
        self.tasks = [load_task(n, split="validation", limit=e.gap_limit, seed=cfg.seed) for n in e.gap_tasks or ()]
        self.variants = parse_variants(e.gap_variants)
        self.params = GenParams(max_new_tokens=e.gap_max_new_tokens, temperature=0.0, seed=cfg.seed)
        self.backend: Any = None  # built once (tokenizer, processor); pointed at the live weights each time

    def __call__(self, step: int, student: ModelAdapter) -> dict[str, Any]:
        t0 = time.perf_counter()
        if self.backend is None:
            self.backend = HFBackend(
                student.source_path,
                batch_size=self.cfg.eval.gap_batch_size,
                dtype=student.dtype,
                device=str(student.device),
                trust_remote_code=self.cfg.models.trust_remote_code,
            )
        backend = self.backend
        backend.attach(student.model)  # the weights being trained, as they are now (and a fresh fingerprint)
        modes = (TEXT, SPEECH) if student.is_speech else (TEXT,)
        was_training = student.model.training
        student.model.eval()
        try:
            samples = evaluate(
                backend,
                self.tasks,
                modes=modes,
                variants=self.variants,
                params=self.params,
                system_prompt=self.cfg.data.system_prompt,  # the prompt format the student is trained on
            )
        finally:
            student.model.train(was_training)
        report = gap_report(samples, n_boot=2000, seed=self.cfg.seed)
        report.update(
            version=REPORT_VERSION,
            config={
                "model": f"{self.cfg.models.student} (xopd-train step {step})",
                "step": step,
                "run": str(self.out),
                "backend": "hf",
                "batch_size": self.cfg.eval.gap_batch_size,
                "gen_params": vars(self.params),
                "tasks": list(self.cfg.eval.gap_tasks or ()),
                "limit": self.cfg.eval.gap_limit,
                "variants": list(self.cfg.eval.gap_variants),
                "system_prompt": self.cfg.data.system_prompt,
                "seed": self.cfg.seed,
            },
            environment=environment(),
            wall_time_s=round(time.perf_counter() - t0, 1),
        )
        folder = self.out / "evals" / f"step-{step:06d}"
        write_jsonl(folder / "samples.jsonl", [s.as_dict() | {"step": step} for s in samples])
        write_json(folder / "report.json", report)
        gap_chart(report, folder / "gap.png")
        overall = report["overall"]  # macro over tasks (evalsuite.reports.gap.OVERALL_LABEL)
        out: dict[str, Any] = {f"gap_acc_{m}": float(v) for m, v in overall["macro"].items()}
        for m, g in overall["gap"].items():
            out[f"gap_{m}"] = float(g["diff"]) if "diff" in g else g
        return out
