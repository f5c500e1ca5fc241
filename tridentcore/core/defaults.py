"""Every default a run is configured with, declared once.

The CLI's option defaults, the run spec (:mod:`tridentcore.bench.spec`), the live bench, the
server's options, the Locust file and the workbench import these names; nothing else writes the
values out. The ``MAX_*`` bounds are every limit on what an input may ask for (trace, mix, cluster
and run-spec files, the workload options, the HTTP API's bodies), each checked before any work is
done with the input; the HTTP API uses the same names where it has the same bound. Pure
constants: no imports, so every layer (and Locust) may use them.
"""

from __future__ import annotations

__all__ = [
    "API_KEY_ENV",
    "DEFAULT_ARRIVAL", "DEFAULT_CLUSTER", "DEFAULT_CPU_CLUSTER", "DEFAULT_CPU_PROFILE", "DEFAULT_DURATION_S",
    "DEFAULT_LIVE_DEVICES", "DEFAULT_LIVE_TIME_SCALE",
    "DEFAULT_MIX", "DEFAULT_POLICIES", "DEFAULT_POLICY", "DEFAULT_PROFILE", "DEFAULT_RATE", "DEFAULT_SEED",
    "DEFAULT_SLO_SCALE", "DEFAULT_SWEEP_DURATION_S", "DEFAULT_TARGET", "DEFAULT_TIME_SCALE",
    "DEFAULT_LOCUST_DURATION_S", "DEFAULT_DB", "DEFAULT_SERVE_DEVICES", "DEFAULT_MAX_QUEUED", "DEFAULT_KEEP_ENDED", "DEFAULT_MAX_RESULTS", "DEFAULT_RESULTS_MIB",
    "DEFAULT_DRAIN_TIMEOUT_S", "DEFAULT_NO_DEVICE_TIMEOUT_S", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_CLIENT_TIMEOUT_S", "STOPPING_SUFFIX", "DEFAULT_LATE", "LATE_MODES", "DEFAULT_NOISE_SIGMA",
    "DEFAULT_LIVE_CALIBRATE", "DEFAULT_SIM_CALIBRATE", "DEFAULT_DB_WAIT_S", "DEFAULT_JOURNAL_MIB", "MEASURED_NOISE_SIGMA", "MEASURED_NOISE_BIAS",
    "MAX_STEPS", "MAX_SIDE_PX", "MAX_FRAMES", "MAX_PROMPT_CHARS", "MAX_SEED", "MAX_GUIDANCE", "MAX_REQUESTS",
    "MAX_WORKLOAD_S", "MAX_MIX_CLASSES", "MAX_CLUSTER_GPUS", "MAX_GPUS_PER_NODE", "MAX_TRACE_BYTES",
    "MAX_CONFIG_BYTES", "MAX_PROFILE_BYTES", "MAX_NESTING", "MAX_NAME_CHARS", "MAX_GPU_SAMPLES", "MAX_SCALE",
]  # fmt: skip

