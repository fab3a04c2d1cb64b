"""One prompt format: what the trainer trains on is what xopd-eval asks (xopd.prompting).

For every model family -- the zoo's assembled ``xopd-speech-smollm2`` (Qwen2-Audio layout), a Qwen2-Audio
(``fixture:qwen2_audio``), a Qwen2.5-Omni thinker (``fixture:qwen2_5_omni_thinker``) and a causal teacher
(``fixture:teacher``) -- the ids of the training prompt (``xopd.data.student_prompts`` on
``xopd.data.task_pairs``, the teacher's ``text_prompt``) equal the ids the hf eval backend feeds the model for
the same task item (``evalsuite.run.prepare`` -> ``HFBackend.render`` -> ``HFBackend.model_inputs``), in text
and speech mode, with and without a system prompt. The trainer's gap-eval hook asks with
``data.system_prompt``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from evalsuite.run import SPEECH, TEXT, prepare
from evalsuite.speech import parse_variants
from evalsuite.tasks import load_task
from xopd import prompting
from xopd.data import student_prompts, task_pairs
from xopd.models import load_adapter

ROOT = Path(__file__).resolve().parents[1]
TASK, LIMIT = "sums", 2
SYSTEM = "You are a careful calculator."
SYSTEMS = [None, SYSTEM]
VARIANT = "clean"

# family -> model name; the Omni thinker fixture has no processor (it needs torchvision), which the hf backend
# refuses (tests/test_backends.py::test_kinds), so its eval side is the renderer the backends call
FAMILIES = {
    "assembled": "xopd-speech-smollm2",
    "qwen2_audio": "fixture:qwen2_audio",
    "qwen2_5_omni_thinker": "fixture:qwen2_5_omni_thinker",
    "causal": "fixture:teacher",
}


@pytest.fixture(scope="module")
def task():
    return load_task(TASK, split="test", limit=LIMIT)


@pytest.fixture(scope="module")
def pairs(task):
    out = task_pairs(TASK, split="test", limit=LIMIT)
    assert [p.id for p in out] == [i.id for i in task.items]  # the same items on both sides
    return out


@pytest.fixture(scope="module", params=list(FAMILIES))
def family(request):
    name = FAMILIES[request.param]
    adapter = load_adapter(name, device="cpu")
    backend = None
    if request.param != "qwen2_5_omni_thinker":
        from evalsuite.backends.hf import HFBackend

        backend = HFBackend(name, device="cpu")  # tokenizer / processor only; weights load on generate
    return request.param, adapter, backend


def eval_inputs(adapter, backend, messages) -> dict:
    """What the hf eval backend feeds the model for one request (for the Omni thinker: the same renderer and
    expansion, with the tokenizer and feature extractor it ships)."""
    if backend is not None:
        return backend.model_inputs([backend.render(messages)])
    r = prompting.render(
        adapter.tokenizer, messages, processor=adapter.processor, placeholder=adapter.family.audio_placeholder
    )
    audios = prompting.audios_in(messages)
    if not audios:
        return adapter.tokenizer([r.text], add_special_tokens=False, return_tensors="pt")
    return prompting.speech_inputs(
        adapter.processor,
        [r.text],
        audios,
        tokenizer=adapter.tokenizer,
        feature_extractor=adapter.feature_extractor,
    )


@pytest.mark.parametrize("system", SYSTEMS, ids=["no-system", "system"])
def test_training_prompt_ids_are_the_evaluation_prompt_ids(family, task, pairs, system):
    kind, adapter, backend = family
    modes = (TEXT, SPEECH) if adapter.is_speech else (TEXT,)
    requests = prepare(task, task.items, modes, parse_variants([VARIANT]), system)
    assert all(r.request is not None for r in requests), [r.sample.error for r in requests]
    system_ids = adapter.tokenizer(SYSTEM, add_special_tokens=False)["input_ids"]
    for mode in modes:
        trained, _ = student_prompts(adapter, pairs, mode, [VARIANT] * len(pairs), system)
        asked = [r for r in requests if r.sample.mode == mode]
        assert [r.item.id for r in asked] == [p.id for p in pairs]
        for pair, prompt, req in zip(pairs, trained, asked, strict=True):
            inputs = eval_inputs(adapter, backend, req.request.messages)
            assert inputs["input_ids"].shape[0] == 1 and bool(inputs["attention_mask"].all())
            assert inputs["input_ids"][0].tolist() == prompt.ids, f"{kind} {mode} {req.item.id}"
            if mode == SPEECH:
                audio_id = adapter.tokenizer.convert_tokens_to_ids("<|AUDIO|>")
                assert prompt.ids.count(audio_id) > 10  # placeholders expanded, one per audio embedding
                for key, value in prompt.features.items():
                    torch.testing.assert_close(inputs[key], value, rtol=0, atol=0)
            else:
                assert task.instruction in prompt.text  # the typed prompt carries the instruction
            if system is None:
                assert SYSTEM not in prompt.text
            else:
                assert prompt.text.count(SYSTEM) == 1
                n = len(system_ids)
                assert any(prompt.ids[i : i + n] == system_ids for i in range(len(prompt.ids) - n + 1))
            # the adapter's own entry points (the trainer's teacher prompts, heldout KL) give the same ids
            own = (
                adapter.text_prompt(pair.text, system)
                if mode == TEXT
                else adapter.speech_prompt(prompt.audio, pair.instruction, system)
            )
            assert own.ids == prompt.ids


def test_messages_for_text_and_speech():
    audio = torch.zeros(8).numpy()
    assert prompting.messages_for("Q?\nAnswer.", modality=TEXT, instruction="Answer.") == [
        {"role": "user", "content": "Q?\nAnswer."}
    ]
    msgs = prompting.messages_for(
        "spoken", modality=SPEECH, audio=audio, instruction="Answer.", system_prompt="S"
    )
    assert msgs[0] == {"role": "system", "content": "S"}
    assert msgs[1]["role"] == "user" and [p["type"] for p in msgs[1]["content"]] == ["audio", "text"]
    assert msgs[1]["content"][0]["audio"] is audio and msgs[1]["content"][1]["text"] == "Answer."
    assert prompting.messages_for(None, modality=SPEECH)[0]["content"] == [{"type": "audio"}]
    with pytest.raises(prompting.PromptFormatError, match="modality"):
        prompting.messages_for("x", modality="video")


def test_gap_eval_hook_asks_with_the_training_system_prompt(tmp_path, monkeypatch):
    from evalsuite.backends.hf import HFBackend
    from xopd.config import load_config
    from xopd.evalhook import GapEvalHook

    cfg = load_config(
        ROOT / "recipes" / "tiny.yaml",
        [
            f"output_dir={tmp_path}",
            "logging.progress=false",
            f"data.system_prompt={SYSTEM}",
            f"eval.gap_tasks=[{TASK}]",
            "eval.gap_limit=2",
            "eval.gap_max_new_tokens=2",
        ],
    )
    assert cfg.data.system_prompt == SYSTEM
    student = load_adapter(cfg.models.student, device="cpu")
    seen: list[list[int]] = []
    original = HFBackend.model_inputs

    def spy(self, prompts):
        inputs = original(self, prompts)
        for row, mask in zip(inputs["input_ids"], inputs["attention_mask"], strict=True):
            seen.append(row[mask.bool()].tolist())
        return inputs

    monkeypatch.setattr(HFBackend, "model_inputs", spy)
    out = GapEvalHook(cfg, tmp_path)(0, student)
    assert {"gap_acc_text", "gap_acc_speech:clean"} <= out.keys()

    # the hook asks the validation split: exactly the prompts the trainer builds for those items
    pairs = task_pairs(TASK, split="validation", limit=2, seed=cfg.seed)
    want = []
    for mode in (TEXT, SPEECH):
        prompts, _ = student_prompts(student, pairs, mode, [VARIANT] * len(pairs), cfg.data.system_prompt)
        want += [p.ids for p in prompts]
    assert sorted(seen) == sorted(want) and len(seen) == 4
    system_ids = student.tokenizer(SYSTEM, add_special_tokens=False)["input_ids"]
    n = len(system_ids)
    for ids in seen:
        assert any(ids[i : i + n] == system_ids for i in range(len(ids) - n + 1))
