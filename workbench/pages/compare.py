"""Compare: policies side by side on one simulated scenario (the workbench's home page)."""

import logging
from datetime import timedelta
from pathlib import Path

import pandas as pd
import streamlit as st

from tridentcore.bench.spec import RunSpec
from tridentcore.core.cluster import parse_cluster
from tridentcore.core.policy import split_specs, unique_specs
from tridentcore.formats.mixes import list_mixes
from tridentcore.profiles import shipped_profiles
from workbench import access, child, data, figures, live_bench, live_jobs

access.gate()

UPLOAD_PROFILE = "upload a CSV…"
ARRIVALS = ("poisson", "gamma", "constant", "bursts")

st.title("Compare policies")
st.caption("Pipeline-level serving (the whole pipeline on fixed GPUs) against stage-level serving "
           "(TridentServe), on one workload: simulated in-process from the stage profile, or live.")

uploaded: dict[str, str] = {}  # an uploaded file's saved path -> the name it was uploaded as (this script run)


def _named(text: str) -> str:
    """``text`` with each uploaded file's saved copy (``data.UPLOAD_DIR``, named by its hash) replaced
    by the name the user uploaded it as."""
    for path, name in uploaded.items():
        text = text.replace(path, name)
    return text


def show_live(scenario: RunSpec, policies: list[str], rates: list, sweep: bool, devices: str, time_scale: float,
              db: str) -> None:
    """Compare's live mode: the policies run by `trident bench --backend live`'s library in a job
    process of its own (``live_jobs``: it goes on when the page is left), its progress shown while it
    runs, then its stored runs (KPI cards and latency CDF from the results store)."""
    st.caption("Live: each policy on a real `trident serve` driven by Locust (child processes on 127.0.0.1) with the "
               "simulator's requests for the same seed, stored as runs (see **Runs** to diff them). The comparison "
               "runs as a job of its own: leaving this page or closing the browser does not stop it.")
    running = live_jobs.current()
    if running is not None:
        show_job(running.id)
    elif sweep:
        st.error("A live comparison runs one rate: choose **one rate** under Load.")
    else:
        try:
            plan = live_bench.plan_live(scenario, rates[0], devices, time_scale)
        except ValueError as exc:
            st.error(_named(data.error_text(exc)))
            return
        st.markdown(f"{len(policies)} policies × **{plan.requests} requests** on `{devices}`; the sends take "
                    f"{plan.send_wall_s:.1f} s of wall time per policy (time scale {time_scale:g}), plus start-up and "
                    f"the last answers. Runs are stored in `{access.database_label(Path(db))}`.")
        for warning in live_bench.live_warnings(plan, len(policies)):
            st.warning(warning)
        if st.button("Run live", type="primary", key="cmp_live_run"):
            try:
                live_jobs.start(plan, policies, db, names=uploaded)
            except (ValueError, OSError) as exc:  # JobBusy: another tab started one first
                st.error(f"live run not started: {_named(data.error_text(exc))}")
                other = live_jobs.current()
                if other is not None:  # that one's progress and its Stop, here too (not only after a reload)
                    show_job(other.id)
                return
            st.rerun()
    show_last_job(db)


@st.fragment(run_every=timedelta(seconds=2))
def show_job(job_id: str) -> None:
    """A running job's progress and its Stop button, read again every 2 s; the whole page reruns
    when it ends (to show its runs)."""
    job = live_jobs.read(live_jobs.JOBS_DIR / job_id)
    st.session_state["cmp_live_watched"] = job.id  # (its end is shown whichever database is chosen: show_last_job)
    if not job.active:
        st.rerun()
    n = len(job.policies)
    what = (f"[{job.k}/{n}] {job.policy}: {job.phase} ({job.done}/{job.total} requests)" if job.k
            else "starting the job…")
    st.progress(job.fraction, text=what)
    st.caption(f"Live job {job.id} (PID {job.pid}): {', '.join(job.policies)} on {job.what}, into "
               f"`{access.database_label(Path(job.db))}`; {len(job.run_ids)} of {n} runs stored so far.")
    if job.state == "stopping":
        st.info("Stopping: the run in progress is stored once its server has drained (as interrupted if the "
                "stop cut its load short); no further policy runs.")
    elif st.button("Stop", key="cmp_live_stop"):
        live_jobs.stop(job)
        st.rerun(scope="fragment")


