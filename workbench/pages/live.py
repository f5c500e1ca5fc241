"""Live: a running `trident serve` — queue, devices with their resident stages and memory, recent
requests (refreshed every few seconds) and a test prompt whose image or animation comes back."""

import base64
import time
from datetime import timedelta

import pandas as pd
import streamlit as st

from workbench import access, figures, live

access.gate()

REFRESH = {"every 2 s": 2.0, "every 5 s": 5.0, "every 10 s": 10.0, "off": None}

st.title("Live cluster")
st.caption("A running `trident serve`, read over its HTTP API: the live placement (which stages are resident on "
           "which device), memory, queues and recent requests, and a test prompt. Any `trident serve` will do "
           "(README, \"Live serving\"); the workbench can start one on tiny CPU pipelines for you.")


def start_local() -> None:
    """The start button's callback: runs before the page, so the URL field can take the new address."""
    try:
        url = live.start_local_server()
    except live.LiveError as exc:
        st.session_state["live_local_error"] = str(exc)
        return
    st.session_state["live_server"] = url
    st.session_state["live_url"] = url


c1, c2, c3 = st.columns([3, 1, 1])
# The field's value lives in session state (the start button's callback sets it); "live_server"
# keeps it while another page is shown, when Streamlit forgets the field's own state.
local = live.local_server()
st.session_state.setdefault("live_url", st.session_state.get("live_server") or (local.url if local else live.DEFAULT_URL))
url_text = c1.text_input("Server URL", key="live_url")
st.session_state["live_server"] = url_text
refresh = c2.selectbox("Refresh", list(REFRESH), index=0, key="live_refresh")
limit = c3.number_input("Recent requests", 1, 1000, 20, key="live_limit")
api_key = st.text_input("API key", type="password", key="live_api_key",
                        help="For a server started with one (TRIDENT_API_KEY or --api-key-file): it then answers "
                             "every route but /healthz only with the key. Leave empty for an open server.") or None

b1, b2 = st.columns([1, 3], vertical_alignment="center")
stopping = live.stopping_local_server()
if local is None and stopping is not None:
    b1.button("Start a local server", key="live_start_local", disabled=True)
    b2.caption(f"The local server (process {stopping.pid}) is stopping: it drains the requests it has (up to "
               f"{live.DEFAULT_DRAIN_TIMEOUT_S:g} s), then stores its run.")
elif local is None:
    b1.button("Start a local server", key="live_start_local", on_click=start_local,
              help=f"`{live.SERVE_COMMAND}` on 127.0.0.1 and a free port (tiny CPU pipelines: real images and "
                   "animations); it stops with the workbench")
    b2.caption("Tiny CPU pipelines, real images and animations; it takes a few seconds to start and stops with the "
               "workbench.")
else:
    # the process the button was drawn for: a page drawn before that server ended stops no other one
    b1.button("Stop the local server", key="live_stop_local", on_click=live.stop_local_server,
              kwargs={"pid": local.pid, "wait": False})
    b2.caption(f"The workbench runs `{live.SERVE_COMMAND}` at {local.url}, process {local.pid}.")
if "live_local_error" in st.session_state:
    st.error(st.session_state.pop("live_local_error"))

try:
    url = live.normalize_url(url_text)
    live.check_server(url)  # nothing from a URL is shown before it answers as a trident server
except live.Unreachable:
    pass  # nothing answers (yet): the cluster view says so, and retries
except live.LiveError as exc:  # not a URL, or not a trident server there
    st.error(str(exc))
    st.stop()
every = REFRESH[refresh]


