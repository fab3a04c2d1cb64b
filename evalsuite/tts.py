"""Offline text-to-speech for building spoken test sets.

espeak-ng is robotic but deterministic, tiny and available from apt, which is what an offline evaluation
needs: the same text always gives the same audio. Its WAV output (22.05 kHz) is resampled by sox to the
16 kHz mono that Whisper-style feature extractors expect.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["SAMPLE_RATE", "TTSError", "espeak_synthesize"]

SAMPLE_RATE = 16_000
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
        _run([sox, str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(out)])
        audio, sr = sf.read(str(out), dtype="float32", always_2d=False)
    if sr != SAMPLE_RATE:
        raise TTSError(f"sox produced {sr} Hz audio, expected {SAMPLE_RATE} Hz")
    if audio.ndim != 1 or audio.size == 0:
        raise TTSError(f"espeak-ng produced no usable audio for voice {voice!r}")
    return np.ascontiguousarray(audio, dtype=np.float32)
