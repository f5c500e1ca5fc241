"""A diffuse at degree k runs sequence-parallel (Ulysses) over k processes and gives degree 1's image.

The members are real processes in a gloo group on 127.0.0.1 (one torch thread each). Shapes are
tiny and divisible by the degree: 64x64 is 16 image tokens for tiny-sd3 and tiny-flux, 64x64x5
frames is 32 for tiny-wan; tiny-sd3 has 4 attention heads (degree 4 fits), the others 2.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import traceback
from datetime import timedelta

import pytest

torch = pytest.importorskip("torch")

from typer.testing import CliRunner  # noqa: E402

from tridentcore.cli import app  # noqa: E402

runner = CliRunner()
SHAPES = {"tiny-sd3": (64, 64, 1), "tiny-flux": (64, 64, 1), "tiny-wan": (64, 64, 5)}
PROMPT = "a red cube on a blue table"


# ------------------------------------------------------------------------------ a group of processes
def _member(fn, rank: int, world: int, port: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False, timeout=timedelta(seconds=120))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=120))
        results.put((rank, fn(rank), None))
    except BaseException:  # noqa: BLE001 - the test reports it
        results.put((rank, None, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run_group(fn, world: int, timeout_s: float = 300.0) -> dict:
    """``fn(rank)`` on ``world`` spawned processes in one gloo group; ``{rank: result}``."""
    import torch.distributed as dist

    store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_member, args=(fn, r, world, store.port, results), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    try:
        got = {}
        for _ in range(world):
            rank, value, error = results.get(timeout=timeout_s)
            assert error is None, f"rank {rank}:\n{error}"
            got[rank] = value
        return got
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()


def _pixels(pipe, latents):
    return pipe.decode(latents).to(torch.int16)


def _pixel_diff(pipe, a, b) -> float:
    return float((_pixels(pipe, a) - _pixels(pipe, b)).abs().float().mean())


def _tokens_seen(pipe) -> list[int]:
    """The token counts reaching the transformer's output projection (each member's share when split)."""
    seen: list[int] = []
    pipe.pipe.transformer.proj_out.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[1])))
    return seen


def _lead_args(group, call, emb, latents=None):
    """What a member passes: the lead (group rank 0) the call and tensors, the others nothing."""
    import torch.distributed as dist

    if dist.get_rank(group) == 0:
        return {"call": call, "embeddings": emb, "latents": latents}
    return {}


# --------------------------------------------------------------------------- degree 2, three models
def _three_models(rank: int) -> dict:
    import torch.distributed as dist

    from tridentcore.pipelines import load_pipeline
    from tridentcore.pipelines.parallel import DegreeError, DiffuseCall, diffuse_parallel

    world = dist.group.WORLD
    out = {}
    for model, (h, w, f) in SHAPES.items():
        pipe = load_pipeline(model)
        emb = pipe.encode([PROMPT])
        call = DiffuseCall(h, w, f, seed=3, steps=3)
        seen = _tokens_seen(pipe)
        par = diffuse_parallel(pipe, world, **_lead_args(world, call, emb))
        split = sorted(set(seen))
        ref = pipe.diffuse(emb, (h, w, f), seed=3, steps=3)
        out[model] = {"max_abs": float((par - ref).abs().max()), "pixels": _pixel_diff(pipe, par, ref) if rank == 0 else None,
                      "tokens": (split, pipe.image_tokens(h, w, f))}
        if model == "tiny-flux":
            # a degree the shape cannot take fails alike on every member, and the group stays usable
            try:
                diffuse_parallel(pipe, world, **_lead_args(world, DiffuseCall(48, 48, 1, seed=3, steps=3), emb))
            except DegreeError as exc:
                out["refused"] = str(exc)
            # a request changes degree at a step boundary: [0, 1) at degree 2, [1, 3) alone, and back
            first = diffuse_parallel(pipe, world, **_lead_args(world, DiffuseCall(h, w, f, seed=3, steps=3, end_step=1), emb))
            rest = pipe.diffuse(emb, (h, w, f), seed=3, steps=3, start_step=1, latents=first)
            alone = pipe.diffuse(emb, (h, w, f), seed=3, steps=3, end_step=1)
            back = diffuse_parallel(pipe, world, **_lead_args(
                world, DiffuseCall(h, w, f, seed=3, steps=3, start_step=1), emb, alone))
            out["2_then_1"] = float((rest - ref).abs().max())
            out["1_then_2"] = float((back - ref).abs().max())
    return out


def test_degree_2_gives_degree_1s_image_for_sd3_flux_and_wan():
    got = _run_group(_three_models, 2)
    for model in SHAPES:
        for rank in (0, 1):  # every member ends with the whole latents
            assert got[rank][model]["max_abs"] < 1e-3, (model, rank, got[rank][model])
            split, tokens = got[rank][model]["tokens"]
            assert split == [tokens // 2], (model, split, tokens)  # each member saw half the image tokens
        assert got[0][model]["pixels"] <= 1.0, (model, got[0][model])
    for rank in (0, 1):
        assert "9 image tokens at 48x48, which degree 2 does not divide" in got[rank]["refused"]
        assert got[rank]["2_then_1"] < 1e-3 and got[rank]["1_then_2"] < 1e-3, got[rank]


# ---------------------------------------------------------------- degree 4, and switching groups
def _switching(rank: int) -> dict:
    import torch.distributed as dist

    from tridentcore.pipelines import load_pipeline
    from tridentcore.pipelines.parallel import DiffuseCall, diffuse_parallel

    world = dist.group.WORLD
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # collective: every rank creates both
    pair = pairs[rank // 2]
    pipe = load_pipeline("tiny-sd3")
    emb = pipe.encode([PROMPT])
    call = DiffuseCall(64, 64, 1, seed=5, steps=2)
    seen = _tokens_seen(pipe)
    shares = []
    at4 = diffuse_parallel(pipe, world, **_lead_args(world, call, emb))  # one model instance: {0,1,2,3},
    shares.append(sorted(set(seen)))
    seen.clear()
    at2 = diffuse_parallel(pipe, pair, **_lead_args(pair, call, emb))  # then {0,1} and {2,3} at once,
    shares.append(sorted(set(seen)))
    seen.clear()
    at1 = diffuse_parallel(pipe, None, call, emb)  # then alone,
    shares.append(sorted(set(seen)))
    again = diffuse_parallel(pipe, world, **_lead_args(world, call, emb))  # then all four again
    ref = pipe.diffuse(emb, (64, 64), seed=5, steps=2)
    return {"at4": float((at4 - ref).abs().max()), "at2": float((at2 - ref).abs().max()),
            "at1": float((at1 - ref).abs().max()), "again": float((again - ref).abs().max()),
            "pixels": _pixel_diff(pipe, at4, ref), "shares": shares}


def test_degree_4_on_4_processes_and_one_model_switches_groups_per_call():
    got = _run_group(_switching, 4)
    for rank, r in got.items():
        assert r["shares"] == [[4], [8], [16]], r  # 16 image tokens split 4 ways, 2 ways, not at all
        assert r["at1"] == 0.0, r  # the hooks and processors are gone after each parallel call
        assert max(r["at4"], r["at2"], r["again"]) < 1e-3, (rank, r)
        assert r["pixels"] <= 1.0, (rank, r)


# ----------------------------------------------------------------------------------------- the CLI
def test_generate_degree_2_writes_degree_1s_image(tmp_path):
    import numpy as np
    from PIL import Image

    args = ["generate", "--model", "tiny-sd3", "--prompt", PROMPT, "--size", "64x64", "--steps", "3", "--seed", "7"]
    one = runner.invoke(app, [*args, "--out", str(tmp_path / "one.png")])
    assert one.exit_code == 0, one.output
    # a fresh process: the command spawns its members and joins their group as rank 0
    two = subprocess.run([sys.executable, "-m", "tridentcore.cli", *args, "--degree", "2", "--out",
                          str(tmp_path / "two.png")], capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stdout + two.stderr
    assert "degree 2" in two.stdout
    assert "Traceback" not in two.stderr and "Warning" not in two.stderr, two.stderr
    a, b = (np.asarray(Image.open(tmp_path / n), dtype=np.int16) for n in ("one.png", "two.png"))
    assert a.shape == b.shape == (64, 64, 3)
    assert np.abs(a - b).mean() <= 1.0


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_generate_refuses_degree_2_for_a_unet(tmp_path, model):
    result = runner.invoke(app, ["generate", "--model", model, "--prompt", "x", "--size", "64x64", "--steps", "1",
                                 "--degree", "2", "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "UNet" in result.output and "degree 1 only" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o.png").exists()


def test_generate_refuses_a_degree_the_shape_cannot_take(tmp_path):
    result = runner.invoke(app, ["generate", "--model", "tiny-flux", "--prompt", "x", "--size", "48x48", "--steps", "1",
                                 "--degree", "4", "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "2 attention heads, which degree 4 does not divide (this model splits 2 ways)" in result.output
    # (no size helps where the heads do not divide: outside test 126 was told to choose one)
    assert "9 image tokens at 48x48, which degree 4 does not divide" in result.output
    assert "choose a size" not in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(app, ["generate", "--model", "tiny-flux", "--prompt", "x", "--size", "48x48", "--steps", "1",
                                 "--degree", "2", "--out", str(tmp_path / "o.png")])
    assert result.exit_code == 2
    assert "9 image tokens at 48x48, which degree 2 does not divide (choose a size whose token count it divides)" \
        in result.output


# ---------------------------------------------------------------------------- gloo on CPU, NCCL on CUDA
def test_the_backend_and_the_device_are_the_only_difference_between_cpu_and_cuda():
    from tridentcore.pipelines.parallel import backend_for
    from tridentcore.runtime.local_group import plan_members

    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == backend_for("cuda:1") == backend_for(torch.device("cuda", 0)) == "nccl"
    cpu, cuda, cuda2 = plan_members("cpu", 4, 8), plan_members("cuda", 4, 8), plan_members("cuda:2", 4, 8)
    assert [m.backend for m in cpu] == ["gloo"] * 4 and [m.backend for m in cuda] == ["nccl"] * 4
    assert [m.device for m in cpu] == ["cpu"] * 4
    assert [m.device for m in cuda] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [m.device for m in cuda2] == ["cuda:2", "cuda:3", "cuda:4", "cuda:5"]
    for a, b in zip(cpu, cuda):
        differ = {f for f in a.__dataclass_fields__ if getattr(a, f) != getattr(b, f)}
        assert differ == {"backend", "device"}
    assert [(m.rank, m.world, m.threads) for m in cpu] == [(r, 4, 2) for r in range(4)]
    assert plan_members("cpu", 4, 2)[0].threads == 1  # never fewer than one
    with pytest.raises(ValueError, match="unknown device"):
        plan_members("cpu:1", 2, 2)


# ------------------------------------------------------------------------------- loopback only
def _listening_on(port: int) -> set[str]:
    """The local addresses (hex, as /proc/net/tcp* writes them) of sockets listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_the_worlds_store_listens_on_loopback_only():
    # c10d's own TCPStore server listens on every interface; ours binds 127.0.0.1 and hands the socket over
    from tridentcore.runtime.parallel_worlds import WorldKeys, store_client

    keys = WorldKeys(timeout_s=10)
    keys.start()
    assert _listening_on(keys.port) == {"0100007F"}  # 127.0.0.1, nothing else
    client = store_client(keys.port, 10)
    client.set("k", "v")
    assert keys.store.get("k") == b"v"


