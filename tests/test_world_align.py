"""The demo student's alignment (xopd.world.align) and its disk cache of encoder outputs
(xopd.world.encoder_cache), on the tiny random Qwen2-Audio fixture. Training and validation clips are real flite
speech (fast, cached by content hash); the cache's own tests use synthetic arrays of exact lengths."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from xopd.world import align
from xopd.world.encoder_cache import EncoderCache, audio_key

FIXTURE = "fixture:qwen2_audio"


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def student():
    return align.build_student(FIXTURE)


def _clip(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.1 * rng.standard_normal(int(round(16_000 * seconds)))).astype(np.float32)


def _speech_prompt(adapter, audio):
    """The model's own inputs for the repeat prompt: rendered and expanded by its processor."""
    msgs = [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                         {"type": "text", "text": align.REPEAT_PROMPT}]}]
    return adapter.prompt(msgs)


# --------------------------------------------------------------------------------------------- encoder cache


@pytest.mark.parametrize("seconds", [0.37, 1.0, 2.77, 31.0])
def test_cache_keeps_the_real_frames_the_processor_counts(student, tmp_path, seconds):
    audio = _clip(seconds)
    cache = EncoderCache(student.core.model.audio_tower, student.feature_extractor, root=tmp_path)
    states = cache.get(audio)
    n_placeholders = sum(t == student.core.config.audio_token_id for t in _speech_prompt(student, audio).ids)
    n_mel = min(int(np.ceil(audio.size / 160)), 3000)  # the Whisper feature extractor's mask; 30 s at most
    assert states.shape == (n_placeholders, student.core.config.audio_config.d_model)
    assert states.shape[0] == ((n_mel - 1) // 2 + 1 - 2) // 2 + 1 == cache.expected_frames(audio)
    assert states.dtype == torch.float32


def test_cache_round_trip_layout_and_resume(student, tmp_path):
    clips = [_clip(1.3, seed=1), _clip(0.8, seed=2)]
    cache = EncoderCache(student.core.model.audio_tower, student.feature_extractor, root=tmp_path)
    assert cache.fill(clips, progress=False) == {"encoded": 2, "skipped": 0}
    key = hashlib.sha256(clips[0].tobytes()).hexdigest()
    path = tmp_path / cache.fingerprint / key[:2] / f"{key}.npy"
    assert key == audio_key(clips[0]) and path.is_file()
    assert np.load(path).dtype == np.float16
    assert not list(tmp_path.rglob(".*"))  # no temporary files left behind
    exact = cache.encode(clips)
    for clip, ref in zip(clips, exact):
        got = cache.get(clip)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=2e-3, atol=2e-3)  # float16 on disk
        assert torch.equal(got, ref.half().float())
    assert cache.hits == 2 and cache.misses == 0
    # resumable: a second fill skips everything; a new clip is the only one encoded
    assert cache.fill(clips + [_clip(0.5, seed=3)], progress=False) == {"encoded": 1, "skipped": 2}
    # float32 storage is exact
    exact32 = EncoderCache(student.core.model.audio_tower, student.feature_extractor, root=tmp_path / "f32",
                           dtype="float32")
    assert torch.equal(exact32.get(clips[0]), exact[0])


def test_fingerprint_follows_the_encoder_weights(student, tmp_path):
    tower = student.core.model.audio_tower
    a = EncoderCache(tower, student.feature_extractor, root=tmp_path).fingerprint
    assert a == EncoderCache(tower, student.feature_extractor, root=tmp_path).fingerprint
    w = tower.layers[0].fc1.weight
    with torch.no_grad():
        w[0, 0] += 1.0
        try:
            assert EncoderCache(tower, student.feature_extractor, root=tmp_path).fingerprint != a
        finally:
            w[0, 0] -= 1.0


# --------------------------------------------------------------------------------------------- forward