DEFAULT_PROFILE = "h200"  # shipped cost profile the simulator and emulated GPUs price stages with
DEFAULT_CLUSTER = "2x8xH200"  # two nodes of eight H200s
DEFAULT_CPU_PROFILE = "cpu"  # shipped profile of the tiny models on CPU workers (`trident serve --devices cpu:N`)
DEFAULT_CPU_CLUSTER = "2xcpu"  # the cluster a mix priced by the cpu profile runs on: `--devices cpu:2`'s workers
# The default scenario, the one of every entry point (`trident simulate`, `bench`, `trace generate`,
# the run spec, Locust, the workbench's home page): the image-video mix, Poisson arrivals at 0.5 req/s
# for 600 workload seconds (300 requests), on DEFAULT_CLUSTER with DEFAULT_PROFILE at DEFAULT_SLO_SCALE.
# 0.5 req/s is below `trident`'s fair goodput on this mix and cluster (0.76 at SLO scale 3) and above
# the other default policies' (0.28-0.41): the comparison shows the difference. 600 s keeps the four
# policies' simulation near a second, so the workbench opens quickly.
DEFAULT_MIX = "image-video"
DEFAULT_ARRIVAL = "poisson"
DEFAULT_RATE = 0.5  # requests per workload second
DEFAULT_DURATION_S = 600.0  # workload seconds of arrivals
# `trident sweep` and benchmarks/goodput.py: workload seconds per simulated rate while bisecting goodput
# (longer, so that each request class's attainment near the 90 % target is measured on enough requests)
DEFAULT_SWEEP_DURATION_S = 1800.0
DEFAULT_LOCUST_DURATION_S = 60.0  # the Locust file without -t or --duration
DEFAULT_SEED = 0
DEFAULT_SLO_SCALE = 3.0  # deadline = arrival + scale x reference latency (docs/design.md)
DEFAULT_TARGET = 0.9  # attainment target of goodput
DEFAULT_POLICY = "trident"  # `trident serve`
DEFAULT_SERVE_DEVICES = "cpu:2"  # `trident serve`: two worker processes on this host (DEFAULT_CPU_CLUSTER)
DEFAULT_MAX_QUEUED = 256  # `trident serve`: waiting requests past which submissions get 429
DEFAULT_POLICIES = ("pipeline-static:degree=1", "pipeline-dynamic", "trident-paper", "trident")  # comparisons
DEFAULT_TIME_SCALE = 1.0  # wall seconds per workload second: real devices
DEFAULT_LIVE_TIME_SCALE = 0.05  # a live bench on emulated GPUs: 20x faster than the cost model's time
DEFAULT_LIVE_DEVICES = f"emulated:{DEFAULT_CLUSTER}"
DEFAULT_DB = "results/trident.duckdb"
DEFAULT_LIVE_CALIBRATE = True  # the live engine learns measured / predicted stage times (issue 11)
DEFAULT_SIM_CALIBRATE = False  # the simulator: only useful with noise (its times are the predictions)
DEFAULT_NOISE_SIGMA = 0.0  # the simulator: stage times equal the cost model's predictions unless asked
# Stage-time noise of a real run, fitted by `trident simulate --noise-from RUN` (core/noise.py): tiny-sd3
# served by `trident serve --models tiny-sd3 --devices cpu:2 --policy trident --db FILE` (two CPU worker
# processes on a 2-core host shared with other jobs), 60 requests sent one at a time, alternating
# 64x64 / 4 steps and 128x128 / 8 steps; 180 dispatches against the `cpu` profile. sigma is the
# log-spread around each stage's median (about 0.29 within each shape too: run-to-run noise, not a
# shape the profile gets wrong); the biases say how far this host was from its `cpu` profile that
# day (encode 2.8x slower at the median), so they belong to that profile and do not carry over to
# another. Use: `--noise 0.285` (and `--bias` with these for the `cpu` profile).
MEASURED_NOISE_SIGMA = 0.285
MEASURED_NOISE_BIAS = (("decode", 0.989), ("diffuse", 1.935), ("encode", 2.923))  # mean factors, as --bias
LATE_MODES = ("serve", "reject")  # what a policy does with a request that can no longer meet its deadline
DEFAULT_LATE = "serve"  # docs/design.md: late requests are served (an SLO miss); rejecting is the operator's choice
DEFAULT_KEEP_ENDED = 10_000  # `trident serve`: ended requests kept in full in memory (older ones forgotten)
DEFAULT_MAX_RESULTS = 1024  # `trident serve`: finished images/videos kept for clients to fetch ...
DEFAULT_RESULTS_MIB = 1024  # ... and at most this many MiB of them (the oldest dropped first)
DEFAULT_DRAIN_TIMEOUT_S = 30.0  # `trident serve`: how long shutdown lets in-flight work finish
# `trident serve`: with no device alive this long and every lost worker's restart failing, the waiting
# requests fail and new ones get 503 until one is back
DEFAULT_NO_DEVICE_TIMEOUT_S = 30.0
HUNG_STAGE_MIN_S = 180.0  # `trident serve` on real devices: a stage still running after this many seconds (a first dispatch may load weights) and...
HUNG_STAGE_FACTOR = 20.0  # ...this many times its predicted time takes its worker as hung: it is stopped and restarted
# `trident serve --db`: how long the final write waits for another process's lock on the file; longer
# than a read-only query may run (the workbench's SQL console interrupts one at 30 s)
DEFAULT_DB_WAIT_S = 35.0
DEFAULT_JOURNAL_MIB = 64.0  # `serve --db`: the run's journal is compacted past this size (--journal-mb)
DEFAULT_MAX_BODY_BYTES = 1 << 20  # `trident serve`: largest request body (413 past it)
DEFAULT_CLIENT_TIMEOUT_S = 30.0  # `trident serve`: a request's head, and then its body, must arrive within this (408 past it)
API_KEY_ENV = "TRIDENT_API_KEY"  # `trident serve`'s API key (or --api-key-file); the Locust file and the workbench send it
STOPPING_SUFFIX = ".stopping"  # `trident serve --port-file FILE`: FILE.stopping holds the number of the signal that stops it
PARENT_PID_ENV = "TRIDENT_STOP_WITH_PARENT"  # `trident serve` started by a bench or the workbench: the starter's PID; the server stops (drains) when its parent is gone (a kill -9 of the starter)