def _watched_elsewhere(db: str) -> "live_jobs.Job | None":
    """The job this browser session last showed running, if it has ended and stored its runs in
    another database than ``db`` (outside test 115: a job into one file, followed and stopped while
    another file was chosen, ended in an older job's outcome, that file's)."""
    job_id = st.session_state.get("cmp_live_watched")
    folder = live_jobs.JOBS_DIR / job_id if job_id else None
    if folder is None or not folder.is_dir():
        return None
    job = live_jobs.read(folder)
    return None if job.active or job.db == str(db) else job


def show_last_job(db: str) -> None:
    """The newest ended job into ``db`` (or the one this session followed, wherever it stored its runs):
    how it ended, and its stored runs."""
    job = _watched_elsewhere(db)
    if job is not None:
        st.info(f"The live job this page followed stored its runs in `{access.database_label(Path(job.db))}`, not in "
                f"`{access.database_label(Path(db))}` (chosen under *Store runs in*): its outcome is shown here.")
        db = job.db
    else:
        job = live_jobs.latest(db)
    if job is None:
        st.info("Press **Run live** to run the policies live; their stored runs appear here.")
        return
    if job.active:
        return
    n, label = len(job.policies), access.database_label(Path(db))
    if job.state == "stopped":
        st.warning(f"Live job {job.id} was stopped: " + (
            f"{len(job.run_ids)} of {n} runs stored (a run the stop cut short is stored as interrupted, with "
            "what was answered before the stop)." if job.run_ids else "no run was stored."))
    elif job.state in ("failed", "vanished"):
        st.error(f"live job {job.id} failed: {_named(job.error or 'no reason given')}"
                 + (f" ({len(job.run_ids)} of {n} runs stored before it)" if job.run_ids else ""))
    if not job.run_ids:
        return
    try:
        sig = data.db_signature(db)
        summary = data.cached_summaries(sig, job.run_ids).set_index("run_id")
        lat = {rid: data.cached_latencies(sig, rid) for rid in job.run_ids}
    except Exception as exc:  # a moved or locked file: say so
        st.error(data.error_text(exc))
        return
    rows = {rid: summary.loc[rid].to_dict() for rid in job.run_ids if rid in summary.index}
    if not rows:
        st.error(f"the runs of the last live comparison are no longer in {label}")
        return
    gone = [rid for rid in job.run_ids if rid not in rows]
    if gone:  # deleted since (runs delete, another tool): said, not dropped from the cards silently
        st.warning(f"{len(gone)} of the comparison's {len(job.run_ids)} stored runs are no longer in {label}: "
                   + ", ".join(gone))
    st.caption(f"The last live comparison ({job.what}), stored in {label}: " + ", ".join(rows))
    base = next(iter(rows.values()))
    for col, row in zip(st.columns(len(rows)), rows.values(), strict=True):
        with col.container(border=True):
            st.subheader(str(row["policy"]))
            status = str(row.get("status") or "")
            if status not in ("complete", "done", ""):  # a run cut short: its numbers cover part of the load
                st.warning(f"**{status}**: the run ended early; its figures cover the requests sent before, and "
                           "those the stop cut off count as misses (not met, in no latency)")
            for k in data.kpis(row, base):
                st.metric(k.label, k.value, k.delta, delta_color=k.delta_color, help=k.help)
    st.plotly_chart(figures.latency_cdf({f"{r['policy']} (live)": lat[rid] for rid, r in rows.items()}), width="stretch")


