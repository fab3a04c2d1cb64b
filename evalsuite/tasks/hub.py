"""Row sources for data people already have: JSON-lines files and Hugging Face datasets.

Hub datasets load through ``datasets.load_dataset`` with their real ids (``openai/gsm8k``,
``hlt-lab/voicebench``, ``ArtificialAnalysis/big_bench_audio``); a local folder in the same layout loads
through the same code, which is how the tests run them. Audio is never decoded inside ``datasets`` (its
decoder needs ``torchcodec``): columns are cast to ``Audio(decode=False)`` and their bytes are written,
unchanged, to a content-addressed file under ``$XOPD_HOME/data/hf_audio/`` (soundfile reads WAV, FLAC,
OGG and MP3). Audiofolder datasets (Big Bench Audio) are read from their ``metadata.jsonl`` and their audio
files are resolved against the dataset root (or fetched with ``huggingface_hub`` for a hub id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from evalsuite.tasks.source import Row
from evalsuite.tasks.spec import HFSource, JsonlSource
from xopd.offline import OfflineError, check_online
from xopd.paths import atomic_write_bytes, xopd_home

_DEFAULT_COLUMNS = {k: k for k in ("id", "question", "answer", "choices", "audio", "spoken")}


def audio_cache_dir() -> Path:
    return xopd_home() / "data" / "hf_audio"


def _suffix_for(data: bytes) -> str:
    """Container type from magic bytes, so a file written from bytes keeps a name soundfile understands."""
    if data[:4] == b"RIFF":
        return ".wav"
    if data[:4] == b"fLaC":
        return ".flac"
    if data[:4] == b"OggS":
        return ".ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and data[1] & 0xE0 == 0xE0):
        return ".mp3"
    return ".bin"  # unknown: kept as is, so the evaluation reports the item's audio as unreadable


def materialize_audio(value: Any, *, base: Path | None = None) -> str | None:
    """A file path for an audio cell: ``{"bytes", "path"}`` (``Audio(decode=False)``) or a path string."""
    if value is None:
        return None
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            suffix = Path(path).suffix.lower() if path and Path(path).suffix else _suffix_for(data)
            out = audio_cache_dir() / f"{hashlib.sha256(data).hexdigest()[:24]}{suffix}"
            if not out.is_file():
                atomic_write_bytes(out, data)
            return str(out)
        value = path
        if value is None:
            return None
    p = Path(str(value)).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return str(p)  # a missing file is left for the evaluation to report, with the item it belongs to


def _answers(value: Any) -> tuple[Any, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def _choices(value: Any, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, (list, tuple)) or not all(isinstance(c, (str, int, float)) for c in value):
        raise ValueError(f"{where}: 'choices' must be a list of strings, got {value!r}")
    return tuple(str(c) for c in value)


def _meta_value(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) or v is None


def jsonl_rows(src: JsonlSource) -> list[Row]:
    """One item per line: ``question`` and ``answer`` (str, number or list of aliases) are required;
    ``id``, ``choices``, ``spoken``, ``audio`` (relative to the file) are optional; other keys go to meta."""
    cols = {**_DEFAULT_COLUMNS, **dict(src.columns)}
    try:
        lines = src.path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise FileNotFoundError(f"{src.path}: cannot read the task's JSONL file: {e}") from None
    rows = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{src.path}:{n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: not valid JSON: {e}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: each line must be a JSON object")
        q = rec.get(cols["question"])
        if not isinstance(q, str):  # an empty string loads: the evaluator marks that item and goes on
            raise ValueError(f"{where}: needs a string {cols['question']!r}")
        if rec.get(cols["answer"]) is None:
            raise ValueError(f"{where}: needs {cols['answer']!r}")
        used = {cols[k] for k in cols}
        meta = {
            "source": f"jsonl:{src.path.name}",
            "line": n,
            **{k: v for k, v in rec.items() if k not in used and _meta_value(v)},
        }
        rows.append(
            Row(
                local_id=str(rec.get(cols["id"], f"{n:05d}")),
                question=q.strip(),
                answers=_answers(rec[cols["answer"]]),
                choices=_choices(rec.get(cols["choices"]), where),
                spoken=rec.get(cols["spoken"]),
                audio=materialize_audio(rec.get(cols["audio"]), base=src.path.parent),
                meta=meta,
            )
        )
    return rows


def _folder_fingerprint(root: Path) -> str:
    """Hash of a local folder's file names, sizes and mtimes. ``datasets`` keys its cache of a local folder
    by the folder's name and README alone, so an edited copy (or another folder of the same name) would
    silently load stale rows; a cache folder per fingerprint cannot."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts):
            st = p.stat()
            h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def _load(src: HFSource, task: str, **kwargs: Any) -> Any:
    import datasets

    if Path(src.path).is_dir():
        kwargs["cache_dir"] = str(xopd_home() / "data" / "hf_local" / _folder_fingerprint(Path(src.path)))
    try:
        return datasets.load_dataset(src.path, src.name, revision=src.revision, **kwargs)
    except Exception as e:  # datasets raises many types (ConnectionError, FileNotFoundError, ValueError, ...)
        where = "local folder" if Path(src.path).is_dir() else "Hugging Face hub dataset"
        raise RuntimeError(
            f"task {task!r}: cannot load {where} {src.path!r}"
            + (f" (config {src.name!r})" if src.name else "")
            + f": {type(e).__name__}: {e}. Without the hub, point source.hf.path at a local copy "
            "(a task file in $XOPD_TASKS_PATH with the same name overrides the built-in one)."
        ) from e


