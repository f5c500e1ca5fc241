"""Profiles: stage latency and memory against resolution and frames, per model, for any profile."""

import streamlit as st

from tridentcore.core.defaults import DEFAULT_PROFILE, MAX_PROFILE_BYTES, MAX_STEPS
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
        # (the command line's limit, 16 MiB: a 20 MiB file of bad rows froze the tab, outside test 103)
        up = st.file_uploader("Profile CSV (columns of tridentcore/profiles/data/*.csv)", type=["csv"], key="prof_file",
                              max_upload_size=MAX_PROFILE_BYTES >> 20)
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
except ProfileError as exc:  # the file's name and its cells as they are, never as Markdown (a link, maths)
    st.error(f"**{data.plain_markdown(exc.origin)}** cannot be used: "
             + ("" if len(exc.problems) > 1 else data.plain_markdown(exc.problems[0])))
    if len(exc.problems) > 1:  # (the first 20: 20,969 bad rows made a list of a million characters)
        st.error("\n".join(f"- {data.plain_markdown(p)}" for p in exc.shown()))
    st.stop()

df = data.profile_frame(profile.rows)
gpus = list(profile.gpus())
c1, c2 = st.columns(2)
gpu = c1.selectbox("GPU kind", gpus, key="prof_gpu")
models = sorted(set(df.loc[df["gpu"] == gpu, "model"]))
model = c2.selectbox("Model", models, index=models.index("sd3-medium") if "sd3-medium" in models else 0, key="prof_model")
steps = {m: data.default_steps(m) for m in models}
steps[model] = int(st.number_input(f"Denoising steps for {data.plain_markdown(model)}", 1, MAX_STEPS, min(steps[model], MAX_STEPS),
                                   key=f"prof_steps_{model}"))  # (as a request may ask: it offered 1000)

st.plotly_chart(figures.stage_discrepancy(df, gpu, steps), width="stretch")
left, right = st.columns(2)
with left:
    st.plotly_chart(figures.stage_latency_by_shape(df, gpu, model, steps=steps[model]), width="stretch")
with right:
    st.plotly_chart(figures.stage_memory_by_shape(df, gpu, model), width="stretch")

missing = [s for s in figures.STAGES if not ((df["gpu"] == gpu) & (df["model"] == model) & (df["stage"] == s)).any()]
if missing:
    st.warning(data.plain_markdown(f"{model} has no {', '.join(missing)} rows on {gpu}: the simulator cannot serve it "
                                   "with this profile."))

with st.expander(data.plain_markdown(f"Rows of {profile.name} ({len(df)})")):
    st.caption(data.plain_markdown(profile.origin))
    st.dataframe(df.drop(columns=["tokens"]), width="stretch", hide_index=True)