# ---------------------------------------------------------------------------------- inputs
def saved(up, suffix: str) -> str | None:
    """An uploaded file's path once saved (its name remembered for the captions); None, and why in
    ``problems``, when it cannot be saved (a full disk, an upload folder that is not this user's)."""
    try:
        path = data.save_upload(up.getvalue(), suffix)
    except OSError as exc:
        problems.append(f"{up.name} could not be saved for the simulator: {exc}")
        return None
    uploaded[path] = up.name
    return path


with st.sidebar:
    st.header("Scenario")
    backend = st.radio("Run", ("simulated", "live (trident bench)"), key="cmp_backend", horizontal=True)
    source = st.radio("Workload", ("named mix", "mix file (YAML)", "trace file"), key="cmp_source")
    mix = trace = trace_model = None
    problems: list[str] = []
    if source == "named mix":
        mixes = list(list_mixes())
        default_mix = data.DEFAULT_SCENARIO.mix
        mix = st.selectbox("Mix", mixes, index=mixes.index(default_mix) if default_mix in mixes else 0, key="cmp_mix")
    elif source == "mix file (YAML)":
        up = st.file_uploader("Mix YAML", type=["yaml", "yml"], key="cmp_mix_file")
        if up is None:
            problems.append("upload a mix YAML file (the format of tridentcore/formats/data/mixes/*.yaml)")
        else:
            mix = saved(up, Path(up.name).suffix or ".yaml")
    else:
        up = st.file_uploader("Trace (JSON lines or the paper's Request(...) lines)", key="cmp_trace_file")
        trace_model = st.text_input("Model (paper-format traces name none)", "", key="cmp_trace_model").strip() or None
        if up is None:
            problems.append("upload a trace file")
        else:
            trace = saved(up, Path(up.name).suffix or ".jsonl")

    kind = st.selectbox("Arrival process", ARRIVALS, key="cmp_arrival", disabled=trace is not None)
    arrival = kind
    if kind == "gamma":
        arrival = f"gamma:cv={st.number_input('Coefficient of variation', 0.1, 20.0, 2.0, 0.1, key='cmp_cv'):g}"
    elif kind == "bursts":
        arrival = f"bursts:size={st.number_input('Burst size', 1, 1000, 4, key='cmp_burst')}"

    sweep = st.radio("Load", ("one rate", "rate sweep"), key="cmp_rate_mode", horizontal=True,
                     disabled=trace is not None) == "rate sweep" and trace is None
    rates: list[float | None]
    bisect = False
    if trace is not None:
        rates = [None]
        st.caption("A trace brings its own arrival times: rate and duration do not apply.")
    elif sweep:
        text = st.text_input("Rates (req/s)", "0.25, 0.5, 0.75, 1.0", key="cmp_rates")
        try:
            rates = list(data.parse_rates(text))
        except ValueError as exc:
            problems.append(data.error_text(exc))
            rates = []
        bisect = st.checkbox("Bisect goodput and fair goodput (slower)", key="cmp_bisect")
    else:
        rates = [st.number_input("Rate (req/s)", min_value=0.001, max_value=1000.0, value=data.DEFAULT_RATE, step=0.05,
                                 format="%.3f", key="cmp_rate")]
    duration = st.number_input("Duration of arrivals (simulated s)", 10.0, 86400.0, data.DEFAULT_SCENARIO.duration_s, 60.0,
                               key="cmp_duration",
                               disabled=trace is not None)
    slo_scale = st.number_input("SLO scale (deadline = scale × reference latency)", 0.1, 50.0,
                                data.DEFAULT_SCENARIO.slo_scale, 0.25,
                                key="cmp_slo")
    seed = st.number_input("Seed", 0, 2**31 - 1, data.DEFAULT_SCENARIO.seed, key="cmp_seed")

    st.header("Cluster and policies")
    cluster = st.text_input("Cluster (NODESxGPUSxKIND, e.g. 2x8xH200)", data.DEFAULT_SCENARIO.cluster,
                            key="cmp_cluster").strip()
    cluster_file = st.file_uploader("…or a cluster YAML file (nodes, gpus_per_node, kind, mem_gib)",
                                    type=["yaml", "yml"], key="cmp_cluster_file")
    if cluster_file is not None:
        cluster = saved(cluster_file, ".yaml") or data.DEFAULT_SCENARIO.cluster
    else:
        try:  # the text form only: a path typed here read any file on the host and showed its lines
            parse_cluster(cluster)  # (an outside test: /etc/shadow's lines as "unknown key(s)")
        except ValueError as exc:
            problems.append(f"{data.error_text(exc)} (a cluster YAML file: upload it below the field)")
            cluster = data.DEFAULT_SCENARIO.cluster
    profiles = list(shipped_profiles())
    profile_choice = st.selectbox("Profile", profiles + [UPLOAD_PROFILE],
                                  index=profiles.index(data.DEFAULT_SCENARIO.profile)
                                  if data.DEFAULT_SCENARIO.profile in profiles else 0, key="cmp_profile")
    profile = profile_choice
    if profile_choice == UPLOAD_PROFILE:
        up = st.file_uploader("Profile CSV", type=["csv"], key="cmp_profile_file")
        if up is None:
            problems.append("upload a profile CSV (the format of tridentcore/profiles/data/*.csv)")
        else:
            profile = saved(up, ".csv")
    chosen = st.multiselect("Policies", data.POLICY_CHOICES, default=list(data.DEFAULT_POLICIES), key="cmp_policies")
    extra = st.text_input("More policy specs (comma-separated, e.g. pipeline-static:degree=2)", "", key="cmp_extra")
    # each policy once however it is written (outside test 108: `trident:` ran trident a second time)
    policies = unique_specs(chosen + (split_specs(extra) if extra.strip() else []))[0]

    live_mode = backend != "simulated"
    if live_mode:
        st.header("Live run")
        devices = st.text_input("Devices (trident serve --devices)", live_bench.default_devices(cluster),
                                key="cmp_live_devices",
                                help="emulated:NODESxGPUSxKIND (the cost model's time, no pixels), cpu:N (tiny CPU "
                                     "pipelines: needs a mix of tiny-* models and the cpu profile), or both, comma-separated")
        time_scale = st.number_input("Time scale (wall s per workload s)", 0.001, 10.0, live_bench.DEFAULT_TIME_SCALE,
                                     0.01, format="%.3f", key="cmp_live_time_scale")
        picked = access.database_picker("Store runs in (results database)", "cmp_live_db", include_default=True)
        live_db = str(picked) if picked is not None else ""
        if picked is None:
            problems.append("choose a results database to store the runs in")

