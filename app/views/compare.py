"""Compare page: the text and the speech rollouts of one prompt side by side, on one colour scale."""

from __future__ import annotations

import streamlit as st

from analysis.logs import LogError
from app import state
from app.controls import choose, display_controls
from app.rollout_view import (
    present_fields,
    rollout_numbers,
    shared_limit,
    show_legend,
    show_prompt,
    show_tokens,
)

st.header("Compare text and speech")
st.caption("The same prompt, read (left) and heard (right): where does the student leave the teacher only "
           "when it listens? Both sides share one colour scale.")
run = state.current_run()
log = state.require_rollout_log(run, ".")
state.show_problems(log.problems, what="rollouts.jsonl")
if not log.entries:
    st.warning("The rollout log has no readable rollouts yet.")
    st.stop()

# steps with at least one prompt in both modalities
both: dict[int, list[str]] = {}
for s in log.steps():
    at = log.select(step=s)
    text = {e.prompt_id for e in at if e.modality == "text"}
    speech = {e.prompt_id for e in at if e.modality == "speech"}
    if text & speech:
        both[s] = sorted(text & speech)
if not both:
    st.warning("No prompt has both a text and a speech rollout at the same step in this log "
               f"(modalities logged: {', '.join(log.modalities())}).")
    st.stop()

steps = sorted(both)
step = choose("step", steps, key="cmp_step", param="step", parse=int, default=steps[-1])
prompt = choose("prompt", both[step], key="cmp_prompt", param="prompt")
of_prompt = log.select(step=step, prompt_id=prompt)
sides = {}
for modality in ("text", "speech"):
    samples = sorted({e.sample for e in of_prompt if e.modality == modality})
    sample = choose(f"{modality} sample", samples, key=f"cmp_sample_{modality}", param=f"{modality}_sample",
                    parse=int)
    sides[modality] = next(e for e in of_prompt if e.modality == modality and e.sample == sample)

records = {}
for modality, entry in sides.items():
    try:
        records[modality] = state.read_record(log, entry)
    except LogError as exc:
        st.error(f"Cannot read the {modality} rollout: {exc}")
if len(records) < 2:
    st.stop()

field, limit, raw = display_controls("cmp", present_fields(list(records.values())))
if limit is None:
    limit = shared_limit(list(records.values()), field)
st.subheader(prompt, anchor=False)
kl = {m: r.get("reverse_kl") for m, r in records.items()}
if all(isinstance(v, int | float) for v in kl.values()):
    st.caption(f"step {step} · reverse KL text {kl['text']:.4f}, speech {kl['speech']:.4f} "
               f"(speech − text {kl['speech'] - kl['text']:+.4f}) · colour scale ±{limit:g}")
st.dataframe(
    [{"modality": m, "sample": r["sample"], **rollout_numbers(r)} for m, r in records.items()],
    hide_index=True,
)
cols = dict(zip(("text", "speech"), st.columns(2, gap="large"), strict=True))
for modality, col in cols.items():
    rec = records[modality]
    with col:
        icon = ":material/article:" if modality == "text" else ":material/hearing:"
        st.markdown(f"#### {icon} {modality} · sample {rec['sample']}")
        show_prompt(run, rec, compact=True)
show_legend(field, limit)
# the completions in a row of their own, so they start at the same height whatever the prompts' lengths
for modality, col in zip(cols, st.columns(2, gap="large"), strict=True):
    with col:
        show_tokens(records[modality], field=field, limit=limit, raw=raw, key=f"cmp_{modality}", legend=False)
