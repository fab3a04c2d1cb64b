"""`xopd-eval gap` end to end on a tiny real model: bad inputs are marked and counted, a SIGKILLed run resumes to the
same report with no duplicate generations, and a new task is added with a file alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evalsuite.tts import espeak_synthesize
from xopd.zoo.fixtures import build_all


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("tiny"))


def _task_dir(root: Path) -> Path:
    """A JSONL task with good items and every kind of bad input the issue names."""
    d = root / "tasks"
    audio = d / "audio"
    audio.mkdir(parents=True)
    good = espeak_synthesize("What is two plus two?")
    sf.write(audio / "good.wav", good, 16000)
    sf.write(audio / "rate44k.wav", np.zeros(44100, np.float32), 44100)
    sf.write(audio / "stereo.wav", np.zeros((16000, 2), np.float32), 16000)
    (audio / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot really")
    rows = [
        {"id": "tts1", "question": "What is two plus two?", "answer": 4},
        {"id": "tts2", "question": "What is three plus five?", "answer": 8},
        {"id": "tts3", "question": "What is nine minus one?", "answer": 8},
        {"id": "rec", "question": "What is two plus two?", "answer": 4, "audio": "audio/good.wav"},
        {"id": "missing", "question": "What is one plus one?", "answer": 2, "audio": "audio/nope.wav"},
        {"id": "corrupt", "question": "What is one plus two?", "answer": 3, "audio": "audio/corrupt.wav"},
        {"id": "rate", "question": "What is two plus three?", "answer": 5, "audio": "audio/rate44k.wav"},
        {"id": "stereo", "question": "What is four plus four?", "answer": 8, "audio": "audio/stereo.wav"},
        {"id": "empty", "question": "", "answer": 0},
    ]
    (d / "mini.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "mini_math.yaml").write_text(
        "name: mini_math\nsource: {jsonl: mini.jsonl}\nanswer_type: number\nprompt: '{question}'\n"
        "instruction: Answer with the number only.\nmetric: exact\nsplits: {test_fraction: 1.0}\n"
    )
    return d


def _gap_cmd(model: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "evalsuite.cli", "gap", "--model", str(model), "--tasks", "mini_math",
            "--limit", "20", "--max-new-tokens", "12", "--backend", "hf", "--batch-size", "2", "--n-boot", "500",
            "--output", str(out)]


def _env(task_dir: Path) -> dict[str, str]:
    return {**os.environ, "XOPD_TASKS_PATH": str(task_dir)}


def test_bad_inputs_are_marked_counted_and_the_run_goes_on(tiny, tmp_path: Path) -> None:
    tasks = _task_dir(tmp_path)
    out = tmp_path / "out"
    proc = subprocess.run(_gap_cmd(tiny["qwen2_audio"], out), env=_env(tasks), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| mini_math |" in proc.stdout
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    errors = {(s["id"].split("/")[-1], s["mode"]): s["error"] for s in samples if s["error"]}
    assert "16000" in errors[("rate", "speech")] or "sample rate" in errors[("rate", "speech")]
    assert "stereo" in errors[("stereo", "speech")] or "channel" in errors[("stereo", "speech")]
    assert "nope.wav" in errors[("missing", "speech")]
    assert "corrupt.wav" in errors[("corrupt", "speech")]
    assert "empty prompt" in errors[("empty", "text")] and "empty prompt" in errors[("empty", "speech")]
    good = [s for s in samples if not s["error"]]
    assert len(good) == 8 + 4  # every non-empty item in text mode; tts1-3 and rec in speech mode
    report = json.loads((out / "report.json").read_text())
    modes = report["tasks"]["mini_math"]["modes"]
    assert modes["text"]["errors"] == 1  # the empty prompt
    assert sum(m["errors"] for k, m in modes.items() if k != "text") == 5
    assert report["config"]["gen_params"]["max_new_tokens"] == 12
    assert "torch" in report["environment"] and report["version"] == 1
    assert (out / "gap.png").read_bytes()[:4] == b"\x89PNG"


def test_killed_run_resumes_to_the_same_report(tiny, tmp_path: Path) -> None:
    tasks = _task_dir(tmp_path)
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    env = _env(tasks)
    ref = subprocess.run(_gap_cmd(tiny["qwen2_audio"], ref_out), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr[-3000:]

    # Kill as soon as the first chunk of generations has reached the cache.
    cmd = _gap_cmd(tiny["qwen2_audio"], out) + ["--chunk-size", "2"]
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cache = out / "cache.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not cache.exists() or cache.read_text().count("\n") < 2):
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    partial = cache.read_text().count("\n")
    assert partial >= 2 and not (out / "report.json").exists()

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    lines = [json.loads(x) for x in cache.read_text().splitlines()]
    keys = [x["key"] for x in lines]
    assert len(keys) == len(set(keys)), "duplicate generations in the cache"
    strip = lambda p: [{k: v for k, v in json.loads(x).items()} for x in p.read_text().splitlines()]  # noqa: E731
    assert strip(out / "samples.jsonl") == strip(ref_out / "samples.jsonl")
    a, b = (json.loads((d / "report.json").read_text()) for d in (out, ref_out))
    assert a["tasks"] == b["tasks"] and a["paired"] == b["paired"]


def _perturbed_copy(src: Path, dst: Path, noise: float = 0.5, seed: int = 0) -> Path:
    """A second real model: ``src`` with seeded Gaussian noise on its language model's weights."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    g = torch.Generator().manual_seed(seed)
    for f in sorted(dst.glob("*.safetensors")):
        tensors = load_file(str(f))
        for name in sorted(tensors):
            t = tensors[name]
            if "language_model" in name and t.is_floating_point() and t.numel() > 1:
                tensors[name] = t + noise * float(t.std()) * torch.randn(t.shape, generator=g, dtype=t.dtype)
        save_file(tensors, str(f), metadata={"format": "pt"})
    return dst