for p in problems:
    st.error(p)
if problems:
    st.stop()

scenario = RunSpec(profile=profile, cluster=cluster, mix=mix, trace=trace, trace_model=trace_model, arrival=arrival,
                    duration_s=float(duration), slo_scale=float(slo_scale), seed=int(seed))
invalid = data.validate_comparison(scenario, policies, rates)
if invalid:
    for p in invalid:
        st.error(_named(p))
    data.drop_uploads(uploaded)  # refused: not kept (an outside test found 27 MB traces kept for 7 days)
    st.stop()
refused = data.start_refusals(scenario, policies)
for why in refused.values():  # (the others run: one that cannot start stopped the whole comparison)
    (st.error if len(refused) == len(policies) else st.warning)(f"not run: {_named(why)}")
policies = [p for p in policies if p not in refused]
if not policies:
    st.stop()

if live_mode:
    show_live(scenario, policies, rates, sweep, devices, float(time_scale), live_db)
    st.stop()
if (job := live_jobs.current()) is not None:  # (a visitor back on this page finds its inputs as they start)
    st.info(f"A live comparison is running ({', '.join(job.policies)}: job {job.id}); choose **Run: live** in the "
            "sidebar to follow it or stop it.")

# ---------------------------------------------------------------------------------- run
tasks = [(p, r) for r in rates for p in policies]
runs: dict[tuple[str, float | None], data.RunFrames] = {}
bar = st.progress(0.0, text="simulating…")