def test_cached_states_forward_equals_the_models_own_forward(student, tmp_path):
    core = student.core
    audio = _clip(2.77)
    p = _speech_prompt(student, audio)
    prompt = align.AudioPrompt(student)
    cache = EncoderCache(core.model.audio_tower, student.feature_extractor, root=tmp_path)
    states = cache.encode([audio])
    assert prompt.ids(states[0].shape[0]) == p.ids  # our expansion of <|AUDIO|> is the processor's
    ids = torch.tensor([p.ids])
    ones = torch.ones_like(ids)
    with torch.no_grad():
        own = core(input_ids=ids, attention_mask=ones, **p.features).logits
        ours = core.lm_head(align.lm_hidden(core, ids, ones, states))
        from_disk = core.lm_head(align.lm_hidden(core, ids, ones, [cache.get(audio)]))
    assert (own - ours).abs().max().item() < 1e-4
    assert (own - from_disk).abs().max().item() < 2e-2  # float16-rounded encoder states


def test_left_padded_greedy_decoding_matches_the_models_own_generate(student, tmp_path):
    core = student.core
    audios = [_clip(2.0, seed=4), _clip(0.9, seed=5)]
    prompt = align.AudioPrompt(student)
    cache = EncoderCache(core.model.audio_tower, student.feature_extractor, root=tmp_path)
    states = cache.encode(audios)
    kw = dict(max_new_tokens=6, do_sample=False, eos_token_id=student.eos_ids, pad_token_id=student.pad_id,
              output_scores=True, return_dict_in_generate=True)
    width = max(len(prompt.ids(s.shape[0])) for s in states)
    ids = torch.full((2, width), student.pad_id)
    mask = torch.zeros((2, width), dtype=torch.long)
    for i, s in enumerate(states):
        row = prompt.ids(s.shape[0])
        ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
    with torch.no_grad():
        embeds = align.embed_with_audio(core, ids, states)
        batched = core.generate(inputs_embeds=embeds, attention_mask=mask, **kw)
        for i, audio in enumerate(audios):
            p = _speech_prompt(student, audio)
            own = core.generate(input_ids=torch.tensor([p.ids]),
                                attention_mask=torch.ones(1, len(p.ids)), **p.features, **kw)
            for a, b in zip(batched.scores, own.scores):
                assert (a[i] - b[0]).abs().max().item() < 1e-4
    assert align.greedy(core, student, prompt, states, 6) == [
        align.greedy(core, student, prompt, [s], 6)[0] for s in states
    ]


