#!/usr/bin/env bash
# 2026-12-07 afternoon: the same measurement of the shipped step-967 student, rerun after the evalsuite began to
# score a response that only restates the question as an extraction failure (restates-question). Every
# generation comes from the cache of the first run (same model, prompts and params), so only the scoring is new.
set -euo pipefail
cd /work/main
export XOPD_HOME=/work/main/.xopd-home VLLM_CPU_OMP_THREADS_BIND=0-1 VLLM_CPU_NUM_OF_RESERVED_CPU=0 VLLM_CPU_KVCACHE_SPACE=2
echo "[rescore $(date +%T)] gap"
.venv/bin/xopd-eval gap --model xopd-demo-student --teacher xopd-demo-teacher \
  --variants hibari,flite-kal --limit 160 --output artifacts/world/gap
echo "[rescore $(date +%T)] perception"
.venv/bin/xopd-eval perception --model xopd-demo-student --variants hibari --limit 80 \
  --output artifacts/world/perception
echo "[rescore $(date +%T)] done"
