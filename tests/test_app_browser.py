"""The explorer in a real browser: ``xopd-app`` serving a tiny trainer log on localhost, headless Chromium
(the Debian ``chromium`` package) deep-linked to a speech rollout. The DOM must hold the coloured token spans
and an ``<audio>`` element; a screenshot is kept as a test artefact (the pytest tmp dir and
``artifacts/test-screenshots/``) and must show the colour legend."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = ROOT / "artifacts" / "test-screenshots"
# Streamlit renders over a websocket after the page loads; these let headless Chromium wait for it
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=60000",
                "--run-all-compositor-stages-before-draw", "--hide-scrollbars"]
TRIES = 6  # virtual time can run out before a busy server has finished the script: try again

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package: chromium)"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *CHROME_FLAGS, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_log(tmp_path_factory) -> Path:
    import torch

    from xopd.config import load_config
    from xopd.trainer import train

    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("browser") / "run"
    cfg = load_config(ROOT / "recipes" / "tiny.yaml",
                      [f"output_dir={out}", "logging.progress=false", "schedule.steps=2",
                       "schedule.batch_prompts=2", "eval.at_start=false", "checkpoint.every=0"])
    train(cfg)
    return out


@pytest.fixture(scope="module")
def server(tiny_log):
    """``xopd-app --logdir <tiny log> --port <free>``; stopped (its process group) at teardown."""
    port = free_port()
    exe = Path(sys.executable).with_name("xopd-app")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "app.cli"]
    log = (tiny_log.parent / "server.log").open("w")
    proc = subprocess.Popen([*cmd, "--logdir", str(tiny_log), "--port", str(port)], stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            assert proc.poll() is None, (tiny_log.parent / "server.log").read_text()
            try:
                if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            assert time.time() < deadline, "xopd-app did not come up in 90 s"
            time.sleep(0.5)
        chromium("--dump-dom", url)  # the first session imports pandas, altair...: warm the server up
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def speech_link(base: str, log: Path) -> tuple[str, dict]:
    recs = [json.loads(x) for x in (log / "rollouts.jsonl").read_text().splitlines()]
    rec = next(r for r in recs if r["modality"] == "speech" and r["step"] == 2)
    q = {"step": rec["step"], "prompt": rec["prompt_id"], "modality": "speech", "sample": rec["sample"]}
    return f"{base}/?{urllib.parse.urlencode(q)}", rec


def test_speech_rollout_in_chromium(server, tiny_log, tmp_path):
    from PIL import Image

    url, rec = speech_link(server, tiny_log)
    dom = ""
    for attempt in range(TRIES):
        started = time.time()
        dom = chromium("--dump-dom", url).stdout
        print(f"dump-dom attempt {attempt}: {time.time() - started:.1f} s")
        if 'data-test-script-state="notRunning"' in dom and 'class="xo-tokens"' in dom and "<audio" in dom:
            break
    assert 'class="xo-tokens"' in dom, "no token view in the rendered page"
    assert "<audio" in dom, "no audio element for the speech rollout"
    assert rec["prompt_id"] in dom
    body = dom[dom.index('class="xo-tokens"'):]
    body = body[: body.index("</div>")]
    assert body.count('<span class="xo-d') + body.count('<span class="xo-na') >= 1  # colour runs
    pieces = rec["tokens"]["piece"]
    assert body.count("<span title=") == sum(1 for p in pieces if p) + (pieces[-1] == "")  # one per token
    assert "teacher top-" in body and "teacher lp" in body  # the tooltips reached the page intact

    # the screenshot: the legend's two ends of the diverging palette must be on it
    shot = tmp_path / "app-speech-rollout.png"
    for attempt in range(TRIES):
        started = time.time()
        chromium(f"--screenshot={shot}", "--window-size=1400,1000", url)
        print(f"screenshot attempt {attempt}: {time.time() - started:.1f} s")
        img = Image.open(shot).convert("RGB")
        colours = {c for _, c in img.getcolors(1 << 22)}
        if {(0xB2, 0x18, 0x2B), (0x21, 0x66, 0xAC)} <= colours:
            break
    assert (0xB2, 0x18, 0x2B) in colours and (0x21, 0x66, 0xAC) in colours, f"legend not rendered in {shot}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, SHOTS / shot.name)