def test_merged_llm_adapter_replaces_the_students_llm(tmp_path):
    from peft import LoraConfig, get_peft_model

    from xopd.loading import load_text_lm
    from xopd.models import resolve_model_name

    teacher, _ = load_text_lm(resolve_model_name("fixture:teacher"))
    torch.manual_seed(0)
    lora = get_peft_model(teacher, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    lora.save_pretrained(str(tmp_path / "adapter"))
    merged = lora.merge_and_unload()

    plain = align.build_student(FIXTURE)
    student = align.build_student(FIXTURE, "fixture:teacher", str(tmp_path / "adapter"))
    ids = torch.tensor([student.text_prompt("How many legs does a cat have?").ids])
    with torch.no_grad():
        ref = merged(input_ids=ids).logits
        got = student.core(input_ids=ids).logits[..., : ref.shape[-1]]
        before = plain.core(input_ids=ids).logits[..., : ref.shape[-1]]
    assert (got - ref).abs().max().item() < 1e-4
    assert (before - ref).abs().max().item() > 1e-3  # the adapter did change the LLM
    for name in ("model.audio_tower.layers.0.fc1.weight", "model.multi_modal_projector.linear.weight"):
        mine, base = dict(student.core.named_parameters()), dict(plain.core.named_parameters())
        assert torch.equal(mine[name], base[name])


# --------------------------------------------------------------------------------------------- training


TEXTS = {
    "sums": ["What is six plus four?", "What is nine minus two plus one?", "What is three plus three?"],
    "counting": ["I have two pigs and a goat. How many animals do I have?", "I have a lemon and an onion."],
}
VAL_LIMIT = 1  # validation items per task: real ones, asked with their task's instruction


@pytest.fixture
def offline_data(monkeypatch):
    """A handful of fixed questions instead of the whole train split (the clips are still rendered by flite)."""
    monkeypatch.setattr(align, "train_texts", lambda tasks, parts, n, seed: {t: TEXTS[t] for t in tasks})
    monkeypatch.setattr(align, "eval_items", lambda tasks, limit, seed: real_eval_items(tasks, VAL_LIMIT, seed))


real_eval_items = align.eval_items


def _args(tmp_path, out, *extra):
    return align.parse_args([
        "--out", str(out), "--base", FIXTURE, "--tasks", "sums,counting", "--voices", "flite-slt,flite-rms",
        "--eval-voices", "flite-slt,flite-kal", "--batch-size", "3", "--lr", "1e-2", "--warmup", "1",
        "--eval-every", "0", "--log-every", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress",
        "--no-export", *(() if "--respond-from" in extra else ("--respond-from", "none")), *extra,
    ])


def test_three_steps_train_the_projector_only(tmp_path, offline_data):
    before = {n: p.detach().clone() for n, p in align.build_student(FIXTURE).core.named_parameters()}
    result = align.train(_args(tmp_path, tmp_path / "run", "--max-steps", "3"))
    core = result["adapter"].core
    assert sorted(result["losses"]) == [1, 2, 3]
    assert all(np.isfinite(v) for v in result["losses"].values())
    changed = []
    for name, p in core.named_parameters():
        if name.startswith("model.multi_modal_projector."):
            changed.append(name)
            assert not torch.equal(p, before[name]), name
        else:
            assert torch.equal(p, before[name]), name  # LLM and encoder: bit-identical
            assert p.grad is None and not p.requires_grad, name
    assert changed == ["model.multi_modal_projector.linear.weight", "model.multi_modal_projector.linear.bias"]
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run" / "step-000003" / "trainable.safetensors"))
    assert sorted(saved) == sorted(changed)


def test_resume_after_step_two_gives_the_uninterrupted_step_three(tmp_path, offline_data):
    whole = align.train(_args(tmp_path, tmp_path / "whole", "--max-steps", "3"))["losses"]
    first = align.train(_args(tmp_path, tmp_path / "pieces", "--max-steps", "2"))["losses"]
    second = align.train(_args(tmp_path, tmp_path / "pieces", "--max-steps", "3"))["losses"]
    assert first == {1: whole[1], 2: whole[2]}
    assert second == {3: whole[3]}  # exactly: same data, voices, optimizer state and weights


def test_bf16_autocast_is_a_speed_knob_a_run_may_switch_between_resumes(tmp_path, offline_data):
    plain = align.train(_args(tmp_path, tmp_path / "fp32", "--max-steps", "2"))["losses"]
    fast = align.train(_args(tmp_path, tmp_path / "bf16", "--max-steps", "1", "--autocast", "bf16"))
    assert fast["losses"][1] != plain[1]  # bf16 matmuls ran
    assert fast["losses"][1] == pytest.approx(plain[1], rel=0.02)
    assert all(p.dtype == torch.float32 for p in fast["adapter"].core.parameters())  # weights stay float32
    resumed = align.train(_args(tmp_path, tmp_path / "bf16", "--max-steps", "2"))["losses"]
    assert sorted(resumed) == [2] and resumed[2] == pytest.approx(plain[2], rel=0.05)


def test_resume_refuses_other_settings(tmp_path, offline_data):
    align.train(_args(tmp_path, tmp_path / "run", "--max-steps", "1"))
    with pytest.raises(SystemExit, match="other settings"):
        align.train(_args(tmp_path, tmp_path / "run", "--max-steps", "2", "--lr", "5e-3"))


def test_held_out_voice_is_refused_for_training(tmp_path, offline_data):
    with pytest.raises(SystemExit, match="held out"):
        align.train(align.parse_args(["--out", str(tmp_path), "--base", FIXTURE,
                                      "--voices", "hibari,flite-kal"]))


def test_eval_writes_repeat_wer_per_voice_and_export_loads(tmp_path, offline_data):
    import json

    from xopd.models import load_adapter

    args = _args(tmp_path, tmp_path / "run", "--max-steps", "2", "--eval-every", "2",
                 "--eval-max-new-tokens", "4")
    args.no_export = False
    core = align.train(args)["adapter"].core
    lines = [json.loads(x) for x in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 2]
    for line in lines:
        assert set(line["wer"]) == {"flite-slt", "flite-kal"} and all(w >= 0 for w in line["wer"].values())
        assert all(np.isfinite(v) for v in line["loss"].values())
        for key in ("task_acc", "restates"):  # the questions asked as evaluation asks them
            assert set(line[key]) == {"flite-slt", "flite-kal"} and all(0 <= v <= 1 for v in line[key].values())
        assert set(line["task_acc_by_task"]["flite-kal"]) == {"sums", "counting"}
    exported = load_adapter(str(tmp_path / "run" / "student"), device="cpu").core
    mine = dict(core.named_parameters())
    for name, p in exported.named_parameters():
        assert torch.equal(p, mine[name]), name


def test_encoder_lora_trains_lora_and_projector_and_exports_merged(tmp_path, offline_data):
    before = {n: p.detach().clone() for n, p in align.build_student(FIXTURE).core.named_parameters()}
    args = _args(tmp_path, tmp_path / "run", "--max-steps", "2", "--encoder-lora", "2", "--lr", "5e-2")
    args.no_export = False
    result = align.train(args)
    core = result["adapter"].core
    trained = [n for n, p in core.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trained) and "model.multi_modal_projector.linear.weight" in trained
    for name, p in core.named_parameters():
        base = name.replace(".base_layer.", ".")
        if "lora_" not in name and not name.startswith("model.multi_modal_projector."):
            assert torch.equal(p, before[base]), name  # frozen encoder base weights and LLM
    from xopd.models import load_adapter

    exported = load_adapter(str(tmp_path / "run" / "student"), device="cpu")
    audio = _clip(1.5)
    p = _speech_prompt(exported, audio)
    with torch.no_grad():
        merged = exported.core(input_ids=torch.tensor([p.ids]), **p.features).logits
        live = core(input_ids=torch.tensor([p.ids]), **p.features).logits
    assert (merged - live).abs().max().item() < 1e-4


def test_encoder_lora_run_starts_from_a_projector_only_run(tmp_path, offline_data):
    """--init-trainable: the projector of an earlier projector-only run seeds a projector + encoder LoRA run."""
    align.train(_args(tmp_path, tmp_path / "proj", "--max-steps", "2"))
    init = tmp_path / "proj" / "step-000002" / "trainable.safetensors"
    from safetensors.torch import load_file

    args = _args(tmp_path, tmp_path / "lora", "--max-steps", "1", "--encoder-lora", "2", "--lr", "0",
                 "--init-trainable", str(init))
    core = align.train(args)["adapter"].core
    params = dict(core.named_parameters())
    for name, w in load_file(str(init)).items():
        assert torch.equal(params[name], w), name  # lr 0: still the loaded projector
    with pytest.raises(SystemExit, match="do not fit"):  # a LoRA run's tensors cannot seed a projector-only run
        bad = tmp_path / "lora" / "step-000001" / "trainable.safetensors"
        align.train(_args(tmp_path, tmp_path / "bad", "--max-steps", "1", "--init-trainable", str(bad)))


def test_train_texts_are_train_split_questions_as_spoken():
    from evalsuite.tasks import load_task
    from xopd.world.parts import items_of_part

    texts = align.train_texts(["sums"], ["distill"], 5, seed=0)["sums"]
    task = load_task("sums", split="train")
    spoken = {task.render_spoken(it) for it in items_of_part(task, "distill")}
    assert len(texts) == 5 and set(texts) <= spoken


def test_prefill_encodes_exactly_what_training_and_validation_read(tmp_path, offline_data):
    args = _args(tmp_path, tmp_path / "run", "--max-steps", "3", "--eval-every", "3",
                 "--eval-max-new-tokens", "2", "--prefill-only")
    assert align.train(args)["step"] == 0
    n_files = len(list((tmp_path / "cache").rglob("*.npy")))
    args.prefill_only = False
    cache = align.train(args)["cache"]
    n_val = 2 * VAL_LIMIT
    # 3 steps x 3 clips + 2 evals x 2 voices x each clip once (the task check and repeat-WER share the read)
    assert cache.misses == 0 and cache.hits == 3 * 3 + 2 * 2 * n_val
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == n_files


def test_a_run_saved_before_objectives_existed_resumes_as_transcribe_only(tmp_path, offline_data):
    out = tmp_path / "run"
    align.train(_args(tmp_path, out, "--max-steps", "1", "--objectives", "transcribe"))
    state = torch.load(out / "state.pt", weights_only=True)
    del state["config"]["objectives"]  # what the v2 run's state.pt holds
    torch.save(state, out / "state.pt")
    with pytest.raises(SystemExit, match="objectives"):
        align.train(_args(tmp_path, out, "--max-steps", "2"))  # the default mix is another run
    assert sorted(align.train(_args(tmp_path, out, "--max-steps", "2", "--objectives", "transcribe"))["losses"]) == [2]


def test_objectives_change_what_a_step_trains_on(tmp_path, offline_data):
    mix = align.train(_args(tmp_path, tmp_path / "mix", "--max-steps", "1"))["losses"]
    one = align.train(_args(tmp_path, tmp_path / "one", "--max-steps", "1", "--objectives", "transcribe"))
    assert mix[1] != one["losses"][1]
    with pytest.raises(SystemExit, match="unknown"):
        align.train(_args(tmp_path, tmp_path / "bad", "--objectives", "transcribe,answer"))


def test_respond_targets_are_the_llms_own_text_mode_response_as_generated(student):
    """BLSP's behaviour target: what the LLM says to the typed text, ids as generated (EOS kept when reached)."""
    from xopd import prompting

    asks = [("What is five plus six?", "Write a short title for what you heard."),
            ("I have three harps. How many instruments do I have?", "Translate what you heard into French.")]
    got = align.own_responses(student.core, student, asks, 5)
    for (text, instruction), ids in zip(asks, got):
        r = prompting.render(student.tokenizer, prompting.messages_for(f"{text}\n{instruction}", modality="text"),
                             processor=student.processor, placeholder=student.family.audio_placeholder)
        with torch.no_grad():
            out = student.core.generate(input_ids=torch.tensor([r.ids]), max_new_tokens=5, do_sample=False,
                                        eos_token_id=student.eos_ids, pad_token_id=student.pad_id,
                                        suppress_tokens=[student.core.config.audio_token_id])
        alone = out[0, len(r.ids):].tolist()
        cut = next((i for i, t in enumerate(alone) if t in student.eos_ids), None)
        assert ids == (alone if cut is None else alone[: cut + 1])


def test_request_targets_are_generated_once_and_kept_for_the_run(tmp_path, student):
    """The responding LLM is frozen: each request's target is generated once, in a fixed batching, and a resumed
    run reads the kept ids instead of loading the LLM again; other requests or another LLM are refused."""
    requests = {"respond/a": [("What is five plus six?", "Write a short title for what you heard."),
                              ("Is two thousand thirty a leap year?", "")],
                "respond/b": [("I have three harps. How many instruments do I have?", "")]}
    loads = []

    def responder():
        loads.append(1)
        return lambda asks, n: align.own_responses(student.core, student, asks, n)

    path = tmp_path / "request_targets.json"
    got = align.request_targets(responder, requests, 5, path, "student", batch_size=2)
    for name, reqs in requests.items():
        for req, ids in zip(reqs, got[name]):
            assert ids == align.own_responses(student.core, student, [req], 5)[0]
    assert align.request_targets(responder, requests, 5, path, "student") == got and loads == [1]
    with pytest.raises(SystemExit, match="request_targets.json"):
        align.request_targets(responder, requests, 5, path, "smollm2-135m-instruct")
    with pytest.raises(SystemExit, match="request_targets.json"):
        align.request_targets(responder, {"respond/a": requests["respond/a"]}, 5, path, "student")


def test_behaviour_requests_train_on_the_llms_own_responses_and_resume_exactly(tmp_path, offline_data):
    pool = ("--respond-from", "letter_counting,coin_flip", "--respond-per-dataset", "3", "--respond-weight", "2",
            "--objectives", "transcribe")
    whole = align.train(_args(tmp_path, tmp_path / "whole", "--max-steps", "2", *pool))
    first = align.train(_args(tmp_path, tmp_path / "pieces", "--max-steps", "1", *pool))
    second = align.train(_args(tmp_path, tmp_path / "pieces", "--max-steps", "2", *pool))
    assert all(np.isfinite(v) for v in whole["losses"].values())
    assert first["losses"] == {1: whole["losses"][1]} and second["losses"] == {2: whole["losses"][2]}
    plain = align.train(_args(tmp_path, tmp_path / "plain", "--max-steps", "1", "--objectives", "transcribe"))
    assert plain["losses"][1] != whole["losses"][1]
    with pytest.raises(SystemExit, match="respond_from"):  # a run without requests is another run
        align.train(_args(tmp_path, tmp_path / "plain", "--max-steps", "2", *pool))


def test_requests_are_speakable_outside_the_mix_and_some_carry_a_text_instruction():
    from xopd.world.respond_pool import respond_requests, split_request

    reqs = respond_requests(["calendar_arithmetic", "letter_counting"], 20, seed=0)
    assert set(reqs) == {"respond/calendar_arithmetic", "respond/letter_counting"}
    for spoken, instruction in [r for v in reqs.values() for r in v]:
        assert spoken and not any(ch.isdigit() for ch in spoken)  # numbers are said as words
    cal = reqs["respond/calendar_arithmetic"]
    assert any(i for _, i in cal) and any(not i for _, i in cal)  # both ways of asking occur
    assert split_request("How many times does the letter \"h\" appear?") == (
        'How many times does the letter "h" appear?', "")


def test_requests_can_be_asked_in_the_mixs_own_answer_formats():
    """--respond-formats mix: a request whose answer is a number, yes/no or a word is asked as evaluation asks the
    mix (the format text beside the clip, or spoken inside it as family does); others keep their own wording."""
    from evalsuite.tasks import load_task
    from xopd.world.respond_pool import FORMATS, answer_format, respond_requests

    assert FORMATS["number"] == load_task("sums", split="test").instruction == load_task("counting", split="test").instruction
    assert FORMATS["yes-no"] == load_task("syllogism", split="test").instruction
    family = load_task("family", split="test")
    assert not family.instruction and FORMATS["word"] in family.render_spoken(family.items[0])
    assert [answer_format(a) for a in ("4", "-1", "Yes", "Tuesday", "0.9453125", "You are over-worked.")] == [
        "number", "number", "yes-no", "word", None, None]
    mix = respond_requests(["letter_counting", "calendar_arithmetic", "coin_flip"], 40, seed=0, formats="mix")
    plain = respond_requests(["letter_counting", "calendar_arithmetic", "coin_flip"], 40, seed=0)
    assert {i for _, i in mix["respond/letter_counting"]} == {FORMATS["number"]}
    cal = mix["respond/calendar_arithmetic"]
    assert any(i == FORMATS["yes-no"] for _, i in cal)
    assert any(not i and s.endswith(FORMATS["word"]) for s, i in cal)
    assert all(not s.endswith("Answer with Yes or No.") for s, _ in cal)  # its own format gave way
    assert mix["respond/coin_flip"][0] == plain["respond/coin_flip"][0]  # a probability: no mix format
    from xopd.world.respond_pool import in_mix_format

    assert in_mix_format("Is 2020 a leap year? Answer with Yes or No.", "yes-no") == (
        "Is two thousand twenty a leap year?", FORMATS["yes-no"])
    assert in_mix_format("It is a fine day. Is 2020 a leap year?", "yes-no") == (  # a question is no format line
        "It is a fine day. Is two thousand twenty a leap year?", FORMATS["yes-no"])
    with pytest.raises(SystemExit, match="--respond-formats"):
        respond_requests(["coin_flip"], 2, seed=0, formats="all")


def test_a_text_llm_can_give_the_requests_targets(tmp_path, offline_data, student):
    """--respond-llm: targets from a text LLM with the student's vocabulary, as its own generate gives them."""
    from xopd import prompting

    responder = align.TextResponder("fixture:teacher", student.tokenizer)
    asks = [("How many times does the letter r appear in the word carrot?", ""),
            ("Is two thousand thirty a leap year?", "Answer with Yes or No.")]
    got = responder(asks, 4)
    for (text, instruction), ids in zip(asks, got):
        typed = f"{text}\n{instruction}" if instruction else text
        r = prompting.render(responder.tokenizer, prompting.messages_for(typed, modality="text"))
        with torch.no_grad():
            alone = responder.model.generate(input_ids=torch.tensor([r.ids]), max_new_tokens=4, do_sample=False,
                                             eos_token_id=responder.eos, pad_token_id=responder.pad)
        alone = alone[0, len(r.ids):].tolist()
        cut = next((i for i, t in enumerate(alone) if t in responder.eos), None)
        assert ids == (alone if cut is None else alone[: cut + 1])
    pool = ("--respond-from", "coin_flip", "--respond-per-dataset", "2", "--respond-weight", "4")
    run = align.train(_args(tmp_path, tmp_path / "run", "--max-steps", "1", "--respond-llm", "fixture:teacher", *pool))
    assert np.isfinite(run["losses"][1])
    with pytest.raises(SystemExit, match="respond_llm"):
        align.train(_args(tmp_path, tmp_path / "run", "--max-steps", "2", *pool))


def _frame_norm_ratio(core, states):
    with torch.no_grad():
        frames = core.model.multi_modal_projector(torch.cat(states).float())
        return float(frames.norm(dim=-1).mean() / core.get_input_embeddings().weight.norm(dim=-1).mean())


def test_hold_audio_norm_scales_the_projector_to_the_asked_multiple_of_the_text_norm(student):
    core = student.core
    states = [torch.randn(7, core.config.audio_config.d_model), torch.randn(4, core.config.audio_config.d_model)]
    saved = {n: p.detach().clone() for n, p in core.model.multi_modal_projector.named_parameters()}
    try:
        before = _frame_norm_ratio(core, states)
        assert align.hold_audio_norm(core, states, 1.5) == pytest.approx(before, rel=1e-5)
        assert _frame_norm_ratio(core, states) == pytest.approx(1.5, rel=1e-5)
        # a scale, not a new map: every frame's direction is kept
        w = saved["linear.weight"]
        c = core.model.multi_modal_projector.linear.weight / w
        assert torch.allclose(c, c.flatten()[0].expand_as(c), rtol=1e-5)
    finally:
        with torch.no_grad():
            for n, p in core.model.multi_modal_projector.named_parameters():
                p.copy_(saved[n])


def test_audio_norm_is_held_through_training_and_resumes_exactly(tmp_path, offline_data):
    whole = align.train(_args(tmp_path, tmp_path / "whole", "--max-steps", "2", "--audio-norm", "2"))
    core = whole["adapter"].core
    clips = align.Clips(whole["cache"])
    other_clip = [("What is two plus two?", align.parse_variants("flite-slt")[0])]
    # held on each step's own batch; on another clip it stays near, not exactly at, the multiple
    assert 0.5 < _frame_norm_ratio(core, clips.states(other_clip)) < 8
    first = align.train(_args(tmp_path, tmp_path / "pieces", "--max-steps", "1", "--audio-norm", "2"))["losses"]
    second = align.train(_args(tmp_path, tmp_path / "pieces", "--max-steps", "2", "--audio-norm", "2"))["losses"]
    assert first == {1: whole["losses"][1]} and second == {2: whole["losses"][2]}
    free = align.train(_args(tmp_path, tmp_path / "free", "--max-steps", "1"))["losses"]
    assert free[1] != whole["losses"][1]  # the rescale at the start changed what step 1 saw
    with pytest.raises(SystemExit, match="other settings"):
        align.train(_args(tmp_path, tmp_path / "pieces", "--max-steps", "3"))


def test_a_share_of_request_slots_takes_content_objectives_on_the_requests_own_words(student):
    from xopd.world.objectives import OBJECTIVES, parse_objectives

    objectives = parse_objectives("transcribe,capitals")
    requests = {"respond/x": [("How many letters are in the word cat?", "Answer with the number only.")]}
    own = {"respond/x": [[11, 12, 13]]}
    spoken = requests["respond/x"][0][0]

    def draws(share):
        targets = align.SlotTargets(student, objectives, requests, own, share, seed=0)
        return [targets("respond/x", 0, spoken, "other words", step, slot) for step in range(1, 26)
                for slot in range(8)]

    assert all(d == ("Answer with the number only.", [11, 12, 13]) for d in draws(0.0))
    content = {OBJECTIVES[n].make(spoken, "", "")[0]: align.target_ids(student, OBJECTIVES[n].make(spoken, "", "")[1])
               for n in ("transcribe", "capitals")}
    assert all(content[ins] == target for ins, target in draws(1.0))  # said back, never answered
    half = draws(0.5)
    said_back = sum(ins in content for ins, _ in half)
    assert 70 < said_back < 130 and all(t == [11, 12, 13] for ins, t in half if ins not in content)
    assert draws(0.5) == half  # a pure function of (seed, step, slot): nothing to resume
    # a mix task's slot is always a content objective, whatever the share
    mix = align.SlotTargets(student, objectives, requests, own, 0.0)("sums", 0, "What is two plus two?", "", 1, 0)
    assert mix[0] in content


def test_ctc_loss_of_a_batch_equals_the_mean_of_each_clips_own(student):
    core = student.core
    d = core.config.audio_config.d_model
    gen = torch.Generator().manual_seed(0)
    states = [torch.randn(9, d, generator=gen), torch.randn(5, d, generator=gen), torch.randn(12, d, generator=gen)]
    rows = [[5, 7, 7], [3], [1, 2, 3, 4]]
    batch = align.ctc_loss(core, states, rows)
    plain = []
    with torch.no_grad():
        for s, r in zip(states, rows):
            logits = core.lm_head(core.model.multi_modal_projector(s)).float()
            logp = torch.cat([torch.zeros(len(s), 1), logits], 1).log_softmax(-1)  # blank first, logit 0
            plain.append(torch.nn.functional.ctc_loss(logp[:, None], torch.tensor(r) + 1, [len(s)], [len(r)],
                                                      reduction="sum") / len(r))
    assert batch.item() == pytest.approx(torch.stack(plain).mean().item(), rel=1e-5)
    batch.backward()  # the gradient reaches the projector (a run trains only it: setup_trainable)
    assert core.model.multi_modal_projector.linear.weight.grad.abs().sum() > 0
    core.zero_grad(set_to_none=True)


def test_ctc_weight_adds_the_ctc_loss_to_a_step(tmp_path, offline_data):
    plain = align.train(_args(tmp_path, tmp_path / "plain", "--max-steps", "1"))["losses"]
    ctc = align.train(_args(tmp_path, tmp_path / "ctc", "--max-steps", "1", "--ctc-weight", "1"))["losses"]
    assert np.isfinite(ctc[1]) and ctc[1] > plain[1]  # the same batch, plus a CTC term (> 0)
