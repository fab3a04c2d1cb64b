"""Tests for the X-OPD trainer (xopd.config/models/rollout/data/rolloutlog/trainer/cli) on tiny fixtures.

The fixtures (``fixture:teacher``, ``fixture:qwen2_audio``, ``fixture:qwen2_5_omni_thinker``) are built once
under ``$XOPD_HOME/fixtures``; the students' language models *are* the teacher, so on text they agree exactly.
Speech comes from the evalsuite's espeak-ng cache. Everything here is real: real models, real TTS, real
subprocesses.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from xopd import cli, losses
from xopd.config import ConfigError, load_config
from xopd.data import speech_audio, task_pairs
from xopd.models import (
    VocabularyMismatchError,
    check_pair,
    load_adapter,
    resolve_model_name,
    shared_vocab_size,
)
from xopd.rollout import HFRolloutEngine, SamplingParams, completion_mask
from xopd.rolloutlog import StepLog, read_records, token_pieces

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny.yaml"
QUESTIONS = [
    "What is 3 plus 4?\nAnswer with the number only.",
    "Tom has 12 apples. He buys 5 more apples. How many apples does Tom have now?\n"
    "Answer with the number only.",
]


def tiny_cfg(out: Path, *overrides: str):
    return load_config(TINY, [f"output_dir={out}", "logging.progress=false", *overrides])


def run_train(out: Path, *overrides: str) -> dict:
    from xopd.trainer import train

    return train(tiny_cfg(out, *overrides))


def metrics(out: Path) -> list[dict]:
    return list(read_records(out / "metrics.jsonl"))


@pytest.fixture(scope="module")
def teacher():
    return load_adapter("fixture:teacher")


@pytest.fixture(scope="module")
def speech():
    from evalsuite.speech import load_audio, parse_variants, render

    (variant,) = parse_variants("clean")
    return load_audio(render("What is three plus four?", variant))


# ------------------------------------------------------------------------------------------------------------
# config and CLI
# ------------------------------------------------------------------------------------------------------------


def test_config_overrides_types_and_unknown_keys(tmp_path, capsys):
    cfg = load_config(
        TINY,
        [
            "optim.lr=1e-5",
            "rollout.n=3",
            "loss.clip_eps=0.2",
            "models.lora_targets=q_proj,v_proj",
            "eval.tasks=[sums]",
            "checkpoint.every=0",
        ],
    )
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)  # PyYAML alone reads "1e-5" as a string
    assert cfg.rollout.n == 3 and cfg.loss.clip_eps == 0.2 and cfg.models.lora_targets == ["q_proj", "v_proj"]
    assert cfg.eval.tasks == ["sums"] and cfg.models.student == "fixture:qwen2_audio"
    with pytest.raises(ConfigError, match=r"unknown config key 'optim\.lrr'.*known: lr"):
        load_config(TINY, ["optim.lrr=1"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout:\n  nn: 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*unknown config key 'rollout\.nn'"):
        load_config(bad)
    with pytest.raises(ConfigError, match="loss.kind"):
        load_config(TINY, ["loss.kind=ppo"])
    with pytest.raises(ConfigError, match="loss.lam"):
        load_config(TINY, ["loss.lam=1.5"])
    assert cli.main(["--config", str(TINY), "optim.lrr=1", "--print-config"]) == 2
    assert "optim.lrr" in capsys.readouterr().err
    assert cli.main(["--config", str(TINY), "optim.lr=3e-4", "--print-config"]) == 0
    assert "lr: 0.0003" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------
# models: the sanity check, vocabularies, alignment
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("student_key", ["qwen2_audio", "qwen2_5_omni_thinker"])
def test_identical_student_gets_zero_advantage_on_text(student_key, teacher, speech):
    student = load_adapter(f"fixture:{student_key}")
    vocab = check_pair(student, teacher)
    assert vocab == 1000  # the tokenizer's size; lm_heads are padded to 1024 rows
    engine = HFRolloutEngine(
        student, vocab_size=vocab, batch_size=4, banned_ids=student.multimodal_token_ids()
    )
    torch.manual_seed(0)
    t_prompts = [teacher.text_prompt(q) for q in QUESTIONS]
    for modality in ("text", "speech"):
        if modality == "text":
            s_prompts = [student.text_prompt(q) for q in QUESTIONS]
        else:
            s_prompts = [student.speech_prompt(speech, "Answer with the number only.") for _ in QUESTIONS]
        r = engine.generate(s_prompts, SamplingParams(n=2, max_new_tokens=10))
        assert r.mask.sum() > 0 and int(r.ids[r.mask].max()) < vocab
        idx = r.prompt_index.tolist()
        s_lp = student.completion_logprobs([s_prompts[i] for i in idx], r.ids, r.mask, vocab_size=vocab)
        t_lp = teacher.score([t_prompts[i] for i in idx], r.ids, r.mask, vocab_size=vocab).logprobs
        adv = losses.xopd_advantage(t_lp, s_lp, r.mask)
        # the sampler excludes the ~1% of mass on audio/vision placeholder ids of this near-uniform model
        assert (s_lp - r.sampler_logprobs)[r.mask].abs().max() < 0.02
        if modality == "text":
            assert adv.abs().max() < 1e-5, f"{student_key}: text advantage {adv.abs().max():.2e} should be 0"
        else:  # hearing the question instead of reading it changes the student's distribution
            assert adv[r.mask].abs().mean() > 1e-3


def test_vocabulary_mismatch_is_a_clear_error(tmp_path, teacher):
    from transformers import AutoTokenizer

    from xopd.zoo import fixtures

    # a teacher with its own tokenizer, trained on another draw of the corpus
    other = fixtures.build_tiny_teacher(tmp_path / "other-teacher", seed=1)
    student = load_adapter("fixture:qwen2_audio")
    with pytest.raises(VocabularyMismatchError, match="do not share an output vocabulary") as err:
        check_pair(student, load_adapter(str(other)))
    assert "First differences: id " in str(err.value) and "fixture:qwen2_audio" in str(err.value)
    # through the CLI: one line naming the problem, exit code 1, no traceback
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xopd.cli",
            "--config",
            str(TINY),
            f"output_dir={tmp_path / 'run'}",
            f"models.teacher={other}",
            "logging.progress=false",
        ],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )
    assert (
        proc.returncode == 2
        and "do not share an output vocabulary" in proc.stderr
        and "Traceback" not in proc.stderr
    )

    # The zoo's case is fine: the student's tokenizer has extra (audio) tokens beyond the teacher's.
    tok = AutoTokenizer.from_pretrained(resolve_model_name("fixture:teacher"))
    extra = AutoTokenizer.from_pretrained(resolve_model_name("fixture:teacher"))
    extra.add_special_tokens({"additional_special_tokens": ["<|extra_audio|>"]})
    assert len(extra) == 1001
    assert shared_vocab_size(extra, tok, student_rows=1024, teacher_rows=1024) == 1000
    with pytest.raises(VocabularyMismatchError, match="EOS id"):
        shared_vocab_size(extra, tok, student_rows=1024, teacher_rows=1024, eos_ids=[1000])
    with pytest.raises(VocabularyMismatchError, match="lm_head has 900 rows"):
        shared_vocab_size(tok, tok, student_rows=1024, teacher_rows=900)


def _manual_logprobs(
    model, ids_prompt: list[int], completion: list[int], vocab: int, **extra
) -> torch.Tensor:
    """The textbook computation, one unpadded sequence: logits at position t-1 predict token t."""
    ids = torch.tensor([ids_prompt + completion])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits[0, :, :vocab]
    p = len(ids_prompt)
    lp = logits.float().log_softmax(-1)
    return torch.stack([lp[p - 1 + t, tok] for t, tok in enumerate(completion)])


def test_teacher_reads_its_own_template_and_the_same_completion_ids(tmp_path, speech):
    # a teacher whose chat template differs from the student's (an extra system turn): the prompts differ
    src = Path(resolve_model_name("fixture:teacher"))
    own = tmp_path / "teacher-own-template"
    shutil.copytree(src, own)
    template = (own / "chat_template.jinja").read_text()
    (own / "chat_template.jinja").write_text(
        "{{- '<|im_start|>system\\nYou are the teacher.<|im_end|>\\n' -}}" + template
    )
    teacher = load_adapter(str(own))
    student = load_adapter("fixture:qwen2_audio")
    vocab = check_pair(student, teacher)

    t_prompts = [teacher.text_prompt(q) for q in QUESTIONS]
    expected = teacher.tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTIONS[0]}],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
    )
    assert t_prompts[0].ids == list(expected) and "You are the teacher." in t_prompts[0].text
    assert student.text_prompt(QUESTIONS[0]).ids != t_prompts[0].ids  # the student has no such system turn

    s_prompts = [
        student.speech_prompt(speech, "Answer with the number only."),
        student.text_prompt(QUESTIONS[1]),
    ]
    engine = HFRolloutEngine(
        student, vocab_size=vocab, batch_size=4, banned_ids=student.multimodal_token_ids()
    )
    torch.manual_seed(1)
    r = engine.generate(s_prompts, SamplingParams(n=2, max_new_tokens=9))
    idx = r.prompt_index.tolist()
    # batched, left-padded, right-aligned, chunked -- against the textbook computation, row by row
    batched_t = teacher.score([t_prompts[i] for i in idx], r.ids, r.mask, vocab_size=vocab, topk=3)
    batched_s = student.completion_logprobs([s_prompts[i] for i in idx], r.ids, r.mask, vocab_size=vocab)
    for row, i in enumerate(idx):
        completion = r.ids[row, : int(r.mask[row].sum())].tolist()
        manual_t = _manual_logprobs(teacher.core, t_prompts[i].ids, completion, vocab)
        torch.testing.assert_close(batched_t.logprobs[row, : len(completion)], manual_t, atol=1e-4, rtol=0)
        assert (batched_t.topk_logprobs[row, : len(completion), 0] >= manual_t - 1e-5).all()
        manual_s = _manual_logprobs(
            student.core, s_prompts[i].ids, completion, vocab, **s_prompts[i].features
        )
        torch.testing.assert_close(batched_s[row, : len(completion)], manual_s, atol=1e-4, rtol=0)


def test_completion_mask_stops_after_the_first_of_every_eos_id():
    ids = torch.tensor([[5, 992, 7, 990], [5, 6, 990, 992], [5, 6, 7, 8]])
    assert completion_mask(ids, [992, 990]).tolist() == [
        [True, True, False, False],
        [True, True, True, False],
        [True, True, True, True],
    ]


def test_token_pieces_keep_multibyte_characters_whole():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_name("fixture:teacher"))
    text = "café 😀 déjà vu, 12 apples"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    pieces = token_pieces(tok, ids)
    assert "".join(pieces) == text and len(pieces) == len(ids)
    # the emoji spans several byte tokens: whole in the last one, "" in the others
    assert not any("\ufffd" in p for p in pieces) and "😀" in pieces and "" in pieces


# ------------------------------------------------------------------------------------------------------------
# training runs
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """Three steps; step 2's loss is poisoned with NaN (debug.nan_loss_steps); a checkpoint after each."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("nan_run")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        summary = run_train(
            out,
            "schedule.steps=3",
            "debug.nan_loss_steps=[2]",
            "checkpoint.every=1",
            "checkpoint.keep_last=3",
            "eval.at_start=false",
            "eval.at_end=false",
        )
    return out, summary, err.getvalue()


