#!/usr/bin/env bash
# after alignment v8 stops: ship its last checkpoint, rebuild the zoo entries, measure gap + perception, report
# (gap on 160 items per task and two voices, perception on 80 per task: session time)
set -euo pipefail
cd /work/main
RUN=${RUN:-artifacts/world/align8}
while pgrep -f "xopd.world.align" >/dev/null; do sleep 10; done
export XOPD_HOME=/work/main/.xopd-home VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_KVCACHE_SPACE=2
STEP=${STEP:-$(.venv/bin/python -c "import torch; print(torch.load('$RUN/state.pt', weights_only=True)['checkpoint'])")}
echo "[measure $(date +%T)] shipping $RUN/$STEP"
.venv/bin/python -m xopd.world.ship --teacher artifacts/world/teacher2/step-000500 \
  --student-llm artifacts/world/teacher2/step-000100 --student-audio $RUN/$STEP
rm -rf .xopd-home/zoo/xopd-demo-teacher .xopd-home/zoo/xopd-demo-student
.venv/bin/xopd-eval zoo build xopd-demo-teacher xopd-demo-student
echo "[measure $(date +%T)] gap"
/usr/bin/time -v .venv/bin/xopd-eval gap --model xopd-demo-student --teacher xopd-demo-teacher \
  --variants hibari,flite-kal --limit 160 --output artifacts/world/gap8
echo "[measure $(date +%T)] perception"
/usr/bin/time -v .venv/bin/xopd-eval perception --model xopd-demo-student --variants hibari --limit 80 \
  --output artifacts/world/perception8
.venv/bin/python -m xopd.world.report --gap artifacts/world/gap8/report.json \
  --perception artifacts/world/perception8/report.json --out reports/demo/world
echo "[measure $(date +%T)] done"