@pytest.mark.parametrize("after_s", [0.2, 2.5])
def test_ctrl_c_stops_generate_degree_2_quietly_while_members_load_or_compute(after_s, tmp_path):
    """Ctrl-C at the terminal signals the whole process group: the lead exits 130 and stops its
    members, which ignore it (before, one interrupted mid-import printed its own traceback, or an
    ImportError of a half-imported numpy); nothing is left running."""
    import signal
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "generate", "--model", "tiny-sd3", "--prompt",
                             "x", "--size", "256x256", "--steps", "200", "--degree", "2", "--out", str(tmp_path / "x.png")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lead = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while not lead.children() and time.monotonic() < deadline:  # the member is spawned
        time.sleep(0.02)
    time.sleep(after_s)  # 0.2 s after its spawn: the member imports and loads; 2.5 s: loaded, or computing
    family = lead.children(recursive=True)
    assert family
    os.killpg(proc.pid, signal.SIGINT)
    t0 = time.monotonic()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130 and "Traceback" not in out and "Error" not in out, out[-3000:]
    assert time.monotonic() - t0 < 20
    assert not psutil.wait_procs(family, timeout=10)[1]


@pytest.mark.parametrize("after_s", [2.5, 6.0])
def test_a_sigterm_to_the_lead_of_generate_degree_2_leaves_no_member_traceback(after_s, tmp_path):
    """`kill PID` of `generate --degree 2`'s lead (outside test 120): its member, finding the lead gone as it
    reported its load or its collective's failure, printed a BrokenPipeError traceback under the lead's end,
    which was killed where it stood (exit 143 without a word, its member computing on for 4 s: outside test
    122). SIGTERM now ends it as Ctrl-C does: it stops its member and says nothing was written, exit 143;
    nothing is left running."""
    import signal
    import time

    import psutil

    out_file = tmp_path / "x.png"
    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "generate", "--model", "tiny-sd3", "--prompt",
                             "x", "--size", "256x256", "--steps", "200", "--degree", "2", "--out", str(out_file)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lead = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while not lead.children() and time.monotonic() < deadline:  # the member is spawned
        time.sleep(0.02)
    time.sleep(after_s)  # loading or loaded (2.5 s), computing (6 s) on a quiet host
    family = lead.children(recursive=True)
    assert family
    os.kill(proc.pid, signal.SIGTERM)  # the lead this test started, alone
    out = proc.communicate(timeout=60)[0]
    if proc.returncode == 0:  # (a host fast enough to finish first: nothing to see)
        pytest.skip(f"generate ended before the signal: {out[-200:]}")
    # (torch may print its own warning of the lead's unwaited collective as it exits mid-diffuse, as after a Ctrl-C)
    assert proc.returncode == 128 + signal.SIGTERM and "Traceback" not in out and "Error" not in out, out[-3000:]
    assert f"interrupted; nothing written to {out_file}" in out, out[-3000:]
    assert not psutil.wait_procs(family, timeout=10)[1]
    assert not out_file.exists()