@st.fragment(run_every=timedelta(seconds=every) if every else None)
def cluster_view(url: str, limit: int, api_key: str | None) -> None:
    # the header above (start or stop, which process) is drawn with the page, not with this view: when
    # the local server has ended (killed, stopped from another tab) or finished stopping, draw it anew
    drawn = (local.pid if local is not None else None, stopping.pid if stopping is not None else None)
    now = (getattr(live.local_server(), "pid", None), getattr(live.stopping_local_server(), "pid", None))
    if now != drawn:
        st.rerun()
    answered = st.session_state.setdefault("live_answered", set())  # URLs that have answered this session
    failed: live.LiveError | None = None
    try:
        cluster = live.fetch_cluster(url, api_key)
        devices = live.devices_frame(cluster)
        answered.add(url)
    except live.LiveError as exc:
        failed = exc
    # the test prompt below is drawn with the page: when the server comes up or goes away, draw it anew
    # (outside test 108: "A test prompt needs a server" beside a cluster view that had found it 20 s
    # before, and a prompt form beside one that said it had stopped answering)
    if st.session_state.get("live_full_draw"):
        st.session_state["live_drawn_up"] = failed is None
    elif (failed is None) != st.session_state.get("live_drawn_up"):
        st.rerun()
    if isinstance(failed, live.Unreachable):  # nothing is up yet (the first visit): how to start one, calmly
        here, command, ended = live.local_server(), live.serve_command_for(url), live.ended_local_server()
        if ended is not None and ended[0] == url:  # (it read as "not started yet")
            st.error(f"The workbench's local server at {url} (process {ended[1]}) has ended ({ended[2]}): "
                     "press **Start a local server** above for a new one.")
            return
        stopped = live.stopped_local_server()
        if stopped is not None and stopped[0] == url:  # (outside test 127: read as an outage)
            st.info(f"The workbench's local server at {url} (process {stopped[1]}) was stopped from this page "
                    f"({stopped[2]}): press **Start a local server** above for a new one.")
            return
        if url in answered:
            st.warning(f"The trident server at {url} stopped answering: {failed.reason}. It answered earlier in "
                       "this session; this view looks again on its own" + (f" {refresh}." if every else
                                                                            " when refresh is on."))
            return
        st.info(f"No trident server answers at {url} yet: {failed.reason}. "
                + (f"The workbench's own server is at {here.url}: put that in **Server URL**." if here else
                   "Press **Start a local server** above" + (f", or run `{command}` in a terminal." if command
                                                             else ".")))
        st.caption("This view looks again on its own" + (f" {refresh}." if every else " when refresh is on."))
        return
    if failed is not None:
        st.error(str(failed))
        st.caption("This view retries on its own" + (f" {refresh}." if every else " when refresh is on."))
        return
    queues, running = cluster.get("queues", {}), cluster.get("running", {})
    cols = st.columns(5)
    cols[0].metric("Live requests", int(cluster.get("live_requests", 0)))
    cols[1].metric("Waiting", int(sum(queues.values())), help=", ".join(f"{s}: {n}" for s, n in queues.items()))
    cols[2].metric("Running", int(sum(running.values())), help=", ".join(f"{s}: {n}" for s, n in running.items()))
    cols[3].metric("Devices busy", f"{int(devices['busy'].sum())} / {len(devices)}",
                   help=f"{int((~devices['alive']).sum())} down" if len(devices) else None)
    cols[4].metric("Policy", str(cluster.get("policy", "?")))
    st.caption(f"cluster {cluster.get('cluster', '?')} · profile {cluster.get('profile', '?')} · "
               f"time scale {cluster.get('time_scale', '?')} · engine clock {float(cluster.get('now_s') or 0):.1f} s")

    left, right = st.columns([1, 2])
    with left:
        st.plotly_chart(figures.live_queues(queues, running), width="stretch", key="live_queue_fig")
    with right:
        st.plotly_chart(figures.live_devices(devices), width="stretch", key="live_devices_fig")
    st.dataframe(devices, width="stretch", hide_index=True, key="live_devices_table",
                 column_config={c: st.column_config.NumberColumn(format="%.3f GiB")
                                for c in ("weights_gib", "activations_gib", "free_gib", "mem_gib")})
    instances = cluster.get("instances") or []
    if instances:
        with st.expander(f"Stage instances ({len(instances)})"):
            st.dataframe(pd.DataFrame([{"model": i.get("model"), "stage": i.get("stage"),
                                        "devices": ", ".join(map(str, i.get("devices", ())))} for i in instances]),
                         width="stretch", hide_index=True)

    st.subheader("Recent requests")
    try:
        recent = live.requests_frame(live.fetch_requests(url, limit, api_key))
    except live.NotSupported as exc:
        st.info(f"This server does not list recent requests: {exc}. A newer `trident serve` offers "
                "`GET /v1/requests?limit=N`.")
        return
    except live.LiveError as exc:
        st.warning(f"recent requests: {exc}")
        return
    if recent.empty:
        st.caption("No requests yet: send a test prompt below.")
    else:
        st.dataframe(recent, width="stretch", hide_index=True, key="live_requests_table",
                     column_config={"latency_s": st.column_config.NumberColumn(format="%.3f s")})


st.session_state["live_full_draw"] = True  # (cluster_view: this draw of the page's own, not its timer's)
cluster_view(url, int(limit), api_key)
st.session_state["live_full_draw"] = False

