"""TridentServe workbench: `streamlit run app.py`.

Thin entry point: the pages live in ``workbench/pages/``, their data in ``workbench/data.py`` and
their figures in ``workbench/figures.py``. Off loopback the workbench asks for a password first
(``workbench.access.gate``); ``streamlit run app.py -- --db PATH`` names more results databases
the Runs and SQL pages may open besides those under ``results/``.
"""

import streamlit as st

from workbench import access

# an emoji: the browser draws it itself (a ":material/..." page icon is fetched from fonts.gstatic.com,
# a request to another host from a tool that serves loopback; outside test 103)
st.set_page_config(page_title="TridentServe workbench", page_icon="\N{TRIDENT EMBLEM}", layout="wide")
access.gate()  # before any page, and before the navigation names them

pages = [
    st.Page("workbench/pages/compare.py", title="Compare", icon=":material/compare_arrows:", default=True),
    st.Page("workbench/pages/profiles.py", title="Profiles", icon=":material/straighten:"),
    st.Page("workbench/pages/live.py", title="Live", icon=":material/monitor_heart:"),
    st.Page("workbench/pages/runs.py", title="Runs", icon=":material/folder_open:"),
    st.Page("workbench/pages/sql.py", title="SQL", icon=":material/terminal:"),
]
st.navigation(pages).run()
