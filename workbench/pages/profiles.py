"""Profiles: stage latency and memory against resolution and frames, per model, for any profile."""

import streamlit as st

from tridentcore.core.defaults import DEFAULT_PROFILE
from tridentcore.profiles import ProfileError, load_profile, parse_profile, shipped_profiles
from workbench import access, data, figures

access.gate()

UPLOAD = "upload a CSV…"

st.title("Stage profiles")
st.caption("What the cost model knows: each stage's latency and memory as the output grows. The three stages of one "
           "pipeline differ by orders of magnitude, in compute and in memory: the discrepancy stage-level serving "
           "exploits.")

names = list(shipped_profiles())
choice = st.selectbox("Profile", names + [UPLOAD], index=names.index(DEFAULT_PROFILE) if DEFAULT_PROFILE in names else 0, key="prof_choice")
try:
    if choice == UPLOAD:
        up = st.file_uploader("Profile CSV (columns of tridentcore/profiles/data/*.csv)", type=["csv"], key="prof_file")
        if up is None:
            st.info("Upload a profile CSV to plot it.")
            st.stop()
        try:
            text = up.getvalue().decode("utf-8")
        except UnicodeDecodeError:
            raise ProfileError(up.name, ["not UTF-8 text"]) from None
        profile = parse_profile(text, name=up.name.rsplit(".", 1)[0], origin=up.name)
    else:
        profile = load_profile(choice)
except ProfileError as exc:
    st.error(f"**{exc.origin}** cannot be used: " + ("" if len(exc.problems) > 1 else exc.problems[0]))
    if len(exc.problems) > 1:
        st.error("\n".join(f"- {p}" for p in exc.problems))
    st.stop()

df = data.profile_frame(profile.rows)
gpus = list(profile.gpus())
c1, c2 = st.columns(2)
gpu = c1.selectbox("GPU kind", gpus, key="prof_gpu")
models = sorted(set(df.loc[df["gpu"] == gpu, "model"]))
model = c2.selectbox("Model", models, index=models.index("sd3-medium") if "sd3-medium" in models else 0, key="prof_model")
steps = {m: data.default_steps(m) for m in models}
steps[model] = int(st.number_input(f"Denoising steps for {model}", 1, 1000, steps[model], key=f"prof_steps_{model}"))

st.plotly_chart(figures.stage_discrepancy(df, gpu, steps), width="stretch")
left, right = st.columns(2)
with left:
    st.plotly_chart(figures.stage_latency_by_shape(df, gpu, model, steps=steps[model]), width="stretch")
with right:
    st.plotly_chart(figures.stage_memory_by_shape(df, gpu, model), width="stretch")

missing = [s for s in figures.STAGES if not ((df["gpu"] == gpu) & (df["model"] == model) & (df["stage"] == s)).any()]
if missing:
    st.warning(f"{model} has no {', '.join(missing)} rows on {gpu}: the simulator cannot serve it with this profile.")

with st.expander(f"Rows of {profile.name} ({len(df)})"):
    st.caption(profile.origin)
    st.dataframe(df.drop(columns=["tokens"]), width="stretch", hide_index=True)