# ---------------------------------------------------------------------------------- a test prompt
def outcome_so_far() -> None:
    """The test prompt under way (refreshed every second), or how the last one failed. Its fragment is
    made here, at the call: whether it refreshes is decided as it is made (a prompt sent in this run
    of the page is under way once the form below has been read)."""
    @st.fragment(run_every=timedelta(seconds=1) if "live_pending" in st.session_state else None)
    def pending_view() -> None:
        pending = st.session_state.get("live_pending")
        if pending is None:
            return
        future, name, t0 = pending
        if not future.done():
            st.info(f"{name} is generating… {time.monotonic() - t0:.0f} s (the cluster view above keeps refreshing)")
            return
        st.session_state.pop("live_pending")
        try:
            st.session_state["live_result"] = future.result()
            st.session_state.pop("live_result_error", None)
        except live.LiveError as exc:
            st.session_state["live_result_error"] = str(exc)
            st.session_state.pop("live_result", None)
        st.rerun()  # the whole page, to show the result below

    pending_view()
    if "live_result_error" in st.session_state:
        st.error(f"The test prompt failed: {st.session_state['live_result_error']}")


st.subheader("Send a test prompt")
try:
    models = live.fetch_models(url, api_key)
except live.LiveError as exc:
    if isinstance(exc, live.Unreachable):
        st.caption("A test prompt needs a server (see above).")
    else:
        st.error(f"The served models cannot be listed: {exc}")
    outcome_so_far()  # (a prompt whose server died: how it failed was never shown while the server was down)
    st.stop()
if not models:
    st.info("The server serves no models.")
    st.stop()

names = [m.id for m in models]
model = models[names.index(st.selectbox("Model", names, key="live_model"))]
with st.form("live_prompt_form"):
    prompt = st.text_area("Prompt", "a lighthouse on a cliff at sunset", key="live_prompt", max_chars=2000)
    a, b, c, d = st.columns(4)
    size = a.selectbox("Size (width x height)", live.size_choices(model), key=f"live_size_{model.id}")
    steps = b.number_input("Steps", 1, model.max_steps, model.default_steps, key=f"live_steps_{model.id}")
    frames = None
    if model.kind == "video":
        frames = c.number_input(f"Frames (k×{model.frames_multiple}+1)", 1, max(model.max_frames, 1),
                                model.default_frames, step=model.frames_multiple, key=f"live_frames_{model.id}")
    seed = d.number_input("Seed", 0, 2**31 - 1, 0, key="live_seed")
    sent = st.form_submit_button(f"Generate {'a video' if model.kind == 'video' else 'an image'}", type="primary",
                                 key="live_send")
if sent:  # generated in a thread of its own: the cluster view above keeps refreshing meanwhile
    st.session_state["live_pending"] = (
        live.start_generation(url, model, prompt, size=size, steps=int(steps), frames=int(frames) if frames else None,
                              seed=int(seed), api_key=api_key), model.id, time.monotonic())


outcome_so_far()
gen = st.session_state.get("live_result")
if gen is not None:
    st.markdown(f"**{gen.model}** ({gen.kind}) · {gen.state} · "
                + " · ".join(f"{k} {v}" for k, v in gen.meta.items()) + f" · {gen.wall_s:.2f} s round trip")
    if gen.media:
        urls = [f"data:{live.media_kind(m)};base64,{base64.b64encode(m).decode('ascii')}" for m in gen.media]
        st.image(urls, caption=[f"{gen.kind} {i}" + (" (animated WebP)" if gen.kind == "video" else "")
                                for i in range(len(urls))], width=256)
    elif gen.emulated:
        st.info("No picture: this model runs on emulated devices, which take the cost model's time but compute "
                "nothing, so there are no pixels to show. The stage timings below are what came back.")
    else:
        st.warning("The server returned no image data.")
    scale = gen.meta.get("time_scale", 1.0)
    clock = "" if scale in (1, 1.0, None) else f" (engine seconds: the server runs at time scale {scale:g})"
    for i, t in enumerate(gen.timings):
        lat, dl = t.get("latency_ms"), t.get("deadline_ms")
        st.markdown(f"Item {i}: latency **{(lat or 0) / 1000:.3f} s** against a deadline of "
                    f"{(dl or 0) / 1000:.3f} s{clock}: " + ("SLO met" if t.get("met_slo") else "SLO missed"))
        st.dataframe(live.stages_frame(t.get("stages", ())), width="stretch", hide_index=True,
                     column_config={c: st.column_config.NumberColumn(format="%.1f ms")
                                    for c in ("queued_ms", "run_ms", "predicted_ms", "load_ms", "transfer_ms")})
