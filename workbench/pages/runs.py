"""Runs: stored runs from a results database (read-only), filtered; diff two; download one as Parquet."""

import pandas as pd
import streamlit as st

from workbench import access, data, figures

access.gate()

SUMMARY_ROWS = ("requests", "done", "rejected", "failed", "met", "attainment", "mean_s", "p50_s", "p95_s", "p99_s",
                "ooms", "preemptions", "dispatches", "gpu_s", "gpu_s_per_met")
CONFIG_COLS = ("backend", "policy", "seed", "profile", "cluster", "mix", "rate_rps", "duration_s", "slo_scale", "status",
               "git_sha")

st.title("Stored runs")
path = access.database_picker("Results database (opened read-only)", "runs_db")
if path is None:
    st.stop()
try:
    with st.spinner(f"Reading {access.database_label(path)} (waiting while another process writes it)"):
        sig = data.db_signature(path)
        runs = data.cached_runs(sig)
except FileNotFoundError as exc:  # named with --db but not written yet: where one comes from
    st.info(data.error_text(exc))
    st.stop()
except Exception as exc:  # a locked or foreign file: say so, no traceback
    st.error(data.plain_markdown(data.error_text(exc)))
    st.stop()
if runs.empty:
    st.info(f"{access.database_label(path)} holds no runs yet.")
    st.stop()

# ---------------------------------------------------------------------------------- filters
with st.expander("Filters", expanded=True):
    cols = st.columns(4)
    keep = pd.Series(True, index=runs.index)
    for col, name in zip(cols, ("policy", "backend", "mix", "cluster")):
        values = sorted(runs[name].astype(str).unique())
        chosen = col.multiselect(name, values, key=f"runs_f_{name}")
        if chosen:
            keep &= runs[name].astype(str).isin(chosen)
    text = st.text_input("run id contains", "", key="runs_f_text").strip()
    if text:
        keep &= runs["run_id"].str.contains(text, case=False, regex=False)
shown = runs[keep]
st.caption(f"{len(shown)} of {len(runs)} runs, newest first")
gone = data.servers_gone(path, runs.loc[runs["status"] == "running", "run_id"])
if gone:  # (outside test 103: a killed server's run read as live, its rate and duration frozen)
    more = f" and {len(gone) - 10} more" if len(gone) > 10 else ""
    st.warning(data.plain_markdown(
        f"Stored as running, but its server is gone (its journal is held by no process): {', '.join(gone[:10])}{more}. "
        f"`trident runs recover --db {path}` stores what its journal holds and closes it as crashed."))
st.dataframe(shown.iloc[::-1], width="stretch", hide_index=True)  # (outside test: 235 runs, the newest at the bottom)
if shown.empty:
    st.stop()

# ---------------------------------------------------------------------------------- diff
st.subheader("Diff two runs")
ids = list(shown["run_id"])
label = {r.run_id: f"{r.policy} · {r.rate_rps:.3g} req/s · {r.run_id}" for r in shown.itertuples()}
c1, c2 = st.columns(2)
a = c1.selectbox("Run A", ids, index=max(len(ids) - 2, 0), format_func=label.get, key="runs_a")
b = c2.selectbox("Run B", ids, index=len(ids) - 1, format_func=label.get, key="runs_b")
try:  # one cached query per run: picking another A re-reads only A
    summ = pd.concat([data.cached_summaries(sig, [r]) for r in (a, b)]).drop_duplicates("run_id").set_index("run_id")
    by_class = pd.concat([data.cached_class_attainment(sig, [r]) for r in dict.fromkeys((a, b))], ignore_index=True)
    stages = pd.concat([data.cached_stage_breakdown(sig, [r]) for r in dict.fromkeys((a, b))], ignore_index=True)
    lat_a, lat_b = data.cached_latencies(sig, a), data.cached_latencies(sig, b)
except Exception as exc:
    st.error(data.error_text(exc))
    st.stop()

names = {a: "A", b: "B"} if a != b else {a: "A"}
table = pd.DataFrame({"A": summ.loc[a, list(SUMMARY_ROWS)], "B": summ.loc[b, list(SUMMARY_ROWS)]})
table["B − A"] = pd.to_numeric(table["B"], errors="coerce") - pd.to_numeric(table["A"], errors="coerce")
conf = runs.set_index("run_id").loc[[a, b], list(CONFIG_COLS)].T
conf.columns = ["A", "B"]
differs = conf[conf["A"].astype(str) != conf["B"].astype(str)]
left, right = st.columns([2, 3])
with left:
    st.dataframe(table.astype(float).round(3), width="stretch", height=36 * (len(table) + 1) + 3)
    if a == b:
        st.caption("A and B are the same run.")
    elif differs.empty:
        st.caption("Same configuration (policy, workload, cluster, rate, SLO scale, seed).")
    else:
        st.caption("Configuration that differs:")
        st.dataframe(differs.astype(str), width="stretch")
with right:
    st.plotly_chart(figures.latency_cdf({f"A: {label[a]}": lat_a, f"B: {label[b]}": lat_b}), width="stretch")
by_class["run"] = by_class["run_id"].map(names)
st.plotly_chart(figures.class_attainment(by_class[["run", "request_class", "attainment"]]), width="stretch")
with st.expander("Stage breakdown"):
    stages.insert(0, "run", stages["run_id"].map(names))
    st.dataframe(stages.drop(columns=["run_id"]), width="stretch", hide_index=True)

# ---------------------------------------------------------------------------------- download
# Made on a click, in the run before the page is drawn again (``_prepare``), for the run picked when
# it was clicked: a file made only as the browser asks for it (Streamlit's deferred download) could
# not say why it failed, and a run deleted meanwhile gave no file and no word (outside test 103).
def _prepare(db: str, run_id: str) -> None:
    try:
        st.session_state["runs_zip"] = (db, run_id, data.run_zip(data.db_signature(db), run_id))
    except Exception as exc:  # a run deleted since the page was drawn, a file replaced or locked
        st.session_state.pop("runs_zip", None)
        st.session_state["runs_zip_error"] = f"No zip of run {run_id}: {data.error_text(exc)}"


st.subheader("Download")
pick = st.selectbox("Run", ids, index=len(ids) - 1, format_func=label.get, key="runs_dl")
st.button("Make a Parquet zip (one file per table)", key="runs_dl_make", on_click=_prepare, args=(str(path), pick))
if "runs_zip_error" in st.session_state:
    st.error(data.plain_markdown(st.session_state.pop("runs_zip_error")))
made = st.session_state.get("runs_zip")
if made is not None and made[:2] == (str(path), pick):
    st.download_button(f"Download {pick}.zip ({len(made[2]) / 1e6:.2f} MB)", data=made[2], file_name=f"{pick}.zip",
                       mime="application/zip", key="runs_dl_button", on_click="ignore")
elif made is not None:  # another run or file picked since: not kept
    del st.session_state["runs_zip"]
