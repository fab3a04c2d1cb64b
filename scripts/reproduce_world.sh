#!/usr/bin/env bash
# Rebuild the demo world from scratch and measure it: `make reproduce-world`.
#   1. the text teacher: LoRA tuning on the "tune" part of the train split, stage 1 (balanced, constant lr) and
#      stage 2 (sums/counting weighted 3x, lr decayed to 0) started from stage 1's last adapter;
#   2. the speech student's audio path: the projector aligned on spoken train-split questions, its LLM an
#      *earlier* checkpoint of the same run (stage 2, step 100: a weaker relative); phase a transcribes only,
#      phase b (seeded from a) mixes content objectives under varied instructions (xopd/world/objectives.py)
#      with behaviour alignment on spoken requests from outside the mix (xopd/world/respond_pool.py: the
#      target is the LLM's own response to the typed request), so that the student answers spoken questions
#      instead of saying them back (reports/demo/align.md);
#   3. the deltas packed into xopd/zoo/demo_world/ and the zoo's xopd-demo-teacher / xopd-demo-student rebuilt;
#   4. the measurements: `xopd-eval gap` (student vs teacher, seen + held-out voice) and `xopd-eval perception`,
#      then reports/demo/world.{json,md}.
# Every step resumes where it stopped: after an interruption, run it again. CPU cost on the 2-core machine:
# see reports/demo/world.md ("Commands"); THREADS=2 uses both cores (run nothing else beside it).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${VENV:-.venv}/bin/python
A=${WORLD_DIR:-artifacts/world}
T=${THREADS:-2}
LIMIT=${LIMIT:-160}  # test items per task: 4 tasks x 160 = 640 paired items (the issue asks >= 600)
STUDENT_LLM=${STUDENT_LLM:-$A/teacher2/step-000100}  # an earlier checkpoint of the same run, ~10 points below
TEACHER_STEP=${TEACHER_STEP:-000500}
ALIGN_STEPS=${ALIGN_STEPS:-967}    # phase a: transcription only
# phase b: content objectives + behaviour requests; 0 = none, which is what xopd/zoo/demo_world ships today
# (the phase-b run is under way: reports/demo/align.md)
ALIGN_B_STEPS=${ALIGN_B_STEPS:-0}
AUTOCAST=${AUTOCAST:-bf16}  # alignment's training step in bf16 (1.4x on AMX CPUs); "none" where bf16 is slow
export XOPD_HOME=${XOPD_HOME:-$PWD/.xopd-home}

log() { echo "[reproduce-world $(date +%H:%M:%S)] $*"; }

log "1/4 teacher, stage 1"
$PY -m xopd.world.tune_teacher --out "$A/teacher" --threads "$T" --max-steps 700
log "1/4 teacher, stage 2"
$PY -m xopd.world.tune_teacher --out "$A/teacher2" --init-adapter "$A/teacher/step-000700" \
  --task-weights sums=3,counting=3 --schedule linear --warmup 20 --max-steps 500 --save-every 50 --threads "$T"

VOICES=hibari,hibari-slow,hibari-fast,flite-slt,flite-rms,flite-awb,clean
log "2/4 alignment of the student's projector (LLM: $STUDENT_LLM), phase a: transcribe"
$PY -m xopd.world.align --out "$A/align2" --llm-adapter "$STUDENT_LLM" --objectives transcribe --respond-from none \
  --voices "$VOICES" --batch-size 8 --lr 2e-3 --warmup 50 --max-steps "$ALIGN_STEPS" --save-every 50 \
  --eval-every 250 --eval-limit 8 --threads "$T" --autocast "$AUTOCAST" --no-export
AUDIO="$A/align2/step-$(printf %06d "$ALIGN_STEPS")"
if [ "$ALIGN_B_STEPS" -gt 0 ]; then
log "2/4 alignment, phase b: content objectives + behaviour requests"
$PY -m xopd.world.align --out "$A/align4" --llm-adapter "$STUDENT_LLM" \
  --init-trainable "$A/align2/step-$(printf %06d "$ALIGN_STEPS")/trainable.safetensors" \
  --voices "$VOICES" --batch-size 8 --lr 1e-3 --warmup 20 --max-steps "$ALIGN_B_STEPS" --save-every 25 \
  --eval-every 100 --eval-limit 8 --threads "$T" --autocast "$AUTOCAST" --no-export
AUDIO="$A/align4/step-$(printf %06d "$ALIGN_B_STEPS")"
fi

log "3/4 pack the deltas, rebuild the zoo entries"
$PY -m xopd.world.ship --teacher "$A/teacher2/step-$TEACHER_STEP" --student-llm "$STUDENT_LLM" \
  --student-audio "$AUDIO"
rm -rf "$XOPD_HOME/zoo/xopd-demo-teacher" "$XOPD_HOME/zoo/xopd-demo-student"
${VENV:-.venv}/bin/xopd-eval zoo build xopd-demo-teacher xopd-demo-student

log "4/4 measure"
${VENV:-.venv}/bin/xopd-eval gap --model xopd-demo-student --teacher xopd-demo-teacher \
  --variants hibari,flite-kal --limit "$LIMIT" --output "$A/gap"
${VENV:-.venv}/bin/xopd-eval perception --model xopd-demo-student --variants hibari --limit "$LIMIT" \
  --output "$A/perception"
$PY -m xopd.world.report --gap "$A/gap/report.json" --perception "$A/perception/report.json" \
  --out reports/demo/world
log "done: reports/demo/world.md"
