"""Rollouts page: one rollout, token by token -- pick step, prompt, modality and sample in the sidebar."""

from __future__ import annotations

import streamlit as st

from analysis.logs import LogError
from analysis.table import token_table
from app import state
from app.controls import choose, display_controls
from app.render import plain_text
from app.rollout_view import present_fields, show_numbers, show_prompt, show_tokens

st.header("Rollouts")
run = state.current_run()
log = state.require_rollout_log(run, ": the trainer writes it when `logging.rollout_log` is on. "
                                     "The Training and Gap pages may still have something to show.")
state.show_problems(log.problems, what="rollouts.jsonl")
if not log.entries:
    st.warning("The rollout log has no readable rollouts yet.")
    st.stop()

step = choose("step", log.steps(), key="ro_step", param="step", parse=int, default=log.steps()[-1])
at_step = log.select(step=step)
kl_of: dict[str, list[float]] = {}
for e in at_step:
    if e.reverse_kl is not None:
        kl_of.setdefault(e.prompt_id, []).append(e.reverse_kl)
prompts = sorted({e.prompt_id for e in at_step})
prompt = choose("prompt", prompts, key="ro_prompt", param="prompt",
                fmt=lambda p: f"{p}  · KL {max(kl_of[p]):.3f}" if p in kl_of else p,
                help="Sorted by id; the number is the largest reverse KL among the prompt's rollouts.")
of_prompt = [e for e in at_step if e.prompt_id == prompt]
modalities = sorted({e.modality for e in of_prompt}, key=lambda m: (m != "speech", m))  # speech first
modality = choose("modality", modalities, key="ro_modality", param="modality", radio=True)
samples = sorted({e.sample for e in of_prompt if e.modality == modality})
sample = choose("sample", samples, key="ro_sample", param="sample", parse=int, radio=len(samples) <= 8)
entry = next(e for e in of_prompt if e.modality == modality and e.sample == sample)

try:
    rec = state.read_record(log, entry)
except LogError as exc:
    st.error(f"Cannot read this rollout: {exc}")
    st.stop()

field, limit, raw = display_controls("ro", present_fields([rec]))
st.subheader(prompt, anchor=False)
st.caption(f"step {step} · {modality} · sample {sample} · loss `{entry.kind}` · line {entry.line} of "
           f"`rollouts.jsonl` · {len(log)} rollouts in the log")
show_prompt(run, rec)
show_numbers(rec)
st.markdown("**Completion**")
show_tokens(rec, field=field, limit=limit, raw=raw, key="ro_tokens")

with st.expander("Per-token table"):
    table = token_table([rec])
    # plain_text: control characters and lone surrogates would garble (or break) the Arrow table
    table["piece"] = table["piece"].map(plain_text)
    table["teacher_topk"] = [
        "  ".join(f"“{plain_text(p)}” {q:.1%}" for p, q in alts) for alts in table["teacher_topk"]
    ]
    cols = ["position", "token_id", "piece", "advantage", "teacher_lp", "student_lp", "sampler_lp",
            "student_entropy", "teacher_entropy", "teacher_topk"]
    st.dataframe(table[[c for c in cols if not table[c].isna().all()]], hide_index=True)
