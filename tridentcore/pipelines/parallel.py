"""A sequence-parallel (Ulysses) diffuse over the members of a torch.distributed process group.

``diffuse_parallel(pipe, group, ...)`` is collective: every member of ``group`` calls it with its
own copy of the same pipeline (the same weights). The group's rank 0, the *lead*, passes the call
and the encode output; the others pass nothing and receive both from the lead. Each member then
runs the whole denoising loop on its share of the latent tokens: diffusers' context-parallel hooks
split the token sequence at the transformer's input, Ulysses attention exchanges heads for tokens
(all-to-all) around each attention, and the output projection gathers the sequence again, so every
member ends each step with the full noise prediction and takes the same scheduler step. The
result is the degree-1 result up to float rounding. The backend is the group's: gloo on CPU, NCCL
on CUDA (:func:`backend_for`), and nothing else here depends on it.

What is used from diffusers, and what is ours:

* Flux and Wan ship a ``_cp_plan`` (which inputs to split, which output to gather); SD3's
  transformer has none, and its attention processor calls SDPA directly, where no context-parallel
  config can reach it. For SD3 we supply both (:mod:`.parallel_sd3`): a plan that splits the
  patch-embedded image tokens and the projected text tokens and gathers at ``proj_out``, and
  SD3's joint-attention arithmetic routed through diffusers' attention dispatch. SD3's 333 text
  tokens (77 CLIP + 256 T5) divide by no even degree, so SD3 runs diffusers' "Ulysses anything"
  mode (uneven token shares; it exchanges the share sizes before each all-to-all).
* Ulysses only: ring attention needs the softmax's log-sum-exp, which CPU SDPA does not return.
* UNet models (SD 1.x, SDXL) have no token sequence to split: degree > 1 is refused
  (:func:`degree_problems`), as is a degree that does not divide the image tokens or the heads.

**Can one model instance switch between process groups per call?** Not with diffusers' own
entry point: ``ModelMixin.enable_parallelism`` may be called once per model (a second call raises)
and there is no ``disable``; it builds its mesh with ``init_device_mesh`` over the whole default
world (collective over every rank, so it cannot run while other workers are busy) and computes
``rank % torch.accelerator.device_count()``, a ZeroDivisionError on CPU. But the pieces under it
do switch: the hooks come and go with the public ``apply_context_parallel`` /
``remove_context_parallel``, and attention processors read their ``_parallel_config`` at call time.
So :func:`sequence_parallel` is the smallest layer that can: for the duration of one call it builds
a 1-D ``DeviceMesh`` from the given group (``DeviceMesh.from_group``: no collective, no new
process group), fills the config's resolved fields itself (``ContextParallelConfig.setup`` would
call ``_flatten``, which creates process groups collectively over the default world), points the
processors at it, attaches the hooks, and undoes all of it on exit. One instance can thus run at
{0,1}, then {2,3}, then {0,1,2,3}, then alone (``tests/test_parallel_diffuse.py`` does exactly
that). The groups themselves must exist: ``dist.new_group`` is collective over the default world,
so a serving worker creates every group it may join once, at start-up. The price: the hooks and
the config live on the module during the call, so one model instance runs one call at a time, and
the fields filled here are diffusers' private ones (checked against diffusers 0.42.1).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .parallel_sd3 import SD3_PLAN, sd3_problems, swap_sd3_processors
from .staged_base import Embeddings, StagedPipeline

__all__ = ["DegreeError", "DiffuseCall", "agree", "backend_for", "degree_problems", "diffuse_parallel", "sequence_parallel",
           "transformer_of"]

_LATENTS = "__latents__"  # the resumed latents travel with the embeddings under this key


class DegreeError(ValueError):
    """A diffuse cannot run sequence-parallel at this degree (a UNet, or tokens or heads that do not divide)."""


@dataclass(frozen=True, slots=True)
class DiffuseCall:
    """What the lead asks every member to run: ``StagedPipeline.diffuse``'s arguments but the tensors."""

    height: int
    width: int
    frames: int = 1
    seed: int | tuple[int, ...] = 0
    steps: int | None = None
    guidance: float | None = None
    start_step: int = 0
    end_step: int | None = None


@dataclass(frozen=True, slots=True)
class _Plan:
    cp_plan: dict
    uneven: bool  # diffusers' ulysses_anything: token shares may differ by one
    text_split: bool  # the text tokens are split evenly too (Flux): they must divide by the degree