def test_nan_step_is_skipped_reported_and_training_goes_on(nan_run):
    out, summary, stderr = nan_run
    assert summary["skipped_steps"] == [2] and summary["steps"] == 3
    rows = metrics(out)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[1]["skipped"] and not rows[0]["skipped"] and not rows[2]["skipped"]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["grad_norm"]])).all() for r in (rows[0], rows[2]))
    assert "step 2/3" in stderr and "SKIPPED: non-finite loss or gradient" in stderr
    w = {s: load_file(str(out / "checkpoints" / f"step-{s:06d}" / "model.safetensors")) for s in (1, 2, 3)}
    assert all(torch.equal(w[1][k], w[2][k]) for k in w[1])  # the NaN step changed nothing
    assert any(not torch.equal(w[2][k], w[3][k]) for k in w[2])  # and the next step trained again


def test_audio_encoder_and_projector_stay_frozen(nan_run):
    out, _, _ = nan_run
    before = load_file(str(Path(resolve_model_name("fixture:qwen2_audio")) / "model.safetensors"))
    after = load_file(str(out / "final" / "model.safetensors"))  # the exported model, released key names
    assert set(before) == set(after)
    frozen = [k for k in before if k.startswith(("audio_tower.", "multi_modal_projector."))]
    trained = [k for k in before if k.startswith("language_model.")]
    assert frozen and trained
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert any(not torch.equal(before[k], after[k]) for k in trained)
    ckpt = load_file(str(out / "checkpoints" / "step-000003" / "model.safetensors"))
    assert ckpt and not any("audio_tower" in k or "multi_modal_projector" in k for k in ckpt)