def test_forgetting_of_a_changed_model_shows_its_differences(tiny, tmp_path: Path) -> None:
    tasks = _task_dir(tmp_path)
    out = tmp_path / "forget"
    base = str(tiny["qwen2_audio"])
    model = str(_perturbed_copy(tiny["qwen2_audio"], tmp_path / "changed"))
    cmd = [sys.executable, "-m", "evalsuite.cli", "forgetting", "--base", base, "--model", model, "--tasks",
           "mini_math", "--max-new-tokens", "8", "--backend", "hf", "--n-boot", "300", "--output", str(out)]
    proc = subprocess.run(cmd, env=_env(tasks), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "forgetting" and "ASR (asked to transcribe" in proc.stdout
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    by_role = {r: {(s["id"], s["mode"]): s["response"] for s in samples if s["role"] == r and not s["error"]}
               for r in ("base", "model")}
    assert by_role["base"].keys() == by_role["model"].keys()
    changed = [k for k in by_role["base"] if by_role["base"][k] != by_role["model"][k]]
    assert changed, "the changed model answered exactly like its base: its answers came from the base's cache"
    # the cache holds each model's own generations under its own fingerprint
    keys = [json.loads(x)["key"] for x in (out / "cache.jsonl").read_text().splitlines()]
    assert len(keys) == len(set(keys)) >= 2 * len(by_role["base"])
    assert report["asr"]["n"] == 4  # tts1-3 + the recorded item
    gate = subprocess.run([sys.executable, "-m", "evalsuite.cli", "gate", "--report", str(out / "report.json"),
                           "--max-drop", "0.05"], capture_output=True, text=True)
    assert gate.returncode in (0, 1) and "mini_math" in gate.stdout, gate.stdout + gate.stderr
    assert (gate.returncode == 1) == ("GATE FAILED" in gate.stdout)  # the verdict follows the printed rows


def test_no_model_runs_the_demo_world(tmp_path: Path) -> None:
    """`xopd-eval gap` with no --model: the demo student against the demo teacher, on the seen and the held-out
    voice (the shipped deltas build into the zoo offline)."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "evalsuite.cli", "gap", "--tasks", "syllogism", "--limit", "2",
           "--max-new-tokens", "8", "--backend", "hf", "--n-boot", "200", "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no --model: running the embedded default (xopd-demo-student against the teacher xopd-demo-teacher" \
        in proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["model"] == "xopd-demo-student"
    assert report["config"]["teacher"] == "xopd-demo-teacher"
    assert report["config"]["variants"] == ["hibari", "flite-kal"]
    assert set(report["overall"]["gap"]) == {"speech:hibari", "speech:flite-kal"}
    assert set(report["teacher"]["text_accuracy"]) == {"syllogism"}
    models = {json.loads(line)["model"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert models == {"xopd-demo-student", "xopd-demo-teacher"}