def waiting(doing: str, labels: list[str]):
    """What the bar says while children compute (at least once a second: each update is where
    Streamlit's Stop, or a changed input, ends the page, and with it the children)."""
    def say(done: int, running: list[int], seconds: float) -> None:
        bar.progress(done / len(labels), text=f"{doing} {', '.join(labels[i] for i in running)} ({done}/{len(labels)} "
                                              f"done): {seconds:.0f} s (Stop, top right, ends it)")
    return say


try:
    todo = []
    for policy, rate in tasks:
        got = data.warm_frames(scenario, policy, rate)
        if got is None:
            todo.append((policy, rate))
        else:
            runs[(policy, rate)] = got
    made = child.run_all([(data.simulate_frames, (scenario, p, r)) for p, r in todo],
                         waiting("simulating", [f"{p} at {r if r is not None else 'trace'} req/s" for p, r in todo]))
    runs.update(zip(todo, made, strict=True))
    runs = {t: runs[t] for t in tasks}  # (in the order of the tasks)
    goodputs: dict[str, dict] = {}
    if bisect:
        made = child.run_all([(data.goodput_bisect, (scenario, p)) for p in policies],
                             waiting("bisecting the goodput of", list(policies)))
        goodputs.update(zip(policies, made, strict=True))
except Exception as exc:  # expected: a policy that cannot run this cluster; otherwise a bug, still a message
    bar.empty()
    if not isinstance(exc, (ValueError, LookupError)):
        logging.getLogger(__name__).exception("simulation failed")
    st.error(f"simulation failed: {_named(data.error_text(exc))}")
    st.stop()
bar.empty()

points = pd.DataFrame([{"policy": p, "rate": r,
                         **{k: runs[(p, r)].summary[k] for k in ("attainment", "mean_s", "p95_s", "rejected", "requests")}}
                        for p, r in tasks if r is not None])
if sweep:
    grid = data.goodput_on_grid(points)
    for p in policies:
        goodputs.setdefault(p, {"goodput_rps": grid.get(p, 0.0), "grid": True, "lowest_rps": min(rates)})

first = runs[tasks[0]]
workload = uploaded.get(trace or "") or uploaded.get(str(mix)) or Path(trace or str(mix)).name
arrivals = "" if trace else f"{scenario.arrival} · "  # (a trace brings its own arrival times)
# the rates and duration simulated, said (outside test 108: a Rate field showing a value outside its range,
# which Streamlit does not take, while the page showed the last valid rate's figures, named nowhere)
load = "" if trace else (f"{'rates ' + ', '.join(f'{r:g}' for r in rates) if len(rates) > 1 else f'rate {rates[0]:g}'}"
                         f" req/s over {duration:g} s · seed {seed} · ")
summary_line = (f"**{workload}** · {arrivals}{load}cluster {uploaded.get(cluster, cluster)} ({first.n_gpus} GPU{'' if first.n_gpus == 1 else 's'}, {first.gpu_mem_gib:g} GiB each) · "
                f"profile {uploaded.get(profile) or Path(profile).name} · SLO scale {slo_scale:g}")
ceiling_note, slo_ceiling = "", float("nan")
if trace is None:
    try:
        ceil = data.cached_ceilings(scenario)
        slo_ceiling = ceil["slo_aware_rps"]
        summary_line += (f" · capacity ceiling {ceil['capacity_rps']:.3f} req/s · SLO-aware ceiling "
                         f"{ceil['slo_aware_rps']:.3f} req/s")
        ceiling_note = ceil["note"]
    except (ValueError, LookupError) as exc:
        st.warning(f"capacity ceiling: {data.error_text(exc)}")
st.markdown(summary_line)
if ceiling_note:
    st.caption(f"SLO-aware ceiling: {ceiling_note}.")