def test_rollout_log_schema(nan_run):
    out, _, _ = nan_run
    recs = list(read_records(out / "rollouts.jsonl"))
    # tiny.yaml: 4 prompts x 2 rollouts x 2 modalities per step
    assert sorted({r["step"] for r in recs}) == [1, 2, 3] and len(recs) == 3 * 16
    for r in recs:
        tok = r["tokens"]
        t = r["num_tokens"]
        assert r["schema"] == 1 and r["kind"] == "xopd" and r["modality"] in ("text", "speech")
        assert all(
            len(tok[k]) == t for k in ("id", "piece", "student_lp", "teacher_lp", "sampler_lp", "advantage")
        )
        assert "".join(tok["piece"]) == r["completion"]
        assert [len(x) for x in tok["teacher_topk"]["id"]] == [3] * t and len(tok["teacher_topk"]["lp"]) == t
        assert (r["audio_path"] is not None) == (r["modality"] == "speech")
        if r["modality"] == "speech":
            assert not Path(r["audio_path"]).is_absolute() and r["variant"] == "clean"
            assert (out / r["audio_path"]).is_file()  # the log dir holds the audio it refers to
        mean_adv = sum(tok["advantage"]) / t
        assert r["reverse_kl"] == pytest.approx(-mean_adv, abs=1e-4)
        if (
            r["step"] == 1 and r["modality"] == "text"
        ):  # before any update the student *is* the teacher on text
            assert max(abs(a) for a in tok["advantage"]) < 1e-4
    assert {(r["step"], r["prompt_id"], r["modality"], r["sample"]) for r in recs}.__len__() == len(recs)


def _sharpened_fixtures(dst: Path, factor: float = 20.0) -> dict[str, str]:
    """Teacher and Qwen2-Audio student with every lm_head scaled by ``factor``: the random fixtures are nearly
    uniform (KL ~ 0.004), scaled they are confident, and hearing vs reading the question matters (KL ~ 1)."""
    out = {}
    for key in ("teacher", "qwen2_audio"):
        src = Path(resolve_model_name(f"fixture:{key}"))
        shutil.copytree(src, dst / src.name)
        weights = load_file(str(dst / src.name / "model.safetensors"))
        weights = {k: v * factor if k.endswith("lm_head.weight") else v for k, v in weights.items()}
        save_file(weights, str(dst / src.name / "model.safetensors"), metadata={"format": "pt"})
        out[key] = str(dst / src.name)
    return out


