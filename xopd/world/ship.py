"""Pack the demo world's trained deltas into the package, where the zoo rebuilds its two models from them.

    python -m xopd.world.ship --teacher artifacts/world/teacher2/step-000500 \\
        --student-llm artifacts/world/teacher/step-000400 --student-audio artifacts/world/align/step-001500

Writes ``xopd/zoo/demo_world/{teacher_lora,student_lora,student_audio}.safetensors`` (float16) and
``manifest.json``: each file's sha256 and size, and the provenance of each delta -- its run folder, step, every
command line that ran in that folder (``command.txt``) and that step's validation line (``eval.jsonl``). Then
rebuild the zoo entries (``xopd-eval zoo build xopd-demo-teacher xopd-demo-student``) and measure those: the
numbers a report gives are the shipped models', float16 deltas and all.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from xopd.world.cli import parser
from xopd.zoo.demo_world import DELTAS, lora_from_peft, write_deltas

LIMIT_BYTES = 40 * 2**20  # the budget for everything shipped


def _step_of(path: Path) -> int:
    m = re.fullmatch(r"step-(\d+)", path.name)
    if not m:
        raise SystemExit(f"{path}: expected a step-NNNNNN checkpoint folder")
    return int(m.group(1))


def provenance(ckpt: Path) -> dict[str, Any]:
    """Where a checkpoint came from: its run folder, step, the commands that ran there, that step's eval line."""
    run, step = ckpt.parent, _step_of(ckpt)
    commands = (run / "command.txt").read_text().splitlines() if (run / "command.txt").is_file() else []
    evals = []
    if (run / "eval.jsonl").is_file():
        evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines() if x.strip()]
    line = next((e for e in evals if e.get("step") == step), None)
    if line is not None:
        line = {k: v for k, v in line.items() if k != "examples"}
    return {"run": str(run), "step": step, "commands": commands, "eval": line}


def audio_delta(ckpt: Path) -> dict[str, Any]:
    """An alignment checkpoint's trainable tensors under the checkpoint file's key names (the projector)."""
    weights = load_file(str(ckpt / "trainable.safetensors"))
    lora = [k for k in weights if "lora_" in k]
    if lora:
        raise SystemExit(f"{ckpt}: holds an encoder LoRA ({lora[0]}, ...): ship the exported student's merged "
                         "encoder instead (not supported by this packer)")
    out = {}
    for key, value in weights.items():
        if not key.startswith("model.multi_modal_projector."):
            raise SystemExit(f"{ckpt}: unexpected trainable tensor {key!r}")
        out[key[len("model."):]] = value
    return out


def main(argv: list[str] | None = None) -> int:
    p = parser("xopd.world.ship", __doc__)
    p.add_argument("--teacher", required=True, type=Path, help="the teacher's LoRA checkpoint (step-NNNNNN/)")
    p.add_argument("--student-llm", required=True, type=Path, help="the student LLM's (earlier) LoRA checkpoint")
    p.add_argument("--student-audio", required=True, type=Path, help="the alignment run's checkpoint")
    p.add_argument("--out", type=Path, default=DELTAS)
    args = p.parse_args(argv)

    files = {
        "teacher_lora.safetensors": lora_from_peft(args.teacher),
        "student_lora.safetensors": lora_from_peft(args.student_llm),
        "student_audio.safetensors": (audio_delta(args.student_audio), {}),
    }
    origin = {"teacher": provenance(args.teacher), "student_llm": provenance(args.student_llm),
              "student_audio": provenance(args.student_audio)}
    write_deltas(args.out, files, origin)
    manifest = json.loads((args.out / "manifest.json").read_text())
    total = sum(f["bytes"] for f in manifest["files"].values())
    for name, f in manifest["files"].items():
        print(f"{name}: {f['tensors']} tensors, {f['bytes'] / 2**20:.1f} MiB, sha256 {f['sha256'][:12]}")
    print(f"total {total / 2**20:.1f} MiB (budget {LIMIT_BYTES / 2**20:.0f} MiB) in {args.out}")
    if total > LIMIT_BYTES:
        print("over budget: lower the LoRA rank", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
