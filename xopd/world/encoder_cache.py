"""A disk cache of a frozen Qwen2-Audio encoder's outputs: one float16 ``.npy`` per clip, real frames only.

Qwen2-Audio (and the zoo's ``xopd-speech-smollm2``) pads every clip to 30 s of log-mel frames (3000 frames,
hop 160), runs the Whisper encoder over all of them (stride-2 conv: 1500 frames) and average-pools by 2:
750 frames per 30 s, 25 per second. The encoder masks the padding in its self-attention, and the model keeps
only the first ``n`` pooled frames, where ``n`` comes from the feature extractor's attention mask::

    n_mel = ceil(n_samples / 160)                       (the Whisper feature extractor's mask sum, <= 3000)
    n     = ((n_mel - 1) // 2 + 1 - 2) // 2 + 1         (Qwen2AudioEncoder._get_feat_extract_output_lengths)

which is also the number of ``<|AUDIO|>`` placeholders ``Qwen2AudioProcessor`` expands the prompt to. Those
``n`` frames are all the model ever reads of a clip, so they are all we store (``[n, d_model]``, ~4.8 kB per
second of audio for whisper-tiny's d=384 in float16) -- not the 750 x d the model computes.

Layout: ``$XOPD_HOME/encoder-cache/<fingerprint>/<key[:2]>/<key>.npy`` where ``key`` is the sha256 of the
clip's float32 sample bytes and ``fingerprint`` hashes the encoder's weights, its config and the feature
extractor's settings (so a retrained or different encoder never reads another's outputs). Files are written
atomically (temporary sibling + rename), so a killed fill leaves only complete files and a rerun skips them.

The values are exactly what the model's own forward computes for the clip (the same code path: features,
attention mask, encoder, slice), rounded to float16 on disk; :meth:`EncoderCache.get` returns float32.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from xopd.audio import SAMPLE_RATE
from xopd.paths import atomic_write_bytes, xopd_home

CACHE_FORMAT = 1  # bump when what is stored for a clip changes: part of the fingerprint
STORE_DTYPES = {"float16": np.float16, "float32": np.float32}


# ------------------------------------------------------------------------------------------------------------
# encoding: the model's own audio path, per clip, real frames only
# ------------------------------------------------------------------------------------------------------------


def audio_features(feature_extractor: Any, audios: Sequence[np.ndarray]) -> tuple[Tensor, Tensor]:
    """``(input_features [B, mel, 3000], feature_attention_mask [B, 3000])`` exactly as Qwen2AudioProcessor
    computes them (padding to 30 s, attention mask on)."""
    batch = feature_extractor(
        [np.ascontiguousarray(a, dtype=np.float32) for a in audios],
        sampling_rate=SAMPLE_RATE,
        return_attention_mask=True,
        padding="max_length",
        return_tensors="pt",
    )
    return batch["input_features"], batch["attention_mask"]


def output_lengths(audio_tower: nn.Module, feature_attention_mask: Tensor) -> Tensor:
    """Audio embeddings per clip (= ``<|AUDIO|>`` placeholders): the encoder's own length formula."""
    _, lengths = audio_tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    return lengths