def test_short_run_lowers_heldout_teacher_student_reverse_kl(tmp_path):
    models = _sharpened_fixtures(tmp_path / "models")
    out = tmp_path / "run"
    run_train(
        out,
        f"models.student={models['qwen2_audio']}",
        f"models.teacher={models['teacher']}",
        "optim.lr=3e-4",
        "schedule.steps=8",
        "checkpoint.every=0",
        "checkpoint.export_final=false",
        "logging.rollout_log=false",
        "eval.num_prompts=4",
        "eval.n=2",
    )
    evals = list(read_records(out / "eval.jsonl"))
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == 8
    print(f"held-out reverse KL: step 0 {first}, step 8 {last}")
    assert first["kl_text"] < 1e-5  # the student is the teacher on text
    assert first["kl_speech"] > 0.5
    assert last["kl_speech"] < 0.6 * first["kl_speech"]
    assert last["kl_mean"] < 0.6 * first["kl_mean"]


def test_gap_eval_hook_writes_xopd_eval_reports_and_leaves_training_alone(tmp_path):
    from evalsuite.reports import read_report

    common = [
        "schedule.steps=2",
        "schedule.batch_prompts=2",
        "rollout.max_new_tokens=6",
        "eval.num_prompts=2",
        "checkpoint.every=0",
        "checkpoint.export_final=false",
    ]
    gap = ["eval.gap_tasks=[sums]", "eval.gap_limit=2", "eval.gap_max_new_tokens=6"]
    run_train(tmp_path / "plain", *common)
    run_train(tmp_path / "gap", *common, *gap)
    # greedy decoding on the live weights: the training trajectory is exactly the one without the hook
    assert [m["loss"] for m in metrics(tmp_path / "plain")] == [m["loss"] for m in metrics(tmp_path / "gap")]
    evals = list(read_records(tmp_path / "gap" / "eval.jsonl"))
    assert [e["step"] for e in evals] == [0, 2]
    assert all({"gap_acc_text", "gap_acc_speech:clean", "gap_speech:clean"} <= e.keys() for e in evals)
    for step in (0, 2):
        folder = tmp_path / "gap" / "evals" / f"step-{step:06d}"
        report = read_report(folder / "report.json")
        modes = report["tasks"]["sums"]["modes"]
        assert report["kind"] == "gap" and report["config"]["step"] == step
        assert modes["text"]["n"] == 2 and modes["speech:clean"]["n"] == 2
        assert modes["text"]["errors"] == 0 and modes["speech:clean"]["errors"] == 0
        assert (folder / "samples.jsonl").is_file() and (folder / "gap.png").is_file()


