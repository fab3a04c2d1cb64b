"""XOPD_OFFLINE=1: a hub model id or a hub dataset fails at once, by name, before any fetch starts; local
paths and zoo names are unaffected; and the test run itself cannot open outbound connections (conftest.py)."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from xopd.offline import OfflineError, check_online, is_offline

HUB_GSM8K = Path(__file__).parent / "data" / "hub" / "gsm8k"
PREFIX = "XOPD_OFFLINE=1: refusing to fetch "


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("XOPD_OFFLINE", "1")
    # Our guard, not the hub library's, must be what stops the fetch.
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # check_online sets both: restore them afterwards
        monkeypatch.setenv(var, "0")
        monkeypatch.delenv(var)


@pytest.fixture
def no_hub_calls(monkeypatch):
    """Fail the test if anything reaches the hub loaders (that is: the guard came too late)."""
    import huggingface_hub
    import transformers

    def boom(*args, **kwargs):
        raise AssertionError(f"a hub fetch started: {args!r}")

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", boom)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", boom)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", boom)


# --- the switch --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "expected"), [
    ("1", True), ("true", True), ("YES", True), (" 1 ", True),
    ("0", False), ("", False), ("false", False), ("no", False), (None, False),
])  # fmt: skip
def test_is_offline_reads_the_environment(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("XOPD_OFFLINE", raising=False)
    else:
        monkeypatch.setenv("XOPD_OFFLINE", value)
    assert is_offline() is expected


def test_check_online_is_silent_online_and_names_what_offline(monkeypatch, offline):
    with pytest.raises(OfflineError) as err:
        check_online("the moon", how="bring your own")
    msg = str(err.value)
    assert msg == (
        "XOPD_OFFLINE=1: refusing to fetch the moon at run time; bring your own, "
        "or unset XOPD_OFFLINE to allow downloads"
    )
    assert "\n" not in msg and isinstance(err.value, RuntimeError)
    monkeypatch.setenv("XOPD_OFFLINE", "0")
    check_online("the moon")  # online: nothing happens


# --- (a) hub model ids -------------------------------------------------------------------------------------


def test_hub_model_id_fails_at_once_by_name(offline, no_hub_calls):
    from xopd.loading import ModelLoadError, load_text_lm

    t0 = time.monotonic()
    with pytest.raises(OfflineError) as err:
        load_text_lm("someorg/some-model")
    assert time.monotonic() - t0 < 2
    msg = str(err.value)
    assert PREFIX + "model 'someorg/some-model' from the Hugging Face hub at run time" in msg
    assert "local checkpoint directory" in msg and "unset XOPD_OFFLINE" in msg
    assert isinstance(err.value, ModelLoadError)  # the CLIs' clean error path still catches it


def test_evalsuite_resolve_and_cascade_refuse_hub_ids(offline, no_hub_calls):
    from evalsuite.backends.resolve import resolve_model

    with pytest.raises(OfflineError, match="model 'someorg/speech-model' from the Hugging Face hub"):
        resolve_model("someorg/speech-model")
    with pytest.raises(OfflineError, match="model 'someorg/asr' from the Hugging Face hub"):
        resolve_model("cascade:someorg/asr+smollm2-135m-instruct")  # the ASR is resolved first


def test_checked_from_pretrained_refuses_hub_ids(offline):
    from transformers import AutoTokenizer

    from xopd.loading import checked_from_pretrained

    with pytest.raises(OfflineError, match="model 'someorg/tok' from the Hugging Face hub"):
        checked_from_pretrained(AutoTokenizer, "someorg/tok", "someorg/tok")


def test_assembling_from_a_hub_encoder_is_refused(offline, no_hub_calls, tmp_path):
    from xopd.zoo.assemble import assemble_speech_lm

    with pytest.raises(OfflineError, match="model 'someorg/whisper' from the Hugging Face hub"):
        assemble_speech_lm("someorg/whisper", str(tmp_path), tmp_path / "out")


# --- (b) hub datasets --------------------------------------------------------------------------------------


def _task_file(folder: Path, name: str, hf_path: str) -> None:
    (folder / f"{name}.yaml").write_text(
        f"""name: {name}
