"""TridentServe workbench: `streamlit run app.py`.

Thin entry point: the pages live in ``workbench/pages/``, their data in ``workbench/data.py`` and
their figures in ``workbench/figures.py``.
"""

import streamlit as st

st.set_page_config(page_title="TridentServe workbench", page_icon=":material/hub:", layout="wide")

pages = [
    st.Page("workbench/pages/compare.py", title="Compare", icon=":material/compare_arrows:", default=True),
    st.Page("workbench/pages/profiles.py", title="Profiles", icon=":material/straighten:"),
    st.Page("workbench/pages/live.py", title="Live", icon=":material/monitor_heart:"),
    st.Page("workbench/pages/runs.py", title="Runs", icon=":material/folder_open:"),
    st.Page("workbench/pages/sql.py", title="SQL", icon=":material/terminal:"),
]
st.navigation(pages).run()
