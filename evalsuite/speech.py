"""Spoken versions of benchmark items: named TTS variants, a content-addressed WAV cache, additive noise,
audio validation, and ``synth_task`` which renders a task to a folder that ``datasets`` loads.

A :class:`Variant` says how a text is spoken (engine, voice, rate, pitch, noise). :func:`render` turns
(text, variant) into a 16 kHz mono float32 WAV stored under ``$XOPD_HOME/tts/<hash[:2]>/<hash>.wav``, where
the hash covers everything that changes the audio and nothing else (not the variant's name), so a rerun,
another task with the same sentence, or a second process all reuse one file. Every step is deterministic:
noise comes from a numpy Generator seeded by the variant's seed and the text.

:func:`load_audio` is the one gate audio passes on its way to a model: a missing, corrupt, empty, stereo,
non-16 kHz or non-finite file raises :class:`AudioError` naming the file, which the evaluator records as the
item's reason and moves on. It never resamples silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm.auto import tqdm

from evalsuite.tts import (
    DEFAULT_PIPER_VOICE,
    HIBARI_VOICE,
    flite_synthesize,
    hibari_synthesize,
    PIPER_INSTALL,
    SAMPLE_RATE,
    TTSError,
    espeak_synthesize,
    piper_available,
    piper_synthesize,
)
from evalsuite.types import Item
from xopd.audio import AudioFormatError, checked_audio
from xopd.paths import atomic_write_bytes, atomic_write_text, xopd_home

if TYPE_CHECKING:
    import datasets

__all__ = [
    "AudioError",
    "RENDERER_VERSION",
    "SAMPLE_RATE",
    "SYNTH_FORMAT_VERSION",
    "Variant",
    "add_noise",
    "available_variants",
    "check_audio",
    "default_variants",
    "load_audio",
    "load_synth",
    "parse_variants",
    "render",
    "render_array",
    "render_key",
    "synth_task",
    "synthesize",
]

# Bump when the same (text, variant) would give different samples (new resampler, noise recipe, ...): it is
# part of every cache key, so old renders are simply never looked up again.
RENDERER_VERSION = 1
SYNTH_FORMAT_VERSION = 1

Engine = Literal["espeak", "piper", "flite", "hibari"]
NoiseColor = Literal["white", "pink"]
_ENGINES = ("espeak", "piper", "flite", "hibari")
_COLORS = ("white", "pink")
_PEAK = 0.99  # renders are scaled below this when noise pushes them past full scale (scaling keeps the SNR)


class AudioError(ValueError):
    """Audio that cannot be fed to a model; the message names the file and the reason."""

    def __init__(self, source: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = str(source)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """How a text is spoken.

    ``rate`` is words per minute for espeak-ng (its default is 175) and a length scale for Piper, flite and
    hibari (> 1 slower); ``pitch`` is espeak-ng's 0-99 (default 50; the others have none). ``snr_db`` adds
    ``noise``-coloured noise at that signal-to-noise ratio (``None``: clean), drawn from ``seed``.
    ``None`` keeps the engine default.
    """

    name: str
    engine: Engine = "espeak"
    voice: str = "en-us"
    rate: float | None = None
    pitch: int | None = None
    snr_db: float | None = None
    seed: int = 0
    noise: NoiseColor = "white"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", self.name):
            raise ValueError(
                f"variant name {self.name!r}: use letters, digits and . _ + - (it names a folder)"
            )
        if self.engine not in _ENGINES:
            raise ValueError(f"variant {self.name!r}: engine {self.engine!r} is not one of {_ENGINES}")
        if not self.voice:
            raise ValueError(f"variant {self.name!r}: empty voice")
        if self.rate is not None and not (math.isfinite(self.rate) and self.rate > 0):
            raise ValueError(f"variant {self.name!r}: rate must be a positive number, got {self.rate!r}")
        if self.pitch is not None:
            if self.engine != "espeak":
                raise ValueError(f"variant {self.name!r}: {self.engine} has no pitch control; leave pitch=None")
            if not 0 <= self.pitch <= 99:
                raise ValueError(f"variant {self.name!r}: espeak-ng pitch is 0-99, got {self.pitch}")
        if self.snr_db is not None and not math.isfinite(self.snr_db):
            raise ValueError(f"variant {self.name!r}: snr_db must be finite or None, got {self.snr_db!r}")
        if self.noise not in _COLORS:
            raise ValueError(f"variant {self.name!r}: noise {self.noise!r} is not one of {_COLORS}")

    def audio_params(self) -> dict[str, object]:
        """Everything that changes the samples: not the name, and no noise fields when clean."""
        params: dict[str, object] = {
            "engine": self.engine,
            "voice": self.voice,
            "rate": self.rate,
            "pitch": self.pitch,
            "snr_db": self.snr_db,
        }
        if self.snr_db is not None:
            params |= {"noise": self.noise, "seed": self.seed}
        return params


_ESPEAK_VARIANTS = (
    Variant("clean"),
    Variant("fast", rate=220),
    Variant("slow", rate=130),
    Variant("pitch-low", pitch=25),
    Variant("pitch-high", pitch=75),
    Variant("voice-f", voice="en-us+f3"),
    Variant("noisy-10db", snr_db=10.0, noise="white", seed=0),
    Variant("noisy-5db", snr_db=5.0, noise="white", seed=0),
    Variant("pink-10db", snr_db=10.0, noise="pink", seed=0),
)
_PIPER_VARIANTS = (Variant("piper", engine="piper", voice=DEFAULT_PIPER_VOICE),)
# hibari's bundled neural voice (the default) and Debian's flite voices; flite-kal is the demo world's
# held-out voice (never used in training).
_NEURAL_AND_FLITE_VARIANTS = (
    Variant("hibari", engine="hibari", voice=HIBARI_VOICE),
    Variant("hibari-slow", engine="hibari", voice=HIBARI_VOICE, rate=1.25),
    Variant("hibari-fast", engine="hibari", voice=HIBARI_VOICE, rate=0.85),
    Variant("flite-slt", engine="flite", voice="slt"),
    Variant("flite-rms", engine="flite", voice="rms"),
    Variant("flite-awb", engine="flite", voice="awb"),
    Variant("flite-kal", engine="flite", voice="kal"),
    Variant("flite-slt-slow", engine="flite", voice="slt", rate=1.3),
)


def default_variants() -> dict[str, Variant]:
    """The named variants available here: the espeak-ng ones always, ``piper`` when piper-tts is installed."""
    variants = {v.name: v for v in (*_NEURAL_AND_FLITE_VARIANTS, *_ESPEAK_VARIANTS)}
    if piper_available():
        variants |= {v.name: v for v in _PIPER_VARIANTS}
    return variants


def available_variants() -> list[str]:
    return list(default_variants())


def parse_variants(spec: str | Iterable[str]) -> list[Variant]:
    """``"clean,noisy-10db"`` (or a list of names) → variants, in order, without repeats."""
    names = [n.strip() for n in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"no variants given; available: {', '.join(available_variants())}")
    known = default_variants()
    out: list[Variant] = []
    for name in names:
        if name not in known:
            hint = (
                f" (it needs piper-tts: {PIPER_INSTALL})" if name in {v.name for v in _PIPER_VARIANTS} else ""
            )
            raise ValueError(f"unknown speech variant {name!r}{hint}; available: {', '.join(known)}")
        if known[name] not in out:
            out.append(known[name])
    return out


# --------------------------------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------------------------------


def _unit_noise(n: int, color: NoiseColor, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if color == "white":
        noise = white
    else:  # pink: shape white noise's spectrum by 1/sqrt(f), i.e. power falling 3 dB per octave
        spectrum = np.fft.rfft(white)
        f = np.arange(spectrum.size, dtype=np.float64)
        f[0] = f[1] if f.size > 1 else 1.0
        noise = np.fft.irfft(spectrum / np.sqrt(f), n=n)
    return noise / _rms(noise)


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def add_noise(
    audio: np.ndarray, snr_db: float, *, rng: np.random.Generator, color: NoiseColor = "white"
) -> np.ndarray:
    """``audio`` plus noise whose RMS is the signal's RMS / 10^(snr_db/20) (float64; pure given ``rng``).

    The SNR is measured over the whole clip, silences included, the way the evaluation reports it.
    """
    audio = np.asarray(audio, dtype=np.float64)
    rms = _rms(audio)
    if rms == 0.0:
        raise ValueError("cannot add noise at a given SNR to silent audio (signal RMS is 0)")
    noise = _unit_noise(audio.size, color, rng) * (rms / 10 ** (snr_db / 20))
    return audio + noise


def _noise_rng(variant: Variant, text: str) -> np.random.Generator:
    # The text joins the seed so that every item gets its own noise; the same (seed, text) always the same.
    text_hash = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([variant.seed, text_hash])


# --------------------------------------------------------------------------------------------------
# Rendering and the cache
# --------------------------------------------------------------------------------------------------


def synthesize(text: str, variant: Variant) -> np.ndarray:
    """Speak ``text`` as ``variant`` says, uncached: float32 mono 16 kHz, peak ≤ 1."""
    if not text or not text.strip():
        raise ValueError(f"variant {variant.name!r}: nothing to speak (empty text)")
    if variant.engine == "espeak":
        rate = None if variant.rate is None else int(round(variant.rate))
        audio = espeak_synthesize(text, voice=variant.voice, rate=rate, pitch=variant.pitch)
    elif variant.engine == "flite":
        audio = flite_synthesize(text, voice=variant.voice, length_scale=variant.rate)
    elif variant.engine == "hibari":
        audio = hibari_synthesize(text, voice=variant.voice, length_scale=variant.rate)
    else:
        audio = piper_synthesize(text, voice=variant.voice, length_scale=variant.rate)
    if variant.snr_db is None:
        return audio
    noisy = add_noise(audio, variant.snr_db, rng=_noise_rng(variant, text), color=variant.noise)
    peak = float(np.abs(noisy).max())
    if peak > _PEAK:
        noisy *= _PEAK / peak  # scales speech and noise together: the SNR is unchanged
    return noisy.astype(np.float32)


def render_key(text: str, variant: Variant) -> str:
    """sha256 of the renderer version, the variant's audio parameters and the text."""
    payload = {"renderer": RENDERER_VERSION, **variant.audio_params(), "text": text}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def _wav_bytes(audio: np.ndarray) -> bytes:
    """A 32-bit float WAV. Not soundfile: libsndfile adds a PEAK chunk with a timestamp to float WAVs, so the
    same samples written a second later would give other bytes."""
    from scipy.io import wavfile  # late: scipy only when audio is written

    buf = io.BytesIO()
    wavfile.write(buf, SAMPLE_RATE, np.ascontiguousarray(audio, dtype=np.float32))
    return buf.getvalue()