source:
  hf:
    path: {hf_path}
    name: main
    split: {{test: test, train: train}}
answer_pattern: "####\\\\s*(.+?)\\\\s*$"
answer_type: number
prompt: "{{question}}"
""",
        encoding="utf-8",
    )


def test_hub_dataset_task_fails_at_once_by_name(offline, no_hub_calls, tmp_path, monkeypatch):
    import datasets

    from evalsuite.tasks import load_task

    def boom(*args, **kwargs):
        raise AssertionError("load_dataset was called")

    monkeypatch.setattr(datasets, "load_dataset", boom)
    _task_file(tmp_path, "offline_probe", "someorg/dataset")
    monkeypatch.setenv("XOPD_TASKS_PATH", str(tmp_path))
    with pytest.raises(OfflineError) as err:
        load_task("offline_probe", limit=1)
    msg = str(err.value)
    assert msg.startswith("task 'offline_probe': cannot load Hugging Face hub dataset 'someorg/dataset': ")
    assert PREFIX + "dataset 'someorg/dataset' from the Hugging Face hub at run time" in msg
    assert "$XOPD_TASKS_PATH" in msg and "\n" not in msg


# --- (d) local paths and zoo names are unaffected ----------------------------------------------------------


def test_local_model_dir_resolves_offline(offline, tmp_path):
    from transformers import LlamaConfig

    from xopd.loading import resolve_config

    cfg = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    cfg.save_pretrained(tmp_path)
    path, config = resolve_config(str(tmp_path), trust_remote_code=False)
    assert path == str(tmp_path) and config.model_type == "llama"


def test_local_dataset_task_loads_offline(offline, tmp_path, monkeypatch):
    from evalsuite.tasks import load_task

    _task_file(tmp_path, "offline_local", str(HUB_GSM8K))
    monkeypatch.setenv("XOPD_TASKS_PATH", str(tmp_path))
    task = load_task("offline_local")
    assert [i.answer for i in task.items] == ["29", "1500", "210"]


@pytest.mark.slow
def test_zoo_name_resolves_offline(offline, zoo_smollm2):
    from xopd.loading import resolve_config

    path, config = resolve_config("smollm2-135m-instruct", trust_remote_code=False)
    assert Path(path) == zoo_smollm2 and config.model_type == "llama"


# --- (c) the test run's socket guard -----------------------------------------------------------------------


def test_outbound_connections_are_blocked():
    t0 = time.monotonic()
    with pytest.raises(OSError, match=r"blocked outbound connection to \('192\.0\.2\.1', 80\)"):
        socket.create_connection(("192.0.2.1", 80), timeout=1)  # TEST-NET-1: never routed
    with pytest.raises(OSError, match="blocked outbound connection"):
        socket.create_connection(("huggingface.co", 443), timeout=1)  # refused before any DNS lookup
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        with pytest.raises(OSError, match="blocked outbound connection"):
            s.connect(("192.0.2.1", 80))
        with pytest.raises(OSError, match="blocked outbound connection"):
            s.connect_ex(("192.0.2.1", 80))
    if socket.has_ipv6:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            with pytest.raises(OSError, match="blocked outbound connection"):
                s.connect(("2001:db8::1", 80))  # documentation prefix
    assert time.monotonic() - t0 < 1  # refused at once, not timed out


def test_loopback_and_unix_sockets_still_work(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]

        def echo():
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(16).upper())

        t = threading.Thread(target=echo, daemon=True)
        t.start()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
            client.sendall(b"ping")
            assert client.recv(16) == b"PING"
        t.join(5)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:  # "localhost" by name
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(("localhost", server.getsockname()[1]), timeout=5):
            pass
    path = str(tmp_path / "s.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        server.listen(1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