@pytest.mark.parametrize(
    "overrides",
    [
        ["loss.kind=sft"],
        ["loss.kind=offline_kd"],
        ["loss.kind=gkd"],
        [
            "loss.kind=xopd",
            "models.student=fixture:qwen2_5_omni_thinker",
            "loss.reward=power",
            "loss.clip_eps=0.2",
        ],
        ["loss.kind=xopd", "models.finetune=lora", "models.lora_r=4", "checkpoint.export_final=true"],
    ],
    ids=["sft", "offline_kd", "gkd", "omni-power-clip", "lora"],
)
def test_baselines_and_variants_train(tmp_path, overrides):
    summary = run_train(
        tmp_path,
        "schedule.steps=1",
        "schedule.batch_prompts=2",
        "rollout.max_new_tokens=6",
        "eval.at_start=false",
        "eval.at_end=false",
        "checkpoint.export_final=false",
        *overrides,
    )
    (row,) = metrics(tmp_path)
    assert not row["skipped"] and row["grad_norm"] > 0
    assert torch.isfinite(torch.tensor([row["loss"], row["kl_text"], row["kl_speech"]])).all()
    recs = list(read_records(tmp_path / "rollouts.jsonl"))
    assert recs and {r["kind"] for r in recs} == {overrides[0].split("=")[1]} and summary["steps"] == 1
    if "models.finetune=lora" in overrides:
        from transformers import Qwen2AudioForConditionalGeneration

        model = Qwen2AudioForConditionalGeneration.from_pretrained(str(tmp_path / "final"))  # LoRA merged
        assert not any("lora" in n for n, _ in model.named_parameters())
    if "loss.kind=sft" in overrides:  # targets are the reference answers, e.g. "27" then <|im_end|>
        assert all(r["tokens"]["sampler_lp"] is None and r["finished"] for r in recs)


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tmp_path):
    args = [
        sys.executable,
        "-m",
        "xopd.cli",
        "--config",
        str(TINY),
        "schedule.steps=5",
        "schedule.batch_prompts=2",
        "checkpoint.every=2",
        "eval.at_start=false",
        "eval.at_end=false",
        "checkpoint.export_final=false",
        "logging.progress=false",
    ]
    env = os.environ.copy()
    ref, out = tmp_path / "uninterrupted", tmp_path / "killed"
    subprocess.run([*args, f"output_dir={ref}"], check=True, env=env, capture_output=True, timeout=600)

    proc = subprocess.Popen(
        [*args, f"output_dir={out}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 600
    logged: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        logged = (
            [r["step"] for r in read_records(out / "metrics.jsonl")]
            if (out / "metrics.jsonl").exists()
            else []
        )
        if logged and max(logged) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir() if not p.name.startswith("."))
    killed_at = {
        "metrics_steps": logged,
        "checkpoints": ckpts,
        "rollout_steps": sorted({r["step"] for r in read_records(out / "rollouts.jsonl")}),
    }
    assert max(logged) > int(ckpts[-1].split("-")[1]), killed_at  # steps past the checkpoint must be dropped

    resumed = subprocess.run(
        [*args, f"output_dir={out}"], env=env, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed at step {int(ckpts[-1].split('-')[1])}" in resumed.stderr

    want, got = metrics(ref), metrics(out)
    print("killed at:", killed_at)
    print("uninterrupted losses:", [r["loss"] for r in want])
    print("resumed losses:      ", [r["loss"] for r in got])
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in got] == [r["loss"] for r in want]  # exact: same weights, optimizer, RNG, data
    assert [r["kl_speech"] for r in got] == [r["kl_speech"] for r in want]
    recs = list(read_records(out / "rollouts.jsonl"))
    keys = [(r["step"], r["prompt_id"], r["modality"], r["sample"]) for r in recs]
    # 2 prompts x 2 rollouts x 2 modalities per step; none lost, none twice
    assert len(keys) == len(set(keys)) == 5 * 8
    assert sorted({r["step"] for r in recs}) == [1, 2, 3, 4, 5]
    ref_recs = list(read_records(ref / "rollouts.jsonl"))
    assert [r["tokens"]["id"] for r in recs] == [r["tokens"]["id"] for r in ref_recs]  # the very same samples


def test_steplog_truncation_falls_back_to_step_filter(tmp_path):
    log = StepLog(tmp_path / "m.jsonl")
    log.append([{"step": 1}, {"step": 1}])
    size1 = log.size()
    log.append([{"step": 2}])
    with open(log.path, "ab") as fh:
        fh.write(b'{"step": 3, "partial')  # a write cut by SIGKILL
    assert [r["step"] for r in log.records()] == [1, 1, 2]
    log.truncate_to(1, size1)
    assert [r["step"] for r in log.records()] == [1, 1]
    log.append([{"step": 2}, {"step": 3}])
    log.truncate_to(2, size1 + 3)  # an offset inside a record: drop by step instead
    assert [r["step"] for r in log.records()] == [1, 1, 2]


def test_data_pairs_and_stream_position(tmp_path):
    from xopd.data import DataError, PairStream, jsonl_pairs

    pairs = task_pairs("sums", split="train", limit=5)
    assert all(p.text.endswith("Answer with the number only.") and p.spoken and p.answer for p in pairs)
    audio, path = speech_audio(pairs[0], "clean")
    assert audio.ndim == 1 and Path(path).is_file()
    a = PairStream(pairs, seed=3, variants=["clean"])
    first = [d.pair.id for d in a.next_batch(7)]  # runs into the second epoch
    state = a.state_dict()
    rest = [d.pair.id for d in a.next_batch(6)]
    b = PairStream(pairs, seed=3, variants=["clean"])
    b.load_state_dict(state)
    assert [d.pair.id for d in b.next_batch(6)] == rest and sorted(first[:5]) == sorted(p.id for p in pairs)
    with pytest.raises(DataError, match="differ from those of the checkpoint"):
        PairStream(pairs[:4], seed=3).load_state_dict(state)
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "What is 2 plus 3?", "answer": "5"}\n{"text": ""}\n')
    with pytest.raises(DataError, match=r"d\.jsonl:2: 'text' must be a non-empty string"):
        jsonl_pairs(f)
    f.write_text('{"text": "What is 2 plus 3?", "audio": "missing.wav"}\n')
    with pytest.raises(DataError, match="missing.wav"):
        jsonl_pairs(f)


def test_resume_refuses_an_optimizer_state_of_another_layout(tmp_path):
    """Checkpoints from before the two AdamW groups (layers | the rest) held one group: resuming one is a
    ResumeError naming the checkpoint, not a crash inside torch. ``distributed.*`` may change on resume."""
    from xopd.trainer import ResumeError

    out = tmp_path / "run"
    common = ("eval.at_start=false", "eval.at_end=false", "checkpoint.export_final=false")
    run_train(out, "schedule.steps=1", *common)
    ckpt = out / "checkpoints" / "step-000001"
    state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2  # decoder layers, then embeddings / norm / head
    merged = {**groups[0], "params": [i for g in groups for i in g["params"]]}
    old = {**state, "optimizer": {**state["optimizer"], "param_groups": [merged]}}
    torch.save(old, ckpt / "trainer_state.pt")
    with pytest.raises(ResumeError, match=r"step-000001.*optimizer state does not fit"):
        # (a changed distributed.strategy alone is allowed: only the optimizer state is refused)
        run_train(out, "schedule.steps=2", *common, "distributed.strategy=fsdp")