def render(text: str, variant: Variant, *, cache_dir: Path | None = None) -> Path:
    """Path of the cached WAV of ``text`` spoken as ``variant``; synthesised and written atomically on a miss.

    ``cache_dir`` defaults to ``$XOPD_HOME/tts``. A hit touches neither the TTS engine nor the file.
    """
    key = render_key(text, variant)
    path = Path(cache_dir if cache_dir is not None else xopd_home() / "tts") / key[:2] / f"{key}.wav"
    if path.is_file():
        return path
    # Two processes missing the same key at once both write identical bytes; os.replace keeps either.
    atomic_write_bytes(path, _wav_bytes(synthesize(text, variant)))
    return path


def render_array(text: str, variant: Variant, *, cache_dir: Path | None = None) -> np.ndarray:
    """Like :func:`render`, but returns the validated samples (float32, 16 kHz mono)."""
    return load_audio(render(text, variant, cache_dir=cache_dir))


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


def check_audio(audio: np.ndarray, sample_rate: int, *, source: str) -> np.ndarray:
    """Validate decoded audio (e.g. a hub dataset's array); return it as contiguous float32 mono.

    ``source`` names the item or file in the error. Wrong rates are errors, not silent resampling. The checks
    are :func:`xopd.audio.checked_audio`'s, the one validator the trainer and the backends use too.
    """
    try:
        return checked_audio(np.asarray(audio), sample_rate=sample_rate, squeeze=True)
    except AudioFormatError as exc:
        raise AudioError(source, str(exc)) from None


