"""Gap page: the evalsuite's gap and forgetting reports found under the run, as charts over training steps."""

from __future__ import annotations

import streamlit as st

from app import charts, state
from app.series import OVERALL, forgetting_frames, gap_frames
from evalsuite.reports.forgetting import format_forgetting_markdown
from evalsuite.reports.gap import format_gap_markdown

st.header("Gap")
run = state.current_run()
problems: list[str] = []
reports = run.reports(problems)
state.show_problems(problems, what="report.json files")
if not reports:
    st.info(f"No `xopd-eval` reports under `{run.root}`. The trainer writes `evals/step-NNNNNN/report.json` "
            "when `eval.gap_tasks` is set; `xopd-eval gap --output DIR` and `xopd-eval forgetting` write "
            "one too.")
    st.stop()

shape_problems: list[str] = []
acc, gap = gap_frames(reports, run.root, shape_problems)
forget, asr = forgetting_frames(reports, run.root, shape_problems)
state.show_problems(shape_problems, what="report contents")

if not acc.empty:
    tasks = [OVERALL, *sorted(set(acc["task"]) - {OVERALL})]
    task = st.selectbox("task", tasks, key="gap_task",
                        format_func=lambda t: "overall (macro mean over tasks)" if t == OVERALL else t)
    a, g = acc[acc["task"] == task], gap[gap["task"] == task]
    left, right = st.columns(2, gap="large")
    with left:
        st.markdown("**Accuracy by mode**")
        st.altair_chart(charts.accuracy(a), width="stretch")
    with right:
        st.markdown("**Gap = text − speech** (same items; 95% paired bootstrap CI)")
        if g.empty:
            st.info("No speech mode in these reports (a text-only model).")
        else:
            st.altair_chart(charts.gap(g), width="stretch")
    fails = a.dropna(subset=["extraction_fail_rate"])
    if not fails.empty:
        with st.expander("Extraction failure rate (answers the scorer could not find)"):
            st.dataframe(fails.pivot_table(index="at", columns="mode", values="extraction_fail_rate",
                                           sort=False))

if not forget.empty:
    st.divider()
    st.subheader("Forgetting: trained model − base, same items", anchor=False)
    st.altair_chart(charts.forgetting(forget), width="stretch")
    if not asr.empty:
        st.markdown("**ASR word error rate** (asked to transcribe the spoken prompts)")
        st.altair_chart(charts.word_error_rate(asr), width="stretch")

st.divider()
st.subheader("Reports", anchor=False)
labels = [f"step {s}" if s is not None else str(p.parent.relative_to(run.root)) for s, p, _ in reports]
pick = st.selectbox("report", range(len(reports)), index=len(reports) - 1, format_func=lambda i: labels[i],
                    key="gap_report")
step, path, report = reports[pick]
rel = path.relative_to(run.root)
cfg = report.get("config") if isinstance(report.get("config"), dict) else {}
st.caption(f"`{rel}` · {report.get('kind')} · model `{cfg.get('model', '?')}` · backend "
           f"{cfg.get('backend', '?')} · n per task {cfg.get('limit', '?')} · seed {cfg.get('seed', '?')}")
try:
    if report.get("kind") == "gap":
        st.markdown(format_gap_markdown(report))
    elif report.get("kind") == "forgetting":
        st.markdown(format_forgetting_markdown(report))
    else:
        st.json(report, expanded=False)
except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
    st.error(f"{rel} does not have the fields of a {report.get('kind')} report: {exc!r}")