def test_same_seed_same_run_with_a_cold_or_a_warm_cache(tmp_path, monkeypatch):
    """The first run on a fresh machine trains as every later run: with an empty $XOPD_HOME the fixtures
    are built and every prompt is spoken (espeak-ng and hibari) during the first run, from a warm cache
    nothing is built or synthesised -- the same losses and samples either way."""
    home = tmp_path / "home"
    monkeypatch.setenv("XOPD_HOME", str(home))
    common = (
        "data.tasks=[sums]",
        "data.variants=[clean,hibari]",
        "schedule.steps=2",
        "schedule.batch_prompts=2",
        "rollout.max_new_tokens=6",
        "eval.at_start=true",  # the held-out prompts are spoken (cold) before step 1 as well
        "eval.at_end=false",
        "eval.num_prompts=2",
        "checkpoint.export_final=false",
    )
    run_train(tmp_path / "cold", *common)
    rendered = sorted((home / "tts").rglob("*.wav"))
    assert rendered and (home / "fixtures" / "built").is_dir()  # it really started cold
    run_train(tmp_path / "warm", *common)
    assert sorted((home / "tts").rglob("*.wav")) == rendered  # nothing synthesised the second time
    cold, warm = metrics(tmp_path / "cold"), metrics(tmp_path / "warm")
    print("cold losses:", [r["loss"] for r in cold], "warm losses:", [r["loss"] for r in warm])
    assert [r["loss"] for r in cold] == [r["loss"] for r in warm]
    assert [r["kl_speech"] for r in cold] == [r["kl_speech"] for r in warm]
    ids = [
        [(r["modality"], r["variant"], r["tokens"]["id"]) for r in read_records(out / "rollouts.jsonl")]
        for out in (tmp_path / "cold", tmp_path / "warm")
    ]
    # the draws here speak hibari (seed 0); the held-out evaluation speaks data.variants[0], espeak-ng's clean
    assert ids[0] == ids[1] and "hibari" in {v for _, v, _ in ids[0]}


