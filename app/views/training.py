"""Training page: divergence per modality over steps, then one step taken apart (its rollouts, where in the
completion the KL sits, which tokens the teacher disagrees with)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.aggregate import (
    DEFAULT_THRESHOLD,
    divergent_tokens,
    first_divergence,
    kl_by_modality,
    kl_by_position,
    text_vs_speech,
)
from analysis.logs import LogError, RolloutLog
from analysis.table import token_table
from app import charts, state
from app.controls import choose
from app.render import plain_text
from app.series import SOURCES, other_metrics, training_kl

MAX_STEP_TOKENS = 1_000_000  # a step's token table above this is built from its first rollouts only

st.header("Training")
run = state.current_run()
metrics, m_problems = state.step_log(run, "metrics.jsonl")
evals, e_problems = state.step_log(run, "eval.jsonl")
state.show_problems(m_problems, what="metrics.jsonl")
state.show_problems(e_problems, what="eval.jsonl")
log: RolloutLog | None = None
try:
    log = state.rollout_log(run)
except LogError as exc:
    st.error(f"Cannot open the rollout log: {exc}")
if log is not None:
    state.show_problems(log.problems, what="rollouts.jsonl")

kl = training_kl(metrics, evals, log.entries if log else [])
if kl.empty:
    st.warning(f"Nothing to plot yet: `{run.root}` has no KL numbers in metrics.jsonl, eval.jsonl or "
               "rollouts.jsonl.")
else:
    st.subheader("Reverse KL to the teacher, per modality", anchor=False)
    sources = [s for s in SOURCES.values() if s in set(kl["source"])]
    shown = st.multiselect("series", sources, default=sources, key="tr_sources")
    data = kl[kl["source"].isin(shown)]
    st.altair_chart(charts.kl_over_steps(data), width="stretch")
    st.caption(
        "Mean over tokens of student lp − teacher lp. *training batch* (metrics.jsonl): the rollouts each "
        "step trained on; *held-out eval* (eval.jsonl): prompts kept out of training, sampled at evaluation "
        "steps; *logged rollouts* (rollouts.jsonl): their token-weighted mean, the training batch again when "
        "every rollout is logged. Speech above text is the modality gap X-OPD closes."
    )
    wide = data.pivot_table(index="step", columns=["source", "modality"], values="kl")
    with st.expander("Numbers"):
        wide.columns = [f"{m} · {s}" for s, m in wide.columns]
        st.dataframe(wide)

other = other_metrics(metrics)
if not other.empty:
    with st.expander("Other training metrics (loss, grad norm, lengths, EOS rate…)"):
        names = sorted(set(other["metric"]))
        default = [n for n in ("loss", "grad_norm") if n in names]
        picked = st.multiselect("metrics", names, default=default, key="tr_metrics")
        if picked:
            st.altair_chart(charts.metrics_over_steps(other[other["metric"].isin(picked)]), width="stretch")

# ------------------------------------------------------------------------------------------------------------
# one step
# ------------------------------------------------------------------------------------------------------------
if log is None or not log.entries:
    st.info("No rollout log to take a step apart (the trainer writes rollouts.jsonl with "
            "logging.rollout_log).")
    st.stop()

st.divider()
st.subheader("One step, token by token", anchor=False)
c1, c2, c3 = st.columns([1, 1, 2])
steps = log.steps()
step = choose("step", steps, key="tr_step", param="step", parse=int, default=steps[-1], container=c1)
threshold = c2.number_input("divergence threshold (advantage <)", value=DEFAULT_THRESHOLD, step=0.5,
                            key="tr_threshold", help="A token diverges when the teacher finds it at least "
                            "e^|threshold| times less likely than the student does.")
with c3:
    st.write("")
    st.page_link("views/rollouts.py", label=f"Open step {step} in Rollouts", icon=":material/manage_search:",
                 query_params={"step": str(step)})

entries = log.select(step=step)
kept, total = [], 0
for e in entries:
    if total + e.num_tokens > MAX_STEP_TOKENS and kept:
        break
    kept.append(e)
    total += e.num_tokens
if len(kept) < len(entries):
    st.info(f"Step {step} has {len(entries)} rollouts; the aggregates use the first {len(kept)} "
            f"({total:,} tokens).")
problems: list[str] = []
records = list(log.iter_records(kept, problems=problems))
state.show_problems(problems, what=f"rollouts of step {step}")
if not records:
    st.warning(f"No readable rollouts at step {step}.")
    st.stop()
table = token_table(records, topk=False)

st.dataframe(kl_by_modality(table), hide_index=True)
fd = first_divergence(table, threshold)
fd = fd.merge(pd.DataFrame([{"prompt_id": e.prompt_id, "modality": e.modality, "sample": e.sample,
                             "reverse_kl": e.reverse_kl, "finished": e.finished} for e in kept]),
              on=["prompt_id", "modality", "sample"], how="left")
fd = fd.sort_values("reverse_kl", ascending=False, kind="stable").reset_index(drop=True)

left, right = st.columns(2, gap="large")
with left:
    st.markdown("**KL by position in the completion**")
    pos = kl_by_position(table)
    st.altair_chart(charts.kl_by_position(pos), width="stretch")
    pairs, summary = text_vs_speech(table)
    if summary["prompts"]:
        s = summary
        st.markdown(
            f"**Text vs speech** on {s['prompts']} prompt(s): KL text {s['mean_text']:.4f}, speech "
            f"{s['mean_speech']:.4f}; speech − text {s['mean_diff']:+.4f} (median {s['median_diff']:+.4f}); "
            f"speech higher on {s['speech_higher']:.0%} of prompts."
        )
with right:
    st.markdown(f"**Tokens the teacher disagrees with most** (mean advantage, step {step})")
    toks = divergent_tokens(table, top=15)
    toks["piece"] = toks["piece"].map(lambda p: f"“{plain_text(str(p))}”")
    st.dataframe(toks, hide_index=True, height=300)

st.markdown(f"**Rollouts of step {step}**, most divergent first — select a row to open it")
picked = st.dataframe(fd, hide_index=True, on_select="rerun", selection_mode="single-row", key="tr_rollouts")
rows = picked.selection.rows if picked is not None and hasattr(picked, "selection") else []
if rows:
    r = fd.iloc[rows[0]]
    st.switch_page("views/rollouts.py", query_params={"step": str(step), "prompt": r["prompt_id"],
                                                      "modality": r["modality"], "sample": str(r["sample"])})
