"""Rollouts for PPO: batched sampling with a KV cache, and the typed rollout batch.

A rollout row is a left-padded prompt followed by a right-padded response::

    prompt_ids    [B, P]   <pad> <pad> <s> p p p          (prompt_mask True on real tokens)
    response_ids  [B, R]   r r r </s> <pad> <pad>          (response_mask True up to EOS, included)

so the RLHF math (``trainer/rlhf.py``, ``fgkernels.gae``) sees right-padded ``[B, R]`` response
tensors, and a model sees ``cat(prompt, response)`` with position ids counted over real tokens
only (``attention_mask.cumsum - 1``), the same positions during generation and scoring.

Under FSDP2, :func:`unsharded` all-gathers the actor once for a whole rollout and reshards it at
the end; without it every decoding step would all-gather every layer again. Each decoding step of
a LLaMA-family model is :func:`trainer.decode.decode_step` over those gathered weights.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from trainer.decode import decode_step, llama_decoder
from trainer.fake import host_item, host_list, in_dry_run, is_fake
from trainer.models import position_ids

__all__ = ["Rollout", "generate", "rollout_samples", "sample_next", "token_pieces", "unsharded"]


@dataclass
class Rollout:
    """One rank's PPO batch. ``B`` rows, prompts ``[B, P]`` left-padded, responses ``[B, R]``
    right-padded; every per-token field is over response tokens, fp32, 0 where masked.

    Attributes:
        prompt_ids: ``[B, P]`` int64. prompt_mask: ``[B, P]`` bool.
        response_ids: ``[B, R]`` int64. response_mask: ``[B, R]`` bool (EOS included).
        old_logp: ``[B, R]`` log π_old(a_t) of the sampling policy (at the sampling temperature).
        entropy: ``[B, R]`` H(π_old(· | s_t)) at the sampling temperature.
        ref_logp: ``[B, R]`` log π_ref(a_t) of the frozen reference.
        values: ``[B, R]`` V(s_t) of the critic before the update.
        token_scores: ``[B, R]`` the reward model's per-token rewards r_t.
        sequence_scores: ``[B]`` the reward model's sequence reward R(τ).
        rewards: ``[B, R]`` the per-token reward PPO optimises (RM part + KL penalty).
        advantages: ``[B, R]`` GAE advantages (whitened over all ranks when asked).
        returns: ``[B, R]`` advantages + values (unwhitened), the critic's target.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    old_logp: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    ref_logp: torch.Tensor | None = None
    values: torch.Tensor | None = None
    token_scores: torch.Tensor | None = None
    sequence_scores: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    # the fields step 2 (score) fills
    SCORED: ClassVar[tuple[str, ...]] = (
        "old_logp", "entropy", "ref_logp", "values", "token_scores", "sequence_scores",
    )  # fmt: skip

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:
        """``[B, P + R]`` prompt then response."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        """``[B, P + R]`` bool, True on real prompt and response tokens."""
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    @property
    def full_response_mask(self) -> torch.Tensor:
        """``[B, P + R]`` bool, True on response tokens only (what a reward model takes)."""
        return torch.cat([torch.zeros_like(self.prompt_mask), self.response_mask], dim=1)

    def index(self, idx: torch.Tensor | slice) -> Rollout:
        """The rows ``idx`` of every field (minibatching in one line)."""
        return dataclasses.replace(
            self,
            **{
                f.name: getattr(self, f.name)[idx]
                for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None
            },
        )

    def chunks(self, size: int) -> Iterator[Rollout]:
        """Consecutive row slices of at most ``size`` rows."""
        for i in range(0, len(self), size):
            yield self.index(slice(i, i + size))


@contextmanager
def unsharded(model: nn.Module):
    """FSDP2: all-gather every parameter group of ``model`` once and keep it gathered across
    forwards until the block ends, then reshard (a no-op for an unsharded model).

    The modules' ``reshard_after_forward`` settings are saved and restored (FSDP2 keeps them
    per parameter group as ``post_forward_mesh_info``; there is no public getter in torch 2.13).
    While gathered, FSDP2's forward hooks are taken off (and put back after): with every group
    unsharded they would only re-check state on each of the hundreds of decoding forwards (15%
    of a tiny model's decode: ``bench/bench_rollout.py``); the modules then hold their plain
    unsharded parameters. A dry run keeps the hooks (its memory tracker hooks FSDP2's states).
    """
    from torch.distributed.fsdp import FSDPModule  # lazy: heavy (~0.6 s)

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    saved = []
    for m in mods:
        state = _fsdp_state(m)
        saved.append(
            (state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in state._fsdp_param_groups])
        )
        m.set_reshard_after_forward(False, recurse=False)
    for m in mods:
        m.unshard()  # one all-gather per parameter group, for the whole rollout
    hooks = None if in_dry_run() else _fsdp_hooks_off(mods)
    try:
        yield model
    finally:
        if hooks is not None:
            _restore_hooks(hooks)
        for m, (auto, infos) in zip(mods, saved):
            state = _fsdp_state(m)
            state._auto_reshard_after_forward = auto
            for g, info in zip(state._fsdp_param_groups, infos):
                g.post_forward_mesh_info = info
            m.reshard()


# FSDP2 internals read and restored above (torch 2.13; no public getter for the per-group
# reshard setting): checked on use, so a torch that renamed them fails with this line, not deep in
# a rollout with an AttributeError.
_FSDP_STATE_FIELDS = ("_auto_reshard_after_forward", "_fsdp_param_groups")


def _fsdp_state(module: nn.Module):
    """``module``'s FSDP2 state, after checking it has the private fields :func:`unsharded` uses.

    Raises:
        RuntimeError: naming the missing field and the installed torch (pyproject pins the tested
            range).
    """
    state = module._get_fsdp_state() if hasattr(module, "_get_fsdp_state") else None
    missing = [f for f in _FSDP_STATE_FIELDS if not hasattr(state, f)]
    groups = getattr(state, "_fsdp_param_groups", None) or []
    if not missing and not all(hasattr(g, "post_forward_mesh_info") for g in groups):
        missing = ["FSDPParamGroup.post_forward_mesh_info"]
    if state is None or missing:
        raise RuntimeError(
            f"rollout.unsharded needs FSDP2 internals of torch 2.13 ({missing or ['_get_fsdp_state']} "
            f"missing in torch {torch.__version__}); install a torch in the range pyproject.toml declares"
        )
    return state


def preallocated_cache(num_layers: int, capacity: int):
    """A transformers ``Cache`` of ``num_layers`` layers holding up to ``capacity`` positions
    (prompt + response) for a whole rollout: ``[B, heads, capacity, head_dim]`` buffers allocated
    at the prefill, each step's keys and values written in place, attention given a *view* of the
    filled prefix. transformers' ``DynamicLayer`` concatenates instead — a copy of the whole cache
    per layer per step, O(T²) bytes per rollout (22% of a profiled tiny-model decode on the CPU;
    2-6% of its wall time in ``bench/bench_rollout.py``);
    a static cache avoids the copy but attends over all ``capacity`` positions every step. The
    layers subclass ``DynamicLayer``, so the rest of the interface (masks, lengths) is the
    library's. None with a transformers older than the layer-based ``Cache`` (the model then grows
    its own ``DynamicCache``)."""
    try:
        from transformers.cache_utils import Cache, DynamicLayer  # optional: version-dependent (transformers)
    except ImportError:
        return None

    class _Layer(DynamicLayer):
        def __init__(self) -> None:
            super().__init__()
            self.length = 0
            self.capacity = capacity

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            B, H, _, D = key_states.shape
            self.device = key_states.device
            self.keys = key_states.new_empty(B, H, capacity, D)
            self.values = value_states.new_empty(B, H, capacity, value_states.shape[-1])
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if end > capacity:
                raise RuntimeError(f"KV cache of {capacity} positions overflows ({end})")
            self.keys[:, :, self.length : end] = key_states
            self.values[:, :, self.length : end] = value_states
            self.length = end
            return self.keys[:, :, :end], self.values[:, :, :end]

        def get_seq_length(self) -> int:
            return self.length

    try:
        return Cache(layers=[_Layer() for _ in range(num_layers)])
    except TypeError:  # a Cache without ``layers=``
        return None


_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks", "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)  # fmt: skip


def _fsdp_hooks_off(mods: list) -> list:
    """Remove the forward (pre-)hooks FSDP2 registered on ``mods`` (its states' own hooks only);
    returns what :func:`_restore_hooks` needs to put every hook dict back exactly, in order."""
    saved = []
    for m in mods:
        state = m._get_fsdp_state()
        hooks = (*m._forward_pre_hooks.values(), *m._forward_hooks.values())
        if not any(getattr(h, "__self__", None) is state for h in hooks):
            continue  # hooks of another kind (grouped modules): leave them alone
        saved.append((m, {name: dict(getattr(m, name)) for name in _HOOK_DICTS}))
        for d in (m._forward_pre_hooks, m._forward_hooks):
            for key in [k for k, h in d.items() if getattr(h, "__self__", None) is state]:
                del d[key]
                for name in _HOOK_DICTS:
                    getattr(m, name).pop(key, None)
    return saved


def _restore_hooks(saved: list) -> None:
    for m, dicts in saved:
        for name, content in dicts.items():
            d = getattr(m, name)
            d.clear()
            d.update(content)


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One token per row from ``logits`` ``[B, V]``: argmax (``greedy``), else a sample from
    softmax(logits / temperature) restricted to the smallest set of tokens whose probability
    reaches ``top_p`` (nucleus sampling). Uses the global torch RNG. Returns ``[B]`` int64.

    Sampling is by inverse CDF — one uniform per row, located in the rows' cumulative
    probabilities — which draws from exactly the categorical distribution ``torch.multinomial``
    draws from (tested against it), at a fraction of the cost: on the CPU ``multinomial`` makes
    an exponential variate per vocabulary entry (0.87 vs 0.23 ms for 64 x 512:
    ``bench/bench_rollout.py``).
    ``probs``: softmax(logits / temperature) when the caller already has it.
    """
    if greedy:
        return logits.argmax(-1)
    if probs is None:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(-1, descending=True)
        # drop a token when the tokens before it already reach top_p (the first is always kept)
        probs = probs.masked_fill((probs.cumsum(-1) - probs) >= top_p, 0.0)
    return _inverse_cdf(probs) if order is None else order.gather(-1, _inverse_cdf(probs)[:, None])[:, 0]


def _inverse_cdf(probs: torch.Tensor) -> torch.Tensor:
    """``[B]`` indices drawn from the unnormalised non-negative ``probs`` ``[B, V]``: the first
    index whose cumulative sum exceeds u·total, u ~ U[0, 1). u·total is kept strictly below the
    total (a product rounded up to it is moved one ulp down), so the index found always has a
    positive probability: never a zero-probability token, without a pass over the vocabulary."""
    cdf = probs.cumsum(-1, dtype=torch.float64)  # fp64: an fp32 sum over a large vocabulary loses tail mass
    total = cdf[:, -1:]
    u = torch.rand(probs.shape[0], 1, device=probs.device, dtype=cdf.dtype) * total
    u = torch.minimum(u, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, u, right=True)[:, 0].clamp_max_(probs.shape[-1] - 1)


def cache_argument(model: nn.Module) -> str:
    """The name of ``model``'s KV-cache argument: ``cache`` in transformers 5.x
    (``past_key_values`` is deprecated there, removed in 5.40), ``past_key_values`` before."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _num_layers(model: nn.Module) -> int:
    config = model.config
    return getattr(config, "num_hidden_layers", None) or config.get_text_config().num_hidden_layers


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    max_new_tokens: int,
    eos_token_id: int | None,
    pad_token_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    return_logprobs: bool = False,
    check_every: int = 8,
    decoder: str = "auto",
) -> tuple[torch.Tensor, ...]:
    """Batched sampling with a KV cache from left-padded prompts.

    One prefill forward over the prompts (transformers), then one single-token step per token
    reusing the cache: for a LLaMA-family model the written-out step of :mod:`trainer.decode`
    (equal to the model's forward to float rounding, a third less time per rollout than calling
    it: ``bench/bench_rollout.py``), for any other model its own forward. A row stops after it
    emits EOS (EOS is part of the response); later positions hold ``pad_token_id`` and are
    masked. Wrap the call in :func:`unsharded` under FSDP2.

    The attention mask is allocated once for the whole rollout (no per-step concatenation), and
    whether every row has ended is asked of the device every ``check_every`` steps only (a host
    sync stalls a GPU's queue); the all-ended columns generated after the last row's EOS are
    trimmed, so the result equals a check at every step.

    Args:
        model: a causal LM (``transformers``; sharded or not).
        prompt_ids: ``[B, P]`` int64, left-padded. prompt_mask: ``[B, P]`` bool.
        max_new_tokens: most response tokens per row.
        eos_token_id: ends a row (None: rows run to ``max_new_tokens``).
        return_logprobs: also return log π(a_t | s_t) at ``temperature`` (the full softmax, also
            with ``top_p`` < 1) and the entropy of that distribution, from the sampling logits
            themselves: PPO's old log-probs without another forward.
        decoder: ``auto`` (the written-out LLaMA step where it applies) or ``transformers``
            (always the model's own forward; the A/B reference).

    Returns:
        ``(response_ids [B, R], response_mask [B, R])`` with ``R ≤ max_new_tokens``, and with
        ``return_logprobs`` also ``(logp [B, R], entropy [B, R])`` fp32 (0 where masked).
    """
    if decoder not in ("auto", "transformers"):
        raise ValueError(f"generate: decoder must be 'auto' or 'transformers', not {decoder!r}")
    B, P = prompt_ids.shape
    device = prompt_ids.device
    attn = torch.zeros(B, P + max_new_tokens, dtype=torch.long, device=device)
    attn[:, :P] = prompt_mask.long()
    cache = preallocated_cache(_num_layers(model), P + max_new_tokens)
    cache_kw = cache_argument(model)
    out = model(
        input_ids=prompt_ids,
        attention_mask=attn[:, :P],
        position_ids=position_ids(attn[:, :P]),
        use_cache=True,
        logits_to_keep=1,
        **{cache_kw: cache},
    )
    # ours, or the model's own with an older transformers (whose output names it past_key_values)
    cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
    dec = None
    if decoder == "auto" and getattr(getattr(cache, "layers", [None])[0], "capacity", None):
        dec = llama_decoder(model, prompt_mask, P + max_new_tokens)  # None: not a LLaMA
    if dec is not None:
        keys, values = [layer.keys for layer in cache.layers], [layer.values for layer in cache.layers]
    next_pos = attn[:, :P].sum(-1, keepdim=True)  # [B, 1] position of the first response token
    alive = torch.ones(B, dtype=torch.bool, device=device)
    finite = torch.ones((), dtype=torch.bool, device=device)  # all logits so far finite
    tokens, masks, logps, ents = [], [], [], []
    logits = out.logits[:, -1]
    for t in range(max_new_tokens):
        if greedy and not return_logprobs:
            tok = logits.argmax(-1)  # (argmax picks a NaN: the check below sees it)
            chosen = logits.gather(-1, tok[:, None])[:, 0].float()
        else:  # one log-softmax serves the sample, its log-prob and the entropy
            z = logits.float() if temperature == 1.0 else logits.float() / temperature
            logp_all = torch.log_softmax(z, dim=-1)
            p_all = logp_all.exp()
            tok = sample_next(logits, temperature, top_p, greedy, probs=p_all)
            chosen = logp_all.gather(-1, tok[:, None])[:, 0]
        if return_logprobs:
            ent = -(p_all * logp_all).sum(-1)  # NaN when a row has a −inf logit (0 · −inf)
            logps.append(torch.where(alive, chosen, 0.0))
            ents.append(torch.where(alive, ent, 0.0))
            chosen = chosen + ent
        # a NaN or +inf logit makes its row's log-softmax NaN, so the chosen token's log-prob
        # (and the entropy, also −inf) tells whether every logit was finite: [B] values, not [B, V]
        finite = finite & torch.isfinite(chosen).all()
        tok = torch.where(alive, tok, torch.full_like(tok, pad_token_id))
        tokens.append(tok)
        masks.append(alive)
        if eos_token_id is not None:
            alive = alive & (tok != eos_token_id)
        # host sync every check_every steps (early stop when every row has ended); a dry run's
        # fake tensors have no data: every row runs to max_new_tokens, the worst case
        last = t == max_new_tokens - 1
        if (last or (t + 1) % check_every == 0) and not is_fake(alive):
            any_alive, ok = host_list(torch.stack([alive.any(), finite]))  # (one host sync)
            if not ok:
                raise FloatingPointError(f"non-finite logits while sampling (by step {t + 1})")
            if not any_alive:
                break
        if last:
            break
        if dec is not None:
            logits = decode_step(dec, tok, next_pos[:, 0] + t, P + t, keys, values)
            continue
        attn[:, P + t] = masks[-1].long()
        logits = model(
            input_ids=tok[:, None],
            attention_mask=attn[:, : P + t + 1],
            position_ids=next_pos + t,
            use_cache=True,
            **{cache_kw: cache},
        ).logits[:, -1]
    response_mask = torch.stack(masks, dim=1)
    keep = response_mask.shape[1]
    if eos_token_id is not None and not is_fake(response_mask):  # drop the all-ended columns
        cols = torch.arange(keep, device=device)
        keep = int(host_item(torch.where(response_mask.any(0), cols, 0).amax())) + 1  # (one host sync)
    result = (torch.stack(tokens, dim=1)[:, :keep], response_mask[:, :keep])
    if return_logprobs:
        result += (torch.stack(logps, dim=1)[:, :keep], torch.stack(ents, dim=1)[:, :keep])
    return result


def token_pieces(tokenizer: Any, ids: list[int], context: int = 4) -> list[str]:
    """The text each token adds to the decoded string (leading spaces included, which a lone
    ``decode([id])`` drops for SentencePiece and word-level tokenizers): the difference between
    decoding the token with up to ``context`` preceding tokens and without it; a lone decode
    when the two do not share a prefix (a byte-fallback piece inside a character)."""
    out = []
    for i, t in enumerate(ids):
        before = ids[max(0, i - context) : i]
        prev = tokenizer.decode(before) if before else ""
        cur = tokenizer.decode(before + [t])
        out.append(cur[len(prev) :] if cur.startswith(prev) else tokenizer.decode([t]))
    return out


def rollout_samples(ro: Any, tokenizer: Any, n: int, iteration: int, kl: Any) -> list[dict]:
    """The first ``n`` rows of a scored rollout as JSON-ready records (one host copy; called on
    rank 0 at the iterations ``trainer/ppo.py`` saves).

    Args:
        ro: a :class:`trainer.rollout.Rollout` after GAE (``token_scores``, ``rewards``,
            ``advantages``, ``values``, ``sequence_scores`` ``[B, R]`` / ``[B]``).
        kl: ``[B, R]`` the per-token KL estimate the reward used.

    Returns:
        Per row ``{"iteration", "sample", "prompt", "pieces", "ids", "reward" (RM r_t), "kl",
        "total" (the per-token reward PPO optimised), "advantage", "value" (lists over the
        response tokens), "sequence_reward", "truncated"}``.
    """
    out = []
    eos = tokenizer.eos_token_id
    for i in range(min(n, len(ro))):
        m = ro.response_mask[i].cpu()
        ids = ro.response_ids[i].cpu()[m].tolist()
        prompt_ids = ro.prompt_ids[i].cpu()[ro.prompt_mask[i].cpu()].tolist()

        def row(t: Any, m: Any = m, i: int = i) -> list[float]:
            return [round(float(v), 6) for v in t[i].detach().cpu()[m].tolist()]

        out.append(
            {
                "iteration": iteration,
                "sample": i,
                "prompt": tokenizer.decode(prompt_ids, skip_special_tokens=True),
                "pieces": token_pieces(tokenizer, ids),
                "ids": ids,
                "reward": row(ro.token_scores),
                "kl": row(kl),
                "total": row(ro.rewards),
                "advantage": row(ro.advantages),
                "value": row(ro.values),
                "sequence_reward": float(ro.sequence_scores[i]),
                "truncated": not ids or ids[-1] != eos,
            }
        )
    return out