# Bounds on inputs (issue 12): a file or option past one is refused with a one-line error naming it.
MAX_STEPS = 200  # denoising steps of one request (HTTP bodies, traces, mixes)
MAX_SIDE_PX = 4096  # height or width of one request, pixels: the image pipelines' 4096, the most any model takes
MAX_FRAMES = 129  # frames of one video request (HTTP bodies, traces, mixes): Wan's 129, the most any model takes
MAX_PROFILE_BATCH = 1024  # batch size of one profile row (the shipped profiles measure up to 8)
MAX_PROMPT_CHARS = 2000  # characters of a prompt or a negative prompt (HTTP bodies, traces)
MAX_SEED = 2**31 - 1  # seeds are 0..MAX_SEED (31 bits, as the workload generator draws them)
MAX_GUIDANCE = 100.0  # classifier-free guidance scale (HTTP bodies, traces)
MAX_REQUESTS = 100_000  # requests of one workload: trace lines, a mix's rate x duration (100k simulate in ~0.35 GB)
MAX_WORKLOAD_S = 86_400.0  # workload seconds (one day): a trace's arrival times, a mix's duration
MAX_MIX_CLASSES = 256  # request classes of one mix
MAX_CLUSTER_GPUS = 4096  # GPUs of one cluster (nodes x GPUs per node; also bounds the node count)
MAX_GPUS_PER_NODE = 128  # GPUs of one node, worker processes of cpu:N (the largest NVLink domains have 72)
MAX_TRACE_BYTES = 64 << 20  # largest trace file read (several hundred thousand JSON lines)
MAX_CONFIG_BYTES = 1 << 20  # largest mix, cluster or run-spec file read (ours are a few KiB)
MAX_PROFILE_BYTES = 16 << 20  # largest profile CSV read (ours are a few KiB; 16 MiB is some 300,000 rows)
MAX_NAME_CHARS = 128  # a model, mix or GPU kind name
MAX_NESTING = 32  # lists and mappings nested in any JSON or YAML input (ours need 3)
MAX_GPU_SAMPLES = 1_000_000  # rows of a run's gpu_samples: a longer run is sampled at a coarser interval
# --slo-scale, --time-scale and --slowdown at most (1e308 overflowed a deadline, a sleep or a JSON answer
# into a 500 on every request): a deadline 1000x the reference latency is no deadline already
MAX_SCALE = 1000.0