def test_keys_the_loss_kind_ignores_are_errors(tmp_path, capsys):
    import re

    import yaml

    # written in an override: each names the key and the kind that ignores it
    cases = [
        (["loss.kind=sft", "loss.reward=power"], "loss.reward", "sft"),
        (["loss.kind=gkd", "loss.power_alpha=2"], "loss.power_alpha", "gkd"),
        (["loss.kind=offline_kd", "loss.clip_eps=0.2"], "loss.clip_eps", "offline_kd"),
        (["loss.divergence=forward_kl"], "loss.divergence", "xopd"),
        (["loss.kind=sft", "loss.beta=0.5"], "loss.beta", "sft"),
        (["loss.topk=5"], "loss.topk", "xopd"),
        (["loss.kind=sft", "rollout.n=4"], "rollout.n", "sft"),
    ]
    for overrides, key, kind in cases:
        with pytest.raises(ConfigError, match=rf"{re.escape(key)} does nothing with loss\.kind={kind}\b"):
            load_config(TINY, overrides)

    def recipe(name: str, **sections) -> Path:
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"data": {"tasks": ["sums"]}, **sections}))
        return path

    # written in the YAML
    sft_n = r"sft\.yaml: config key rollout\.n does nothing with loss\.kind=sft\b"
    with pytest.raises(ConfigError, match=sft_n):
        load_config(recipe("sft", loss={"kind": "sft"}, rollout={"n": 2}))
    with pytest.raises(ConfigError, match=r"loss\.beta does nothing with loss\.kind=xopd"):
        load_config(recipe("xopd-beta", loss={"kind": "xopd", "beta": 0.5}))
    from xopd.config import ignored_recipe_keys

    # recipes that write only keys their kind reads load; defaults never count (rollout.n is 4 by default)
    gkd = load_config(recipe("gkd", loss={"kind": "gkd", "divergence": "jsd", "beta": 0.5}))
    assert gkd.loss.beta == 0.5 and gkd.rollout.n == 4 and gkd.loss.clip_eps is None
    sft = load_config(recipe("sft-ok", loss={"kind": "sft"}, rollout={"max_new_tokens": 8}))
    assert sft.loss.kind == "sft" and ignored_recipe_keys(sft) == []
    xopd = load_config(
        recipe("xopd", loss={"reward": "power", "power_alpha": 3.0, "clip_eps": 0.2}, rollout={"n": 8})
    )
    assert xopd.loss.power_alpha == 3.0 and xopd.rollout.n == 8
    for name in ("demo", "tiny", "qwen2_5_omni_7b", "qwen3_omni_30b"):
        assert ignored_recipe_keys(load_config(ROOT / "recipes" / f"{name}.yaml")) == []
    # a baseline one override away from an X-OPD recipe: the recipe's n is not read, and that is said
    assert ignored_recipe_keys(load_config(TINY, ["loss.kind=sft"])) == ["rollout.n"]
    # the CLI: one line naming the key and the kind, exit 2
    assert cli.main(["--config", str(TINY), "loss.beta=0.5", "--print-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "loss.beta" in err and "loss.kind=xopd" in err, err


@pytest.mark.parametrize("temperature,top_p", [(0.7, 0.9), (0.7, 1.0), (1.0, 0.9), (1.0, 1.0)])
def test_importance_ratio_is_one_on_policy_at_any_temperature_and_top_p(tmp_path, temperature, top_p):
    """pi_theta is scored on the sampler's own processed distribution (temperature, top-p, banned audio ids),
    so on the first step, before any update, the ratio is 1 on every token; metrics.jsonl says so per modality.
    (Scoring pi_theta at T = 1 on the full vocabulary, as before, gave ratios far from 1 at T = 0.7.)"""
    run_train(tmp_path, "schedule.steps=1", "eval.at_start=false", "eval.at_end=false", "checkpoint.every=0",
              "checkpoint.export_final=false", f"rollout.temperature={temperature}", f"rollout.top_p={top_p}",
              "loss.clip_eps=0.2")
    (m,) = metrics(tmp_path)
    for modality in ("text", "speech"):
        assert abs(m[f"ratio_min_{modality}"] - 1) < 1e-5 and abs(m[f"ratio_max_{modality}"] - 1) < 1e-5, m
        assert abs(m[f"ratio_mean_{modality}"] - 1) < 1e-5 and m[f"clip_frac_{modality}"] == 0.0


# ------------------------------------------------------------------------------------------------------------
# the baselines as published: offline KD on a fixed, cached teacher set; GKD's on-policy / fixed-data mix
# ------------------------------------------------------------------------------------------------------------

BASELINE_RUN = (
    "schedule.steps=2",
    "eval.at_start=false",
    "eval.at_end=false",
    "checkpoint.every=0",
    "checkpoint.export_final=false",
)


def _kd_cache_file(root: Path) -> Path:
    (folder,) = [d for d in root.iterdir() if d.is_dir()]  # one teacher x decoding: one key
    return folder / "samples.jsonl"


def _kd_records(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines()]


def _lam_combines_the_modalities(rows: list[dict]) -> None:
    for r in rows:  # every kind: loss = lam * L_text + (1 - lam) * L_speech, lam = 0.5 here
        assert r["loss"] == pytest.approx(0.5 * r["loss_text"] + 0.5 * r["loss_speech"], rel=1e-6, abs=1e-9)


def test_offline_kd_trains_on_the_cached_teacher_answers_byte_for_byte(tmp_path):
    out, cache = tmp_path / "run", tmp_path / "kd-cache"
    run_train(out, "loss.kind=offline_kd", f"loss.kd_cache_dir={cache}", *BASELINE_RUN)
    records = _kd_records(_kd_cache_file(cache))
    assert len(records) == 16 and len({r["prompt"] for r in records}) == 16  # every train prompt, once
    assert all(len(r["completions"]) == 2 for r in records)  # rollout.n answers each
    answers = {r["id"]: r["completions"] for r in records}
    logged = list(read_records(out / "rollouts.jsonl"))
    # 2 steps x 4 prompts x 2 answers x 2 modalities: the student reads/hears the question, the target is fixed
    assert len(logged) == 32 and {r["step"] for r in logged} == {1, 2}
    for r in logged:
        assert r["tokens"]["id"] == answers[r["prompt_id"]][r["sample"]], r["prompt_id"]
        assert r["tokens"]["sampler_lp"] is None
    rows = metrics(out)
    assert all(m["sampled_tokens"] == 0 for m in rows)  # nothing is sampled while training
    _lam_combines_the_modalities(rows)


def test_offline_kd_reuses_its_cache_for_another_seed_and_learning_rate(tmp_path, capsys):
    import json

    data = tmp_path / "pairs.jsonl"  # the same prompts whatever the seed (a task's limit draws by seed)
    data.write_text(
        "".join(
            json.dumps({"id": p.id, "text": p.text, "spoken": p.spoken, "answer": p.answer}) + "\n"
            for p in task_pairs("sums", split="train", limit=6)
        )
    )
    cache = tmp_path / "kd-cache"
    common = ("loss.kind=offline_kd", f"loss.kd_cache_dir={cache}", "data.tasks=[]", f"data.jsonl={data}")
    run_train(tmp_path / "a", *common, *BASELINE_RUN)
    assert "generating the teacher's answers for 6 of 6 prompts x 2" in capsys.readouterr().err
    path = _kd_cache_file(cache)
    before = path.stat()
    run_train(tmp_path / "b", *common, *BASELINE_RUN, "seed=1", "optim.lr=1e-4")
    err = capsys.readouterr().err
    assert "reusing the teacher's answers" in err and "generating" not in err
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    answers = {r["id"]: r["completions"] for r in _kd_records(path)}
    for r in read_records(tmp_path / "b" / "rollouts.jsonl"):
        assert r["tokens"]["id"] == answers[r["prompt_id"]][r["sample"]]


def test_offline_kd_resumes_a_cache_cut_by_a_kill(tmp_path, capsys):
    full = tmp_path / "full"
    one_step = (*BASELINE_RUN, "schedule.steps=1")
    run_train(tmp_path / "a", "loss.kind=offline_kd", f"loss.kd_cache_dir={full}", *one_step)
    whole = _kd_cache_file(full)
    # a generation killed after 5 records, in the middle of writing the 6th
    partial = tmp_path / "partial" / whole.parent.name
    partial.mkdir(parents=True)
    shutil.copy(whole.parent / "meta.json", partial / "meta.json")
    lines = whole.read_bytes().splitlines(keepends=True)
    (partial / "samples.jsonl").write_bytes(b"".join(lines[:5]) + lines[5][:40])
    capsys.readouterr()
    run_train(tmp_path / "b", "loss.kind=offline_kd", f"loss.kd_cache_dir={partial.parent}", *one_step)
    err = capsys.readouterr().err
    assert "answers for 11 of 16 prompts x 2" in err and "resuming: 5 already there" in err
    resumed = _kd_records(partial / "samples.jsonl")
    assert len(resumed) == 16 and len({r["prompt"] for r in resumed}) == 16  # complete, no duplicates
    # each prompt's answers come from its own seed: the resumed file is the uninterrupted one, byte for byte
    assert (partial / "samples.jsonl").read_bytes() == whole.read_bytes()


def test_gkd_student_fraction_0_trains_on_gold_answers_and_1_on_student_samples(tmp_path):
    from xopd.objectives import gkd_on_policy

    gold = {p.id: p.answer for p in task_pairs("sums", split="train", limit=16)}
    for fraction in (0, 1):
        run_train(tmp_path / f"f{fraction}", "loss.kind=gkd", f"loss.gkd_student_fraction={fraction}",
                  *BASELINE_RUN, "schedule.steps=1")  # fmt: skip
    fixed, own = (list(read_records(tmp_path / f / "rollouts.jsonl")) for f in ("f0", "f1"))
    assert len(fixed) == len(own) == 16  # 4 prompts x n = 2 rows x 2 modalities: gold weighs as n samples
    for r in fixed:  # the reference answer then the student's end of turn, not sampled
        assert r["completion"] == f"{gold[r['prompt_id']]}<|im_end|>" and r["tokens"]["sampler_lp"] is None
    assert all(r["tokens"]["sampler_lp"] is not None for r in own)
    assert any(r["completion"] != f"{gold[r['prompt_id']]}<|im_end|>" for r in own)
    (m0,), (m1,) = metrics(tmp_path / "f0"), metrics(tmp_path / "f1")
    assert m0["sampled_tokens"] == 0 and m1["sampled_tokens"] > 0
    _lam_combines_the_modalities([m0, m1])
    # the per-prompt draw: seeded by (seed, step, prompt index), the same every call, the fraction on average
    cfg = tiny_cfg(tmp_path / "x", "loss.kind=gkd", "loss.gkd_student_fraction=0.3")
    draws = [gkd_on_policy(cfg, step, i) for step in range(1, 201) for i in range(8)]
    assert draws == [gkd_on_policy(cfg, step, i) for step in range(1, 201) for i in range(8)]
    assert 0.25 < sum(draws) / len(draws) < 0.35
    # the keys belong to their kind
    with pytest.raises(ConfigError, match=r"loss\.gkd_student_fraction does nothing with loss\.kind=xopd"):
        load_config(TINY, ["loss.gkd_student_fraction=0.5"])
    with pytest.raises(ConfigError, match=r"loss\.kd_samples_per_prompt does nothing with loss\.kind=gkd"):
        load_config(TINY, ["loss.kind=gkd", "loss.kd_samples_per_prompt=2"])
    with pytest.raises(ConfigError, match=r"loss\.gkd_student_fraction must be in \[0, 1\]"):
        load_config(TINY, ["loss.kind=gkd", "loss.gkd_student_fraction=1.5"])


def _full_logits(model, prompt, completion: list[int], vocab: int) -> torch.Tensor:
    """Textbook: one unpadded sequence, the logits at t - 1 predict completion token t -> [T, V]."""
    ids = torch.tensor([prompt.ids + completion])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **prompt.features).logits[0]
    p = len(prompt.ids)
    return logits[p - 1 : p - 1 + len(completion), :vocab].double()


def test_gkd_loss_at_beta_0_is_the_forward_kl_computed_by_hand(tmp_path):
    from xopd.batches import make_batch
    from xopd.objectives import gkd_on_policy, micro_batch_loss
    from xopd.trainer import setup

    # confident heads (teacher x10, student x20): the KL is far from 0 on text as well as on speech
    teacher = _sharpened_fixtures(tmp_path / "t", 10.0)["teacher"]
    student = _sharpened_fixtures(tmp_path / "s", 20.0)["qwen2_audio"]
    cfg = tiny_cfg(tmp_path / "run", "loss.kind=gkd", "loss.beta=0", f"models.teacher={teacher}",
                   f"models.student={student}", *BASELINE_RUN, "schedule.batch_prompts=2")  # fmt: skip
    run = setup(cfg)
    step = next(k for k in range(1, 50) if gkd_on_policy(cfg, k, 0) != gkd_on_policy(cfg, k, 1))
    batch = make_batch(run, run.stream.next_batch(2), step)  # one prompt sampled, one on its gold answer
    for m in ("text", "speech"):
        part = batch.parts[m]
        seqs = part.seqs
        assert sorted(part.student_rows) == [False, False, True, True]
        totals = {"sequences": len(seqs), "tokens": int(seqs.mask.sum())}
        loss = float(micro_batch_loss(run, part, list(range(len(seqs))), totals)[0].detach())
        per_sequence = []
        for r, i in enumerate(seqs.prompt_index.tolist()):
            completion = seqs.ids[r, : int(seqs.mask[r].sum())].tolist()
            s = _full_logits(run.student.core, part.student_prompts[i], completion, run.vocab_size)
            t = _full_logits(run.teacher.core, part.teacher_prompts[i], completion, run.vocab_size)
            ones = torch.ones(1, len(completion), dtype=torch.bool)
            fkl = losses.forward_kl(s[None], t[None], ones)[0]
            lp_s, lp_t = s.log_softmax(-1), t.log_softmax(-1)  # and the definition itself
            torch.testing.assert_close(fkl, (lp_t.exp() * (lp_t - lp_s)).sum(-1), rtol=0, atol=1e-12)
            per_sequence.append(float(fkl.mean()))
        by_hand = sum(per_sequence) / len(per_sequence)  # loss.normalize=sequence
        print(f"gkd beta=0 {m}: micro_batch_loss {loss:.8f}, forward KL by hand {by_hand:.8f}, per sequence "
              f"{[round(x, 6) for x in per_sequence]}")  # fmt: skip
        assert loss == pytest.approx(by_hand, rel=1e-5) and by_hand > 0.05
