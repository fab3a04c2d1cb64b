"""The generation cache: keys that move with everything that changes an answer, a file that survives SIGKILL,
and resumes that never duplicate."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evalsuite.cache import CacheError, GenerationCache, cacheable, generate_cached, request_key
from evalsuite.types import GenParams, Request

ROOT = Path(__file__).resolve().parents[1]
FP, BACKEND, PARAMS = "f" * 64, "hf", GenParams(max_new_tokens=32)


def messages(text: str = "How many legs has a spider?", audio: np.ndarray | None = None) -> list[dict]:
    content: list[dict] = [{"type": "text", "text": text}]
    if audio is not None:
        content.insert(0, {"type": "audio", "audio": audio})
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": content}]


AUDIO = np.linspace(-0.5, 0.5, 1600, dtype=np.float32)


def test_key_is_stable_and_moves_with_each_component() -> None:
    base = request_key(FP, BACKEND, PARAMS, messages(audio=AUDIO))
    assert base == request_key(FP, BACKEND, PARAMS, messages(audio=AUDIO.copy()))
    assert len(base) == 64 and int(base, 16) >= 0
    changed = {
        "fingerprint": request_key("e" * 64, BACKEND, PARAMS, messages(audio=AUDIO)),
        "backend": request_key(FP, "vllm", PARAMS, messages(audio=AUDIO)),
        "text": request_key(FP, BACKEND, PARAMS, messages("How many legs has an ant?", AUDIO)),
        "no audio": request_key(FP, BACKEND, PARAMS, messages()),
    }
    for field in dataclasses.fields(GenParams):
        value = getattr(PARAMS, field.name)
        new = value + "x" if isinstance(value, str) else value + (1 if isinstance(value, int) else 0.5)
        bumped = dataclasses.replace(PARAMS, **{field.name: new})
        changed[f"params.{field.name}"] = request_key(FP, BACKEND, bumped, messages(audio=AUDIO))
    one_sample = AUDIO.copy()
    one_sample[800] += 1e-3
    changed["one audio sample"] = request_key(FP, BACKEND, PARAMS, messages(audio=one_sample))
    changed["audio length"] = request_key(FP, BACKEND, PARAMS, messages(audio=AUDIO[:-1]))
    swapped = messages(audio=AUDIO)
    swapped[0]["role"] = "user"
    changed["role"] = request_key(FP, BACKEND, PARAMS, swapped)
    assert base not in changed.values()
    assert len(set(changed.values())) == len(changed), "two different changes gave the same key"


def test_key_ignores_what_does_not_change_the_answer() -> None:
    base = request_key(FP, BACKEND, PARAMS, messages(audio=AUDIO))
    # Backends cast audio to float32; dict order is not content.
    assert request_key(FP, BACKEND, PARAMS, messages(audio=AUDIO.astype(np.float64))) == base
    reordered = [{"content": m["content"], "role": m["role"]} for m in messages(audio=AUDIO)]
    assert request_key(FP, BACKEND, PARAMS, reordered) == base


def test_key_refuses_values_it_cannot_hash() -> None:
    with pytest.raises(TypeError, match=r"messages\[0\].content.*object"):
        request_key(FP, BACKEND, PARAMS, [{"role": "user", "content": object()}])


def test_cacheable() -> None:
    assert cacheable(GenParams())
    assert cacheable(GenParams(temperature=0.7, seed=3))


def test_put_get_reopen(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    cache = GenerationCache(path)
    assert cache.get("k0") is None and not path.exists()
    assert cache.put("k0", {"text": "Paris", "token_ids": [1, 2]})
    assert not cache.put("k0", {"text": "Lyon", "token_ids": [3]})  # never a second record for a key
    assert cache.put("k1", {"text": "yes", "token_ids": [4]})
    assert len(path.read_text().splitlines()) == 2
    again = GenerationCache(path)
    assert len(again) == 2 and again.get("k0") == {"text": "Paris", "token_ids": [1, 2]}
    assert again.get("k1") == cache.get("k1")


def test_truncated_last_line_is_ignored_then_cut_off(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    cache = GenerationCache(path)
    cache.put_many([(f"k{i}", {"i": i}) for i in range(3)])
    with open(path, "ab") as fh:
        fh.write(b'{"key":"k3","record":{"i":')  # a writer killed mid-line
    reopened = GenerationCache(path)
    assert len(reopened) == 3 and reopened.get("k3") is None
    assert reopened.put("k3", {"i": 3})
    lines = path.read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["k0", "k1", "k2", "k3"]


def test_corrupt_middle_line_is_an_error_naming_the_line(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    GenerationCache(path).put_many([(f"k{i}", {"i": i}) for i in range(3)])
    lines = path.read_text().splitlines()
    lines[1] = lines[1][:10]
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CacheError, match=r"gen.jsonl:2: corrupt"):
        GenerationCache(path)


def test_two_writers_on_one_file_never_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "gen.jsonl"
    a, b = GenerationCache(path), GenerationCache(path)
    assert a.put("k", {"by": "a"})
    assert not b.put("k", {"by": "b"})  # b re-reads what a appended before writing
    assert b.get("k") == {"by": "a"}
    assert b.put("k2", {"by": "b"}) and a.put_many([("k2", {"by": "a"}), ("k3", {"by": "a"})]) == 1
    assert [json.loads(x)["key"] for x in path.read_text().splitlines()] == ["k", "k2", "k3"]


WRITER = """
import sys
from evalsuite.cache import GenerationCache
cache = GenerationCache(sys.argv[1])
for i in range(int(sys.argv[2])):
    if f"k{i}" not in cache:
        cache.put(f"k{i}", {"i": i, "text": "answer %d " % i * 50})
        print(i, flush=True)
