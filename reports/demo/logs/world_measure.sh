#!/usr/bin/env bash
# after alignment stops: ship its last checkpoint, rebuild the zoo entries, measure gap + perception, report
set -euo pipefail
cd /work/main
while pgrep -f "xopd.world.align" >/dev/null; do sleep 10; done
export XOPD_HOME=/work/main/.xopd-home VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_KVCACHE_SPACE=2
STEP=$(.venv/bin/python -c "import torch; print(torch.load('artifacts/world/align2/state.pt', weights_only=True)['checkpoint'])")
echo "[chain $(date +%T)] shipping align2/$STEP"
.venv/bin/python -m xopd.world.ship --teacher artifacts/world/teacher2/step-000500 \
  --student-llm artifacts/world/teacher2/step-000100 --student-audio artifacts/world/align2/$STEP
.venv/bin/xopd-eval zoo build xopd-demo-teacher xopd-demo-student
echo "[chain $(date +%T)] gap"
/usr/bin/time -v .venv/bin/xopd-eval gap --model xopd-demo-student --teacher xopd-demo-teacher \
  --variants hibari,flite-kal --limit 160 --output artifacts/world/gap
echo "[chain $(date +%T)] perception"
/usr/bin/time -v .venv/bin/xopd-eval perception --model xopd-demo-student --variants hibari --limit 160 \
  --output artifacts/world/perception
.venv/bin/python -m xopd.world.report --gap artifacts/world/gap/report.json \
  --perception artifacts/world/perception/report.json --out reports/demo/world
echo "[chain $(date +%T)] done"