def encode_features(
    audio_tower: nn.Module, input_features: Tensor, feature_attention_mask: Tensor
) -> list[Tensor]:
    """The encoder states of each clip's real frames, ``[n_i, d_model]`` each: the code of
    ``Qwen2AudioModel.forward`` (padding mask from the feature lengths, encoder, then the first
    ``audio_output_lengths`` frames), without the projector. Differentiable when the encoder is trained."""
    from transformers.masking_utils import create_bidirectional_mask

    feat_lengths, out_lengths = audio_tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    batch, _, max_mel = input_features.shape
    max_len = (max_mel - 2) // 2 + 1
    seq = torch.arange(max_len, dtype=feat_lengths.dtype, device=feat_lengths.device)
    mask_2d = (seq[None, :] < feat_lengths[:, None]).to(torch.long)
    dummy = torch.zeros((batch, max_len, 1), dtype=audio_tower.conv1.weight.dtype)
    mask = create_bidirectional_mask(config=audio_tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
    states = audio_tower(input_features, attention_mask=mask).last_hidden_state
    return [states[i, : int(out_lengths[i])] for i in range(batch)]


def encoder_fingerprint(audio_tower: nn.Module, feature_extractor: Any) -> str:
    """16 hex digits over everything that changes a clip's stored states: the cache format, the encoder's
    class, config and weights (names, shapes, dtypes, bytes), and the feature extractor's settings."""
    h = hashlib.sha256()
    h.update(f"xopd-encoder-cache:{CACHE_FORMAT}:{type(audio_tower).__name__}".encode())
    cfg = audio_tower.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        cfg.pop(k, None)
    h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
    fe = feature_extractor.to_dict()
    for k in ("processor_class", "feature_extractor_type"):
        fe.pop(k, None)
    fe = {k: v for k, v in fe.items() if not isinstance(v, np.ndarray)}  # mel filters follow from the rest
    h.update(json.dumps(fe, sort_keys=True, default=str).encode())
    for name, t in sorted(audio_tower.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def audio_key(audio: np.ndarray) -> str:
    """sha256 of the clip's samples as float32 bytes: the same audio always finds the same file."""
    return hashlib.sha256(np.ascontiguousarray(audio, dtype=np.float32).tobytes()).hexdigest()


# ------------------------------------------------------------------------------------------------------------
# the cache
# ------------------------------------------------------------------------------------------------------------


class EncoderCache:
    """Encoder states of real frames per clip, on disk. ``get(audio)`` -> float32 ``[n, d]`` (encoding and
    storing it on a miss); ``fill(audios)`` encodes the missing ones in batches with a progress bar.

    The encoder must stay frozen while the cache is in use: the fingerprint is taken once, at construction.
    ``batch_size`` 1 (the default) encodes each clip alone, so its stored bytes do not depend on which clips
    shared its batch (two processes filling the same cache write identical files); on CPU batching whisper
    buys nothing anyway (every clip is 30 s of padded frames).
    """

    def __init__(
        self,
        audio_tower: nn.Module,
        feature_extractor: Any,
        *,
        root: Path | str | None = None,
        dtype: str = "float16",
        batch_size: int = 1,
    ) -> None:
        if dtype not in STORE_DTYPES:
            raise ValueError(f"dtype {dtype!r}: one of {', '.join(STORE_DTYPES)}")
        self.audio_tower = audio_tower
        self.feature_extractor = feature_extractor
        self.fingerprint = encoder_fingerprint(audio_tower, feature_extractor)
        base = Path(root) if root is not None else xopd_home() / "encoder-cache"
        self.dir = base / self.fingerprint
        self.dtype = dtype
        self.batch_size = batch_size
        self.hits = self.misses = 0

    def path(self, audio: np.ndarray) -> Path:
        key = audio_key(audio)
        return self.dir / key[:2] / f"{key}.npy"

    def has(self, audio: np.ndarray) -> bool:
        return self.path(audio).is_file()

    def expected_frames(self, audio: np.ndarray) -> int:
        """How many frames the model keeps of this clip (without running the encoder)."""
        mask = audio_features(self.feature_extractor, [audio])[1]
        return int(output_lengths(self.audio_tower, mask)[0])

    def load(self, path: Path) -> Tensor:
        return torch.from_numpy(np.load(path).astype(np.float32, copy=False))

    def get(self, audio: np.ndarray) -> Tensor:
        """The clip's encoder states ``[n, d]`` (float32), from disk or encoded now and stored."""
        path = self.path(audio)
        if path.is_file():
            self.hits += 1
            return self.load(path)
        self.misses += 1
        (states,) = self._encode_and_store([audio])
        return states

    def get_many(self, audios: Sequence[np.ndarray]) -> list[Tensor]:
        """``get`` for several clips; the missing ones are encoded together."""
        paths = [self.path(a) for a in audios]
        missing = [i for i, p in enumerate(paths) if not p.is_file()]
        fresh = dict(zip(missing, self._encode_and_store([audios[i] for i in missing]))) if missing else {}
        self.misses += len(missing)
        self.hits += len(audios) - len(missing)
        return [fresh[i] if i in fresh else self.load(p) for i, p in enumerate(paths)]

    @torch.no_grad()
    def encode(self, audios: Sequence[np.ndarray]) -> list[Tensor]:
        """Encode clips (no disk): float32 states of real frames, exactly the model's own values."""
        out: list[Tensor] = []
        for start in range(0, len(audios), self.batch_size):
            chunk = list(audios[start : start + self.batch_size])
            feats, mask = audio_features(self.feature_extractor, chunk)
            dev = self.audio_tower.conv1.weight.device
            dtype = self.audio_tower.conv1.weight.dtype
            states = encode_features(self.audio_tower, feats.to(dev, dtype), mask.to(dev))
            out.extend(s.float().cpu() for s in states)
        return out

    def _encode_and_store(self, audios: Sequence[np.ndarray]) -> list[Tensor]:
        states = self.encode(audios)
        stored = []
        for audio, s in zip(audios, states):
            arr = s.numpy().astype(STORE_DTYPES[self.dtype])
            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            atomic_write_bytes(self.path(audio), buf.getvalue())
            stored.append(torch.from_numpy(arr.astype(np.float32)))  # what a later read returns
        return stored

    def fill(self, audios: Iterable[np.ndarray], *, total: int | None = None, progress: bool = True,
             desc: str = "encoder cache") -> dict[str, int]:
        """Encode and store every clip not on disk yet (resumable: existing files are skipped). ``audios``
        may be a lazy iterable (e.g. rendering TTS on the fly); returns ``{"encoded": .., "skipped": ..}``."""
        bar = _progress(total, desc, progress)
        pending: list[np.ndarray] = []
        done = {"encoded": 0, "skipped": 0}
        try:
            for audio in audios:
                if self.has(audio):
                    done["skipped"] += 1
                    bar.update(1)
                    continue
                pending.append(audio)
                if len(pending) >= self.batch_size:
                    self._encode_and_store(pending)
                    done["encoded"] += len(pending)
                    bar.update(len(pending))
                    pending = []
            if pending:
                self._encode_and_store(pending)
                done["encoded"] += len(pending)
                bar.update(len(pending))
        finally:
            bar.close()
        return done


def _progress(total: int | None, desc: str, enabled: bool) -> Any:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with transformers
        enabled = False
    if not enabled:

        class _Null:
            def update(self, n: int) -> None:
                pass

            def close(self) -> None:
                pass

        return _Null()
    return tqdm(total=total, desc=desc, unit="clip", file=sys.stderr, mininterval=5.0, dynamic_ncols=True)
