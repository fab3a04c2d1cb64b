"""Audio as every model here reads it: 16 kHz mono float samples -- the one rate and the one check.

Torch-free (numpy only), so the trainer (:mod:`xopd.models`), the rollout engines, the model families
(:mod:`xopd.families`), the zoo and the evalsuite (TTS, speech cache, backends) all import it.

:func:`checked_audio` is the only audio validator: callers wrap its :class:`AudioFormatError` in their own
error type with their own location (``evalsuite.speech.AudioError(source, reason)``, a backend's
``RequestError``, the adapter's ``ValueError``), so every path refuses the same arrays for the same reasons.
"""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLE_RATE = 16_000  # Hz: Whisper-style feature extractors, Qwen2-Audio / Qwen2.5-Omni, the TTS cache


class AudioFormatError(ValueError):
    """An array that is not 16 kHz mono float audio; the message is the reason, without a location."""


def checked_audio(audio: Any, *, sample_rate: int | None = None, squeeze: bool = False) -> np.ndarray:
    """``audio`` as contiguous float32 mono samples, or an :class:`AudioFormatError` saying what is wrong.

    Refused: anything but a numpy array, a ``sample_rate`` (when given) other than :data:`SAMPLE_RATE`, more
    than one dimension (``squeeze``: a ``(n, 1)`` / ``(1, n)`` single channel is flattened first), no samples,
    integer samples (PCM read at the wrong scale: 32767 instead of 1.0 -- refused rather than guessed), NaN or
    infinite samples. Wrong rates are errors, never resampled silently.
    """
    if not isinstance(audio, np.ndarray):
        kind = type(audio).__name__
        khz = SAMPLE_RATE // 1000
        raise AudioFormatError(f"audio must be a numpy array of {khz} kHz mono samples, got {kind}")
    if sample_rate is not None and sample_rate != SAMPLE_RATE:
        raise AudioFormatError(
            f"sample rate is {sample_rate} Hz, expected {SAMPLE_RATE} Hz (resample it first)"
        )
    if squeeze and audio.ndim == 2 and 1 in audio.shape:  # one channel stored as 2-D
        audio = audio.reshape(-1)
    if audio.ndim != 1:
        raise AudioFormatError(f"audio has shape {tuple(audio.shape)}: expected mono (1-D samples)")
    if audio.size == 0:
        raise AudioFormatError("audio is empty (0 samples)")
    if not np.issubdtype(audio.dtype, np.floating):
        raise AudioFormatError(f"audio dtype is {audio.dtype}, expected float samples in [-1, 1]")
    bad = ~np.isfinite(audio)
    if bad.any():
        raise AudioFormatError(f"audio has {int(bad.sum())} non-finite samples (NaN/inf)")
    return np.ascontiguousarray(audio, dtype=np.float32)
