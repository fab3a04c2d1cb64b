#!/usr/bin/env bash
# Screenshot a page of the explorer: serve LOGDIR with xopd-app on a free localhost port and capture /?QUERY
# with headless Chromium (retried until the page has drawn its colour legend).
# usage: scripts/screenshot.sh LOGDIR OUT.png "step=6&prompt=<id>&modality=speech&sample=0"
set -euo pipefail
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
setsid .venv/bin/xopd-app --logdir "$1" --port "$port" > "${TMPDIR:-/tmp}/xopd-shot-server.log" 2>&1 & pid=$!
trap 'kill -- -$pid 2>/dev/null || true' EXIT
for i in $(seq 90); do curl -sf "http://127.0.0.1:$port/_stcore/health" >/dev/null && break; sleep 1; done
F=(--headless --no-sandbox --disable-gpu --virtual-time-budget=60000 --run-all-compositor-stages-before-draw --hide-scrollbars)
chromium "${F[@]}" --dump-dom "http://127.0.0.1:$port/?$3" > /dev/null 2>&1   # warm-up
for i in 1 2 3 4; do
  chromium "${F[@]}" --dump-dom "http://127.0.0.1:$port/?$3" 2>/dev/null > "${TMPDIR:-/tmp}/xopd-shot-dom.html"
  grep -q 'xo-tokens' "${TMPDIR:-/tmp}/xopd-shot-dom.html" && grep -q '<audio' "${TMPDIR:-/tmp}/xopd-shot-dom.html" && break
done
for i in $(seq 8); do
  chromium "${F[@]}" --screenshot="$2" --window-size=1400,1000 "http://127.0.0.1:$port/?$3" 2>/dev/null
  .venv/bin/python -c "
from PIL import Image; import sys
c={x for _, x in Image.open(sys.argv[1]).convert('RGB').getcolors(1<<22)}
sys.exit(0 if {(0xB2,0x18,0x2B),(0x21,0x66,0xAC)} <= c else 1)" "$2" && { echo "screenshot ok after $i tries"; break; }
done
echo "spans: $(grep -o 'class="xo-d' "${TMPDIR:-/tmp}/xopd-shot-dom.html" | wc -l), audio: $(grep -c '<audio' "${TMPDIR:-/tmp}/xopd-shot-dom.html")"
