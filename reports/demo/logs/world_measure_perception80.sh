#!/usr/bin/env bash
# the rest of measure_chain.sh after the gap run, with perception on 80 items per task (session time)
set -euo pipefail
cd /work/main
while pgrep -f "xopd-eval gap" >/dev/null; do sleep 5; done
export XOPD_HOME=/work/main/.xopd-home VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_KVCACHE_SPACE=2
echo "[chain2 $(date +%T)] perception"
/usr/bin/time -v .venv/bin/xopd-eval perception --model xopd-demo-student --variants hibari --limit 80 \
  --output artifacts/world/perception
.venv/bin/python -m xopd.world.report --gap artifacts/world/gap/report.json \
  --perception artifacts/world/perception/report.json --out reports/demo/world
echo "[chain2 $(date +%T)] done"