def test_a_member_killed_mid_diffuse_is_named_not_aborted(tmp_path):
    """Outside test: `generate --degree 2` with its member killed (kill -9) during the diffuse printed
    only `Aborted!` (exit 1): reading the dead member's pipe raised EOFError, which the CLI takes as a
    Ctrl-C. It names the member and how it ended, exit 2."""
    import signal
    import time

    import psutil

    proc = subprocess.Popen([sys.executable, "-m", "tridentcore.cli", "generate", "--model", "tiny-sd3", "--prompt",
                             "x", "--size", "1024x512", "--steps", "200", "--degree", "2", "--out", str(tmp_path / "x.png")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lead = psutil.Process(proc.pid)
        deadline = time.monotonic() + 120
        member = None
        while member is None:  # the member (not multiprocessing's resource tracker)
            assert time.monotonic() < deadline and proc.poll() is None
            for child in lead.children():
                try:
                    cmd = " ".join(child.cmdline())
                except psutil.Error:
                    continue
                if "spawn_main" in cmd and "resource_tracker" not in cmd:
                    member = child
            time.sleep(0.02)
        # loaded and in the group: connected to the lead's store and to the lead (gloo)
        while len([c for c in member.net_connections(kind="tcp") if c.status == "ESTABLISHED"]) < 2:
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        time.sleep(1.0)  # 200 steps of 1024x512 on two processes: well inside the diffuse
        member.send_signal(signal.SIGKILL)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert proc.returncode == 2, out[-3000:]
    assert "error: the diffuse at degree 2 failed: trident-member-1 was killed (SIGKILL)" in out, out[-3000:]
    assert "Aborted" not in out
