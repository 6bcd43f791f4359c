"""One decoding step of a LLaMA-family causal LM, written out: the hot loop of PPO's rollouts.

A rollout decodes hundreds of single-token steps, and at one token per row a transformers
forward spends most of its time outside the arithmetic: every step it rebuilds the attention
mask from the 2-D padding mask (a host check whether it is all ones), recomputes the rotary
angles, dispatches through its attention interface and cache object, and casts in every norm.
:func:`decode_step` does the same arithmetic directly on the model's own weights:

    h = embed[token]
    for each layer:
        x = rmsnorm(h);  q, k, v = x·Wqᵀ, x·Wkᵀ, x·Wvᵀ;  rotate q, k at the row's position
        K[:, :, s], V[:, :, s] = k, v                       (the cache slot s = P + t, in place)
        h = h + Wo·softmax(q·K[:, :, :s+1]ᵀ / √d + key_mask)·V[:, :, :s+1]
        h = h + W_down·(act(rmsnorm(h)·W_gateᵀ) ⊙ rmsnorm(h)·W_upᵀ)
    logits = rmsnorm(h)·W_lmᵀ

with the rotary cos/sin read from a table built once per rollout by the model's own rotary
module (so every RoPE variant whose angles depend on the position only — default, linear,
llama3, yarn — is the model's own), the key mask fixed for the rollout (the prompts' left padding; a
row's own ended positions only ever affect that row, whose tokens are then padding), and
attention through ``scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU).
It matches a transformers forward to float rounding (greedy tokens exactly; tested), on the
model as it is — plain or FSDP2-unsharded (:func:`trainer.rollout.unsharded`) — with nothing
copied. Models it does not know (another architecture, a dynamic RoPE) decode through
transformers: :func:`llama_decoder` returns None for them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.fake import host_item, is_fake

__all__ = ["LlamaDecoder", "decode_step", "llama_decoder"]

# architectures whose decoder layer is LLaMA's (pre-norm RMSNorm, RoPE attention, gated MLP)
LLAMA_FAMILY = ("llama", "mistral")
# RoPE variants whose angles depend on the position only (longrope switches its factors by the
# sequence length, dynamic NTK rescales with it: those decode through transformers)
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


@dataclass
class LlamaDecoder:
    """What :func:`decode_step` reads, gathered once per rollout: the model's own weight tensors
    (no copies; under FSDP2 the unsharded ones, so build it inside :func:`trainer.rollout.unsharded`)
    and the rollout's fixed tables.

    Attributes:
        embed: ``[V, D]``. layers: per layer ``(ln_in, wq, bq, wk, bk, wv, bv, wo, bo, ln_post,
            w_gate, b_gate, w_up, b_up, w_down, b_down)`` (biases None when the model has none).
        norm: ``[D]`` final norm weight. lm_head: ``[V, D]``. eps: the norms' epsilon.
        act: the MLP activation (``torch.nn.functional`` name, e.g. ``silu``).
        cos, sin: ``[C, head_dim]`` rotary tables for positions 0..C-1, in the model's dtype.
        key_mask: ``[B, 1, 1, C]`` bool (True = attend), or None when no prompt is padded.
        heads, kv_heads, head_dim: attention geometry; scaling: the softmax scale.
    """

    embed: torch.Tensor
    layers: list[tuple]
    norm: torch.Tensor
    lm_head: torch.Tensor
    eps: float
    act: str
    cos: torch.Tensor
    sin: torch.Tensor
    key_mask: torch.Tensor | None
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float


_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "relu": "relu"}


def llama_decoder(model: nn.Module, prompt_mask: torch.Tensor, capacity: int) -> LlamaDecoder | None:
    """The decoder for ``model`` over a rollout of left-padded prompts ``prompt_mask`` ``[B, P]``
    and ``capacity`` cache positions (P + new tokens); None when ``model`` is not a LLaMA-family
    causal LM whose step this module reproduces (it then decodes through transformers)."""
    config = getattr(model, "config", None)
    backbone = getattr(model, "model", None)
    if config is None or getattr(config, "model_type", None) not in LLAMA_FAMILY or backbone is None:
        return None
    rope = getattr(backbone, "rotary_emb", None)
    if rope is None or getattr(rope, "rope_type", "default") not in STATIC_ROPE:
        return None
    act = _ACTS.get(getattr(config, "hidden_act", None))
    if act is None or getattr(config, "sliding_window", None) or not hasattr(model, "lm_head"):
        return None
    attn = backbone.layers[0].self_attn
    heads = config.num_attention_heads
    head_dim = getattr(attn, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    B, P = prompt_mask.shape
    device = prompt_mask.device
    dtype = backbone.embed_tokens.weight.dtype
    positions = torch.arange(capacity, device=device)[None]
    cos, sin = rope(torch.empty(0, device=device, dtype=dtype), positions)  # the model's own RoPE
    key_mask = None
    if not _all_true(prompt_mask):
        key_mask = torch.ones(B, 1, 1, capacity, dtype=torch.bool, device=device)
        key_mask[:, 0, 0, :P] = prompt_mask
    layers = []
    for layer in backbone.layers:
        a, mlp = layer.self_attn, layer.mlp
        linears = (a.q_proj, a.k_proj, a.v_proj, a.o_proj)
        mlps = (mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        layers.append(
            (layer.input_layernorm.weight, *[t for lin in linears for t in (lin.weight, lin.bias)],
             layer.post_attention_layernorm.weight, *[t for lin in mlps for t in (lin.weight, lin.bias)])
        )  # fmt: skip
    return LlamaDecoder(
        embed=backbone.embed_tokens.weight, layers=layers, norm=backbone.norm.weight,
        lm_head=model.lm_head.weight, eps=float(backbone.norm.variance_epsilon), act=act,
        cos=cos[0], sin=sin[0], key_mask=key_mask, heads=heads, kv_heads=kv_heads,
        head_dim=head_dim, scaling=float(getattr(attn, "scaling", head_dim**-0.5)),
    )  # fmt: skip


def _all_true(mask: torch.Tensor) -> bool:
    return False if is_fake(mask) else bool(host_item(mask.all()))  # (one host sync per rollout)


# --------------------------------------------------------------------------------------------
# The pieces between the attention calls: pure functions of tensors
# --------------------------------------------------------------------------------------------
def _rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """transformers' LlamaRMSNorm, step for step (fp32 statistics, cast back, then the weight)."""
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE on ``x`` ``[B, H, d]`` with ``cos``/``sin`` ``[B, 1, d]`` (rotate_half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def attn_in(h, cos, sin, ln, wq, bq, wk, bk, wv, bv, eps: float, heads: int, kv_heads: int):
    """Norm, q/k/v projections, RoPE: ``h`` ``[B, D]`` → q ``[B, H, d]``, k, v ``[B, Hkv, d]``."""
    B = h.shape[0]
    x = _rmsnorm(h, ln, eps)
    q = F.linear(x, wq, bq).view(B, heads, -1)
    k = F.linear(x, wk, bk).view(B, kv_heads, -1)
    v = F.linear(x, wv, bv).view(B, kv_heads, -1)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def attn_out_mlp(h, o, wo, bo, ln, wg, bg, wu, bu, wd, bd, eps: float, act: str):
    """Output projection and residual, then the gated MLP and its residual: ``[B, D]``."""
    h = h + F.linear(o, wo, bo)
    x = _rmsnorm(h, ln, eps)
    return h + F.linear(getattr(F, act)(F.linear(x, wg, bg)) * F.linear(x, wu, bu), wd, bd)


def lm_logits(h, norm, lm_head, eps: float):
    """Final norm and LM head: ``[B, V]``."""
    return F.linear(_rmsnorm(h, norm, eps), lm_head)


def decode_step(
    dec: LlamaDecoder,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    slot: int,
    keys: list[torch.Tensor],
    values: list[torch.Tensor],
) -> torch.Tensor:
    """One token per row through the whole model; writes its keys/values at cache ``slot``.

    Args:
        tokens: ``[B]`` int64, the tokens just sampled. positions: ``[B]`` their RoPE positions
            (counted over each row's real tokens).
        slot: the cache position written (P + t); attention covers positions 0..slot.
        keys, values: per layer ``[B, kv_heads, C, head_dim]`` buffers (the prefill filled 0..P-1).

    Returns:
        ``[B, V]`` logits of the next token, in the model's dtype.
    """
    B = tokens.shape[0]
    h = F.embedding(tokens, dec.embed)  # [B, D]
    cos, sin = dec.cos[positions][:, None], dec.sin[positions][:, None]  # [B, 1, d]
    end = slot + 1
    mask = None if dec.key_mask is None else dec.key_mask[..., :end]
    group = dec.heads // dec.kv_heads  # query heads per KV head (grouped-query attention)
    for i, (ln, wq, bq, wk, bk, wv, bv, wo, bo, ln2, wg, bg, wu, bu, wd, bd) in enumerate(dec.layers):
        q, k, v = attn_in(h, cos, sin, ln, wq, bq, wk, bk, wv, bv, dec.eps, dec.heads, dec.kv_heads)
        keys[i][:, :, slot] = k
        values[i][:, :, slot] = v
        # one query per row: a KV head's `group` query heads are `group` queries of that head, so
        # GQA needs no repeated keys/values (head h reads KV head h // group, as repeat_kv does)
        o = F.scaled_dot_product_attention(
            q.view(B, dec.kv_heads, group, -1),
            keys[i][:, :, :end],
            values[i][:, :, :end],
            attn_mask=mask,
            scale=dec.scaling,
        )  # [B, kv_heads, group, d]
        h = attn_out_mlp(h, o.view(B, -1), wo, bo, ln2, wg, bg, wu, bu, wd, bd, dec.eps, dec.act)
    return lm_logits(h, dec.norm, dec.lm_head, dec.eps)