st.caption(f"{len(tasks)} simulated run(s), {sum(r.wall_s for r in runs.values()):.2f} s of simulator time when each "
           "was made (a run simulated before, here or by another visitor, is reused, not made again)")

detail_rate = rates[0]
if sweep:
    detail_rate = st.select_slider("Rate shown in the cards and charts (req/s)", options=rates,
                                   value=min(rates, key=lambda r: abs(r - 0.5)), key="cmp_detail_rate")
detail = {p: runs[(p, detail_rate)] for p in policies}

# ---------------------------------------------------------------------------------- KPI cards
cols = st.columns(len(policies))
base = detail[policies[0]].summary
for col, policy in zip(cols, policies, strict=True):
    with col.container(border=True):
        st.subheader(policy)
        for k in data.kpis(detail[policy].summary, base, goodputs.get(policy)):
            st.metric(k.label, k.value, k.delta, delta_color=k.delta_color, help=k.help)
if len(policies) > 1:
    st.caption(f"Deltas are against {policies[0]}.")
above = data.above_ceiling_note({p: g["goodput_rps"] for p, g in goodputs.items()}, slo_ceiling, scenario.duration_s)
if above:
    st.info(above[0].upper() + above[1:])

with st.expander("SLO attainment per request class"):
    by_class = pd.DataFrame({p: {c: a for c, (_, a) in detail[p].by_class.items()} for p in policies})
    # A Markdown table, not st.dataframe: the data grid's scripts (over 1 MB) would slow the first paint.
    st.markdown(data.markdown_table(by_class, "{:.1%}", index_name="request class"))

if sweep:
    st.plotly_chart(figures.rate_curves(points), width="stretch")
    st.plotly_chart(figures.latency_vs_rate(points), width="stretch")
    st.caption("Frontier (stars): at each swept rate, the lowest latency among the policies with at least 90 % SLO "
               "attainment (hover a star for the policy, or the policies that "
               "tie); no star at a rate where none reaches 90 %. It is taken per rate: a lower latency at a higher "
               "rate does not remove a star at a lower one. Latency is of the finished requests: a request turned "
               "away (goodput mode) has none, and each point's hover says how many its policy turned away.")
st.plotly_chart(figures.latency_cdf({p: detail[p].requests["latency_s"].dropna() for p in policies}), width="stretch")

# ---------------------------------------------------------------------------------- timelines
st.subheader("Inside the cluster")
end = max(r.end_s for r in detail.values()) or 1.0
n_gpus = first.n_gpus
c1, c2 = st.columns([3, 1])
window = c1.slider("Time window (simulated s)", 0.0, float(end), (0.0, float(min(end, 300.0))), key="cmp_window")
shown = c2.number_input("First N GPUs", 1, n_gpus, min(8, n_gpus), key="cmp_gpus")
gpus = tuple(range(int(shown)))
VIEWS = ("Stage spans per GPU", "GPU memory", "Placement plan", "Placement per GPU")
view = st.radio("Show", VIEWS, horizontal=True, key="cmp_view", label_visibility="collapsed")
if view == "Stage spans per GPU":  # one figure at a time: each is a panel per policy
    fig = figures.gpu_timeline({p: detail[p].spans for p in policies}, {p: detail[p].requests for p in policies},
                               gpus=gpus, window=window)
elif view == "GPU memory":
    fig = figures.gpu_memory({p: detail[p].gpu_samples for p in policies}, gpus=gpus, window=window,
                             mem_cap_gib=first.gpu_mem_gib)
elif view == "Placement plan":
    fig = figures.placement_heatmap({p: detail[p].placements for p in policies}, {p: detail[p].end_s for p in policies},
                                    n_gpus=n_gpus, window=window)
else:
    fig = figures.placement_timeline({p: detail[p].placements for p in policies}, {p: detail[p].end_s for p in policies},
                                     gpus=gpus, window=window)
st.plotly_chart(fig, width="stretch")
