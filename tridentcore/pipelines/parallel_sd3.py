"""SD3 under diffusers' context parallelism (see :mod:`.parallel`): the plan its transformer lacks,
and its joint attention routed through diffusers' attention dispatch.

diffusers' ``SD3Transformer2DModel`` ships no ``_cp_plan`` and its ``JointAttnProcessor2_0`` calls
SDPA itself, so no context-parallel config can reach its attention. :data:`SD3_PLAN` splits the
image tokens at the patch embedding's output (after the positional embedding is added) and the
text tokens at the context embedder's output, and gathers the image tokens at ``proj_out`` (the
unpatchify after it needs them all). :class:`JointUlyssesProcessor` is ``JointAttnProcessor2_0``'s
arithmetic in the ``[batch, tokens, heads, head_dim]`` layout of ``dispatch_attention_fn``, which
runs Ulysses when given a config (and plain SDPA without one).
"""

from __future__ import annotations

import torch

__all__ = ["SD3_PLAN", "JointUlyssesProcessor", "sd3_problems", "swap_sd3_processors"]


def _sd3_plan() -> dict:
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    return {
        "pos_embed": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "context_embedder": {0: ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)},
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }


SD3_PLAN: dict = _sd3_plan()


class JointUlyssesProcessor:
    """SD3's joint attention (image and text tokens attend together) through diffusers' dispatch."""

    _attention_backend = None
    _parallel_config = None

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *args, **kwargs):
        from diffusers.models.attention_dispatch import dispatch_attention_fn

        image_tokens = hidden_states.shape[1]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (attn.heads, -1))

        query, key, value = heads(attn.to_q(hidden_states)), heads(attn.to_k(hidden_states)), heads(attn.to_v(hidden_states))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if encoder_hidden_states is not None:
            eq = heads(attn.add_q_proj(encoder_hidden_states))
            ek = heads(attn.add_k_proj(encoder_hidden_states))
            ev = heads(attn.add_v_proj(encoder_hidden_states))
            if attn.norm_added_q is not None:
                eq = attn.norm_added_q(eq)
            if attn.norm_added_k is not None:
                ek = attn.norm_added_k(ek)
            query, key, value = torch.cat([query, eq], 1), torch.cat([key, ek], 1), torch.cat([value, ev], 1)
        out = dispatch_attention_fn(query, key, value, backend=self._attention_backend,
                                    parallel_config=self._parallel_config)
        out = out.flatten(2, 3).to(query.dtype)
        context = None
        if encoder_hidden_states is not None:
            out, context = out[:, :image_tokens], out[:, image_tokens:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if encoder_hidden_states is None else (out, context)


def _attentions(transformer: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in transformer.modules() if hasattr(m, "processor") and hasattr(m, "set_processor")]


def sd3_problems(transformer: torch.nn.Module) -> list[str]:
    """Attention here with no sequence-parallel version (SD3.5's image-only second attention)."""
    from diffusers.models.attention_processor import JointAttnProcessor2_0

    other = sorted({type(m.processor).__name__ for m in _attentions(transformer)
                    if not isinstance(m.processor, (JointAttnProcessor2_0, JointUlyssesProcessor))})
    return [f"attention processor(s) {', '.join(other)} have no sequence-parallel version"] if other else []


def swap_sd3_processors(transformer: torch.nn.Module) -> list[tuple[torch.nn.Module, object]]:
    """Give every joint attention of ``transformer`` a :class:`JointUlyssesProcessor` (check
    :func:`sd3_problems` first); returns what to restore."""
    attentions = _attentions(transformer)
    restore = [(m, m.processor) for m in attentions]
    processor = JointUlyssesProcessor()
    for m in attentions:
        m.set_processor(processor)
    return restore