def _audiofolder_root(src: HFSource, filenames: list[str]) -> Path:
    """Where an audiofolder dataset's files are: the local folder, or a hub snapshot holding only the files
    these rows use (downloaded in parallel and cached by ``huggingface_hub``)."""
    if Path(src.path).is_dir():
        return Path(src.path)
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            src.path, repo_type="dataset", revision=src.revision, allow_patterns=sorted(set(filenames))
        )
    )


def hf_rows(src: HFSource, *, task: str) -> list[Row]:
    if not Path(src.path).is_dir():  # a hub id: load_dataset and _audiofolder_root would fetch it
        try:
            check_online(
                f"dataset {src.path!r} from the Hugging Face hub",
                how="point source.hf.path at a local copy (a task file in $XOPD_TASKS_PATH with the same "
                "name overrides the built-in one)",
            )
        except OfflineError as e:
            msg = f"task {task!r}: cannot load Hugging Face hub dataset {src.path!r}: {e}"
            raise OfflineError(msg) from None
    import datasets

    cols = {**_DEFAULT_COLUMNS, **dict(src.columns)}
    # (our split label or None, hub split name) pairs in a fixed order
    plan: list[tuple[str | None, str]] = []
    if src.metadata:
        plan = [(None, "train")]
    elif src.hub_splits is not None:
        for label, names in sorted(src.hub_splits.items()):
            plan += [(label, n) for n in ((names,) if isinstance(names, str) else names)]
    else:
        names = (src.split,) if isinstance(src.split, str) else src.split
        plan = [(None, str(n)) for n in names]

    rows: list[Row] = []
    seen: dict[str, str] = {}
    for label, split in plan:
        if src.metadata:
            ds = _load(src, task, data_files=src.metadata, split="train")
        else:
            ds = _load(src, task, split=split)
        for col, feat in ds.features.items():
            if isinstance(feat, datasets.Audio):
                ds = ds.cast_column(col, datasets.Audio(decode=False))
        missing = [cols[k] for k in ("question", "answer") if cols[k] not in ds.column_names]
        if missing:
            raise ValueError(
                f"task {task!r}: dataset {src.path!r} split {split!r} has no column(s) {missing}; "
                f"columns: {ds.column_names} (map them with source.hf.columns)"
            )
        for col, _ in src.filter:
            if col not in ds.column_names:
                raise ValueError(f"task {task!r}: filter column {col!r} is not in {ds.column_names}")
        for i, rec in enumerate(ds):
            if not all((rec[c] in v) if isinstance(v, tuple) else rec[c] == v for c, v in src.filter):
                continue
            where = f"task {task!r}: {src.path} split {split!r} row {i}"
            q = rec[cols["question"]]
            if not isinstance(q, str) or not q.strip():
                raise ValueError(f"{where}: empty question in column {cols['question']!r}")
            local = str(rec[cols["id"]]) if cols["id"] in rec else f"{split}/{i:05d}"
            if local in seen:
                raise ValueError(f"{where}: duplicate id {local!r} (also in split {seen[local]!r})")
            seen[local] = split
            audio = rec.get(cols["audio"]) if cols["audio"] in rec else None
            used = {cols[k] for k in cols}
            meta = {"source": f"hf:{src.path}", "hf_split": split,
                    **{k: v for k, v in rec.items() if k not in used and _meta_value(v)}}  # fmt: skip
            rows.append(
                Row(
                    local_id=local,
                    question=q.strip(),
                    answers=_answers(rec[cols["answer"]]),
                    choices=_choices(rec.get(cols["choices"]), where) if cols["choices"] in rec else (),
                    spoken=rec.get(cols["spoken"]) if cols["spoken"] in rec else None,
                    audio=audio if src.metadata else materialize_audio(audio),
                    split=label,
                    meta=meta,
                )
            )
    if src.metadata:  # audio cells are file names relative to the dataset root
        named = [r.audio for r in rows if isinstance(r.audio, str)]
        if named:
            root = _audiofolder_root(src, named)
            rows = [
                dataclasses.replace(r, audio=str(root / r.audio)) if isinstance(r.audio, str) else r
                for r in rows
            ]
    return rows
