"""SQL: a console over a results database, read-only with file access switched off, within limits."""

import time

import pandas as pd
import streamlit as st

from tridentcore.store import statement_count
from workbench import access, data, figures, stored

access.gate()

EXAMPLE_PROMPT = "— pick an example —"

st.title("SQL console")
st.caption("DuckDB over a results database, opened read-only with external access off: SQL cannot write the "
           "database, read or write files, or attach other databases. A query may use "
           f"{stored.SQL_MEMORY_LIMIT} of memory and {stored.SQL_MAX_SPILL} of temporary files, runs for at most "
           f"{stored.SQL_TIMEOUT_S:g} s, and shows at most {stored.SQL_MAX_ROWS:,} rows; it runs in a process of its "
           f"own, stopped past {stored.SQL_MAX_GROWTH / 1024**3:g} GiB of memory. "
           "Tables, views and columns: results/README.md.")

path = access.database_picker("Results database", "sql_db")
if path is None:
    st.stop()
examples = dict(data.sql_examples())


def _use_example() -> None:
    title = st.session_state.get("sql_example")
    if title in examples:
        st.session_state["sql_text"] = examples[title]


st.selectbox("Examples", [EXAMPLE_PROMPT, *examples], key="sql_example", on_change=_use_example)
st.session_state.setdefault("sql_text", "SELECT * FROM run_summary ORDER BY created_at DESC LIMIT 20")
sql = st.text_area("Query", key="sql_text", height=200).strip()
if not sql:
    st.stop()
try:
    sig = data.db_signature(path)
except FileNotFoundError as exc:  # named with --db but not written yet: where one comes from
    st.info(data.error_text(exc))
    st.stop()
except OSError as exc:  # a folder
    st.error(data.plain_markdown(data.error_text(exc)))
    st.stop()
running = st.empty()
try:
    t0 = time.perf_counter()
    # each update of the line is where Stop, a reload or a closed tab ends the page and the query's child
    with data.sql_waiting(lambda s: running.caption(f"running the query: {s:.0f} s (Stop, top right, ends it)")):
        capped = data.cached_sql(sig, sql)
    took = time.perf_counter() - t0
    running.empty()
except Exception as exc:  # permission, syntax, catalog, interrupt, limits: a message, no traceback
    running.empty()  # (its "running the query" line stayed above the error)
    # wrapped at the box's width; DuckDB's pointer into the query ("LINE 1: ... ^^^") below it
    message, _, where = data.error_text(exc).partition("\n\nLINE ")
    st.error("The query failed: " + data.plain_markdown(message))
    if where:
        st.code("LINE " + where, language=None, wrap_lines=True)
    st.stop()

result = capped.frame
if capped.truncated:
    st.warning(f"Showing the first {capped.max_rows:,} rows: the result has more. The console keeps at most "
               f"{capped.max_rows:,}; aggregate, filter or add a LIMIT, or query the file with `duckdb -readonly`.")
st.caption(f"{len(result):,}{'+' if capped.truncated else ''} rows × {len(result.columns)} columns in "
           f"{took * 1000:.0f} ms")
if (statements := statement_count(sql)) > 1:
    st.info(f"{statements} statements: the result shown is the last one's; run one at a time to see each.")
st.dataframe(data.exact_for_display(result), width="stretch", hide_index=True)
st.download_button("Download CSV" + (f" (the first {capped.max_rows:,} rows)" if capped.truncated else ""),
                   data=lambda: result.to_csv(index=False), file_name="query.csv", mime="text/csv", key="sql_csv",
                   on_click="ignore")

numeric = [c for c in result.columns if (pd.api.types.is_numeric_dtype(result[c]) and not pd.api.types.is_bool_dtype(result[c]))
           or pd.api.types.is_timedelta64_dtype(result[c])]  # (durations: charted in seconds)
if numeric and len(result.columns) >= 2 and not result.empty:
    st.subheader("Quick chart")
    c1, c2, c3 = st.columns([1, 2, 3])
    kind = c1.selectbox("Chart", figures.CHART_KINDS, key="sql_kind")
    columns = [str(c) for c in result.columns]
    shape_key = abs(hash(tuple(columns)))  # new columns: fresh axis pickers, not stale ones
    labels = [c for c in columns if c not in numeric]
    x = c2.selectbox("x", columns, index=columns.index(labels[0]) if labels else 0, key=f"sql_x_{shape_key}")
    choices = [c for c in numeric if c != x]
    varying = [c for c in choices if result[c].nunique(dropna=True) > 1]  # a constant column makes a dull default
    ys = c3.multiselect("y", choices, default=(varying or choices)[:1], key=f"sql_y_{shape_key}_{x}")
    if ys:
        st.plotly_chart(figures.quick_chart(result, x, ys, kind), width="stretch")