"""


def test_sigkill_mid_run_then_resume(tmp_path: Path) -> None:
    path, n = tmp_path / "gen.jsonl", 3000
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(n)], stdout=subprocess.PIPE, text=True, env=env
    )
    for _ in range(100):  # let it write 100 records, then kill it without warning
        assert proc.stdout.readline(), "writer died early"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    killed = GenerationCache(path)  # readable, whatever the kill interrupted
    assert 100 <= len(killed) < n
    assert all(killed.get(f"k{i}")["i"] == i for i in range(len(killed)))
    with open(path, "ab") as fh:  # SIGKILL rarely lands inside write(); tear the last line by hand as well
        fh.write(b'{"key":"k%d","rec' % len(killed))

    done = subprocess.run(
        [sys.executable, "-c", WRITER, str(path), str(n)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[0]) == len(killed)  # resumed where the kill stopped it
    keys = [json.loads(line)["key"] for line in path.read_text().splitlines()]
    assert len(keys) == n and len(set(keys)) == n
    final = GenerationCache(path)
    assert all(final.get(f"k{i}")["i"] == i for i in range(n))


def test_generate_cached_resumes_without_loading_the_model(tmp_path: Path) -> None:
    from evalsuite.backends import make_backend
    from xopd.zoo.fixtures import build_tiny_teacher

    model = str(build_tiny_teacher(tmp_path / "teacher"))
    audio_req = Request("a", [{"role": "user", "content": [{"type": "audio", "audio": AUDIO}]}])
    reqs = [Request(str(i), [{"role": "user", "content": q}]) for i, q in enumerate(["Hi", "Count to three"])]
    reqs += [audio_req, reqs[0]]  # an error, and a repeat of the first request
    params = GenParams(max_new_tokens=6)
    path = tmp_path / "gen.jsonl"

    seen: list[int] = []
    first = generate_cached(
        make_backend("hf", model), reqs, params, GenerationCache(path), progress=seen.append
    )
    assert sum(seen) == len(reqs)
    assert first[0].ok and first[1].ok and first[2].error and first[3].token_ids == first[0].token_ids
    assert len(path.read_text().splitlines()) == 2  # the repeat once, the error never

    fresh = make_backend("hf", model)
    second = generate_cached(fresh, [reqs[1], reqs[0]], params, GenerationCache(path))
    assert fresh._model is None  # every answer came from the file
    assert [r.token_ids for r in second] == [first[1].token_ids, first[0].token_ids]
    assert all(r.meta["cached"] for r in second)
    other = generate_cached(fresh, [reqs[0]], GenParams(max_new_tokens=7), GenerationCache(path))
    assert "cached" not in other[0].meta and fresh._model is not None  # new params: a new key