def backend_for(device: str | torch.device) -> str:
    """The torch.distributed backend for members computing on ``device``: NCCL on CUDA, gloo otherwise."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _plan(transformer: torch.nn.Module | None) -> _Plan | None:
    if transformer is None:
        return None
    if type(transformer).__name__ == "SD3Transformer2DModel":
        return _Plan(SD3_PLAN, uneven=True, text_split=False)
    shipped = getattr(transformer, "_cp_plan", None)
    if not shipped:
        return None
    return _Plan(shipped, uneven=False, text_split="encoder_hidden_states" in shipped.get("", {}))


def _transformer(pipe: StagedPipeline) -> torch.nn.Module | None:
    return getattr(pipe.pipe, "transformer", None)


def transformer_of(pipe: StagedPipeline) -> torch.nn.Module | None:
    """The denoiser :func:`sequence_parallel` wraps (None for a UNet pipeline)."""
    return _transformer(pipe)


def agree(group, flag: bool, device: torch.device) -> bool:
    """The lead's (group rank 0) ``flag`` on every member: collective, one small broadcast. A serving
    worker's step loop calls it at each step boundary so that every member stops at the same step."""
    box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(box, group=group, group_src=0)
    return bool(box.item())


def degree_problems(pipe: StagedPipeline, height: int, width: int, frames: int, degree: int,
                    text_tokens: int | None = None) -> list[str]:
    """Every reason ``pipe`` cannot diffuse this shape at ``degree`` (empty when it can)."""
    if degree == 1:
        return []
    if degree < 1:
        return [f"degree must be at least 1 (got {degree})"]
    tr = _transformer(pipe)
    plan = _plan(tr)
    if plan is None:
        kind = f"a UNet ({pipe.family} family)" if tr is None else f"{type(tr).__name__} (no context-parallel plan)"
        return [f"{kind} has no token sequence to split, so it runs at degree 1 only (got degree {degree}); "
                f"sequence parallelism needs an SD3, Flux or Wan transformer"]
    problems = sd3_problems(tr) if plan.cp_plan is SD3_PLAN else []
    heads = int(tr.config.num_attention_heads)
    if heads % degree:  # (no size helps then: outside test 126 was told to choose one)
        splits = [d for d in range(2, heads + 1) if heads % d == 0]
        problems.append(f"{heads} attention heads, which degree {degree} does not divide (this model splits "
                        + (f"{' or '.join(map(str, splits))} ways" if splits else "no way") + ")")
    tokens = pipe.image_tokens(height, width, frames)
    if tokens % degree:
        shape = f"{width}x{height}" + (f"x{frames}" if frames > 1 else "")
        problems.append(f"{tokens} image tokens at {shape}, which degree {degree} does not divide"
                        + ("" if heads % degree else " (choose a size whose token count it divides)"))
    if plan.text_split and text_tokens is not None and text_tokens % degree:
        problems.append(f"{text_tokens} text tokens, which degree {degree} does not divide")
    return problems


def _members_config(group, degree: int, device: torch.device, uneven: bool):
    """diffusers' ParallelConfig for ``group``, resolved by hand (the module docstring says why)."""
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from torch.distributed.device_mesh import DeviceMesh

    rank = dist.get_rank(group)
    mesh = DeviceMesh.from_group(group, device.type, mesh_dim_names=("ulysses",))
    cp = ContextParallelConfig(ulysses_degree=degree, ulysses_anything=uneven)
    cp._rank, cp._world_size, cp._device, cp._mesh = rank, degree, device, mesh
    cp._flattened_mesh = cp._ulysses_mesh = mesh  # ring degree 1: the token split is the Ulysses split
    cp._ring_mesh, cp._ring_local_rank, cp._ulysses_local_rank = None, 0, rank
    config = ParallelConfig(context_parallel_config=cp)
    config._rank, config._world_size, config._device, config._mesh = rank, degree, device, mesh
    return config