def load_audio(path: str | os.PathLike) -> np.ndarray:
    """Read a WAV (any libsndfile format) as float32 mono 16 kHz, or raise :class:`AudioError` naming it."""
    import soundfile as sf  # late: loads libsndfile; only when audio is read

    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
        # Check the header before decoding, so a long 44.1 kHz stereo file is rejected cheaply.
        if info.channels != 1:
            raise AudioError(path, f"audio has {info.channels} channels: expected mono")
        if info.samplerate != SAMPLE_RATE:
            raise AudioError(
                path, f"sample rate is {info.samplerate} Hz, expected {SAMPLE_RATE} Hz (resample it first)"
            )
        audio, sr = sf.read(str(path), dtype="float32", always_2d=False)
    except AudioError:
        raise
    except (sf.LibsndfileError, RuntimeError, ValueError, EOFError) as exc:
        raise AudioError(path, f"unreadable or corrupt audio file ({exc})") from exc
    return check_audio(audio, sr, source=str(path))


# --------------------------------------------------------------------------------------------------
# A task's speech set, shareable as a `datasets` folder
# --------------------------------------------------------------------------------------------------


def _file_stem(item_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", item_id).strip("._-") or "item"


def _copy_atomic(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def synth_task(
    items: Sequence[Item],
    variants: Sequence[Variant],
    out_dir: Path,
    *,
    text_of: Callable[[Item], str] = lambda item: item.spoken or item.question,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> Path:
    """Render every item × variant into ``out_dir``; return ``out_dir``.

    ``out_dir`` holds, side by side:

    - ``audio/<variant>/<id>-<hash12>.wav`` and ``metadata.jsonl`` (file_name, id, variant, text, answer): the
      ``audiofolder`` layout, for people with torchcodec and for any tool that reads WAVs;
    - ``state.json``, ``dataset_info.json``, ``data-*.arrow``: a ``Dataset`` with columns id, variant, text,
      answer, audio (``Audio(16 kHz)``, WAV bytes embedded) that ``datasets.load_from_disk(out_dir)`` loads
      offline without torchcodec (cast the column with ``Audio(decode=False)`` there; see :func:`load_synth`);
    - ``synth.json``: the variants' parameters and the renderer version.

    Resumable: a WAV already in ``out_dir`` is reused (its name carries its content hash, so a changed variant
    never reuses stale audio); renders come from the TTS cache. WAVs of earlier runs that no row refers to are
    removed. Bad input (duplicate ids, empty text) raises ValueError naming the item before anything is
    written.
    """
    out_dir = Path(out_dir)
    if not items:
        raise ValueError("synth_task needs at least one item")
    if not variants:
        raise ValueError("synth_task needs at least one variant")
    if len({v.name for v in variants}) != len(variants):
        raise ValueError(f"duplicate variant names in {[v.name for v in variants]}")
    # Validate everything first: a bad item should not cost a half-written folder.
    texts: list[str] = []
    stems: dict[str, str] = {}
    for item in items:
        text = text_of(item)
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"item {item.id!r}: nothing to speak (empty text)")
        stem = _file_stem(item.id)
        if stem in stems:
            what = (
                "duplicate item id"
                if stems[stem] == item.id
                else f"ids {stems[stem]!r} and {item.id!r} share"
            )
            raise ValueError(f"{what} {item.id!r} (file name {stem!r})")
        stems[stem] = item.id
        texts.append(text)

    rows: list[dict[str, str]] = []
    reused = 0
    with tqdm(total=len(items) * len(variants), desc="synth", unit="clip", disable=not progress) as bar:
        for variant in variants:
            for item, text in zip(items, texts, strict=True):
                rel = f"audio/{variant.name}/{_file_stem(item.id)}-{render_key(text, variant)[:12]}.wav"
                target = out_dir / rel
                if target.is_file():
                    reused += 1
                else:
                    try:
                        _copy_atomic(render(text, variant, cache_dir=cache_dir), target)
                    except TTSError as exc:
                        raise TTSError(f"item {item.id!r}, variant {variant.name!r}: {exc}") from exc
                rows.append(
                    {
                        "file_name": rel,
                        "id": item.id,
                        "variant": variant.name,
                        "text": text,
                        "answer": item.answer,
                    }
                )
                bar.update(1)

    referenced = {out_dir / r["file_name"] for r in rows}
    for stale in (out_dir / "audio").rglob("*.wav"):
        if stale not in referenced:
            stale.unlink()
    for folder in (out_dir / "audio").iterdir():
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # a variant no longer rendered
    atomic_write_text(
        out_dir / "metadata.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    )
    _write_arrow(rows, out_dir)
    manifest = {
        "format_version": SYNTH_FORMAT_VERSION,
        "renderer_version": RENDERER_VERSION,
        "sample_rate": SAMPLE_RATE,
        "n_items": len(items),
        "n_rows": len(rows),
        "reused": reused,
        "variants": [dataclasses.asdict(v) for v in variants],
    }
    atomic_write_text(out_dir / "synth.json", json.dumps(manifest, indent=2) + "\n")
    return out_dir


def _write_arrow(rows: list[dict[str, str]], out_dir: Path) -> None:
    """Save the rows as a ``Dataset`` into ``out_dir`` (beside the WAVs), without torchcodec.

    ``datasets`` 5.x imports torchcodec to *encode* an Audio column, so the column is written as a plain
    {bytes, path} struct and then cast to ``Audio`` (an Arrow-level cast that encodes nothing). Rows stream
    through a generator into a scratch cache, so a long task never sits in memory.
    """
    import datasets  # late, here and below: datasets (pyarrow, pandas) is slow to import

    plain = datasets.Features(
        {
            "id": datasets.Value("string"),
            "variant": datasets.Value("string"),
            "text": datasets.Value("string"),
            "answer": datasets.Value("string"),
            "audio": {"bytes": datasets.Value("binary"), "path": datasets.Value("string")},
        }
    )

    def gen(rows: list[dict[str, str]], root: str):
        for r in rows:
            audio = {"bytes": (Path(root) / r["file_name"]).read_bytes(), "path": r["file_name"]}
            yield {
                "id": r["id"],
                "variant": r["variant"],
                "text": r["text"],
                "answer": r["answer"],
                "audio": audio,
            }

    with tempfile.TemporaryDirectory(prefix=".synth-", dir=out_dir) as tmp:
        ds = datasets.Dataset.from_generator(
            gen,
            features=plain,
            gen_kwargs={"rows": rows, "root": str(out_dir)},
            cache_dir=str(Path(tmp) / "cache"),
        )
        ds = ds.cast_column("audio", datasets.Audio(sampling_rate=SAMPLE_RATE))
        saved = Path(tmp) / "saved"
        ds.save_to_disk(str(saved))
        del ds
        old = set(out_dir.glob("data-*.arrow"))
        # Data files first, state.json (what load_from_disk follows) last; old shards go only after that.
        for f in sorted(saved.iterdir(), key=lambda p: p.name == "state.json"):
            os.replace(f, out_dir / f.name)
            old.discard(out_dir / f.name)
        for f in old:
            f.unlink()


def load_synth(out_dir: Path, *, decode: bool = False) -> datasets.Dataset:
    """The dataset ``synth_task`` wrote; its audio stays undecoded unless ``decode`` (needs torchcodec)."""
    import datasets

    ds = datasets.load_from_disk(str(out_dir))
    return ds if decode else ds.cast_column("audio", datasets.Audio(sampling_rate=SAMPLE_RATE, decode=False))
