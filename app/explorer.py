"""The Streamlit script behind ``xopd-app``: the log directory, the run picker, and the four pages.

Run it through ``xopd-app --logdir DIR`` (which binds 127.0.0.1 and passes ``--logdir`` after ``--``), or in
tests through ``streamlit.testing.v1.AppTest`` with ``$XOPD_APP_LOGDIR`` set. Pages live in ``app/views/``;
each reads the chosen run through :mod:`app.state` and never writes.
"""

from __future__ import annotations

import streamlit as st

from analysis.logs import LogError
from app import state
from app.controls import choose
from app.runs import find_runs

st.set_page_config(page_title="xopd explorer", page_icon=":material/biotech:", layout="wide")

try:
    root = state.logdir()
except LogError as exc:
    st.error(str(exc))
    st.stop()

runs = find_runs(root)
st.sidebar.caption(f"log directory `{root}`")
if len(runs) > 1:
    state_run = choose("run", runs, key="xo_run_pick", param="run")
else:
    state_run = runs[0]
    if st.query_params.get("run", runs[0]) != runs[0]:
        st.warning(f"The link asks for run {st.query_params.get('run')!r}, which is not in this log "
                   "directory.")
st.session_state[state.RUN_KEY] = state_run

pages = [
    st.Page("views/rollouts.py", title="Rollouts", icon=":material/manage_search:", default=True),
    st.Page("views/compare.py", title="Compare", icon=":material/compare:"),
    st.Page("views/training.py", title="Training", icon=":material/monitoring:"),
    st.Page("views/gap.py", title="Gap", icon=":material/bar_chart:"),
]
st.navigation(pages).run()