@contextlib.contextmanager
def sequence_parallel(transformer: torch.nn.Module, group) -> Iterator[int]:
    """Run ``transformer`` sequence-parallel over ``group`` inside the block (yields the degree).

    Collective in effect: every member must run the same forwards inside the block. A group of one
    (or ``None``) leaves the model untouched.
    """
    degree = 1 if group is None else dist.get_world_size(group)
    if degree == 1:
        yield 1
        return
    if dist.get_rank(group) < 0:
        raise ValueError("this process is not a member of the group")
    plan = _plan(transformer)
    if plan is None:
        raise DegreeError(f"{type(transformer).__name__} has no context-parallel plan: degree 1 only")
    if plan.cp_plan is SD3_PLAN and sd3_problems(transformer):
        raise DegreeError(f"{type(transformer).__name__}: " + "; ".join(sd3_problems(transformer)))
    if getattr(transformer, "_parallel_config", None) is not None:
        raise RuntimeError("this model was parallelised by diffusers' enable_parallelism: it is bound to one mesh")
    from diffusers.hooks.context_parallel import apply_context_parallel, remove_context_parallel

    device = next(transformer.parameters()).device
    config = _members_config(group, degree, device, plan.uneven)
    restore = swap_sd3_processors(transformer) if plan.cp_plan is SD3_PLAN else []
    processors = [m.processor for m in transformer.modules()
                  if hasattr(getattr(m, "processor", None), "_parallel_config")]
    try:
        for p in processors:
            p._parallel_config = config
        apply_context_parallel(transformer, config.context_parallel_config, plan.cp_plan)
        try:
            with warnings.catch_warnings():
                # diffusers' gather still calls funcol.all_gather_tensor, deprecated in torch 2.13
                warnings.filterwarnings("ignore", message=".*all_gather_tensor.*", category=FutureWarning)
                yield degree
        finally:
            remove_context_parallel(transformer, plan.cp_plan)
    finally:
        for p in processors:
            p.__dict__.pop("_parallel_config", None)  # back to the class default, None
        for module, processor in restore:
            module.set_processor(processor)


def _share(call: DiffuseCall | None, tensors: Embeddings, group, device: torch.device):
    """The lead's call and tensors, on every member (the lead's own tensors moved to ``device``)."""
    lead = dist.get_rank(group) == 0
    meta = [(call, {k: (tuple(t.shape), t.dtype) for k, t in tensors.items()}) if lead else None]
    dist.broadcast_object_list(meta, group=group, group_src=0, device=device if device.type == "cuda" else None)
    call, shapes = meta[0]
    out = {}
    for key, (shape, dtype) in shapes.items():
        t = tensors[key].to(device).contiguous() if lead else torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(t, group=group, group_src=0)
        out[key] = t
    return call, out


@torch.inference_mode()
def diffuse_parallel(pipe: StagedPipeline, group, call: DiffuseCall | None = None,
                     embeddings: Embeddings | None = None, latents: torch.Tensor | None = None) -> torch.Tensor:
    """One diffuse, sequence-parallel over ``group``; collective (the module docstring).

    The lead (group rank 0) passes ``call`` and ``embeddings`` (and ``latents`` to resume at
    ``call.start_step``); the other members pass only ``pipe`` and ``group``. Every member returns
    the latents. A group of one (or ``None``) is an ordinary ``pipe.diffuse``. Problems with the
    degree raise :class:`DegreeError` on every member alike, before any collective of the diffuse.
    """
    degree = 1 if group is None else dist.get_world_size(group)
    lead = degree == 1 or dist.get_rank(group) == 0
    if lead and (call is None or embeddings is None):
        raise ValueError("the lead (group rank 0) passes the call and the embeddings")
    tr = _transformer(pipe)
    if degree > 1:
        if dist.get_rank(group) < 0:
            raise ValueError("this process is not a member of the group")
        device = next((tr if tr is not None else pipe.pipe.unet).parameters()).device
        tensors = dict(embeddings or {})
        if latents is not None:
            tensors[_LATENTS] = latents
        call, tensors = _share(call, tensors if lead else {}, group, device)
        latents = tensors.pop(_LATENTS, None)
        embeddings = tensors
    text = embeddings.get("prompt_embeds")
    problems = degree_problems(pipe, call.height, call.width, call.frames, degree,
                               None if text is None else int(text.shape[1]))
    if problems:
        raise DegreeError(f"{pipe.name}: " + "; ".join(problems))
    shape = (call.height, call.width, call.frames)
    with sequence_parallel(tr, group if degree > 1 else None):
        return pipe.diffuse(embeddings, shape, seed=call.seed, steps=call.steps, guidance=call.guidance,
                            start_step=call.start_step, end_step=call.end_step, latents=latents)
