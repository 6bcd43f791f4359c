"""Rollouts for PPO: batched sampling with a KV cache, and the typed rollout batch.

A rollout row is a left-padded prompt followed by a right-padded response::

    prompt_ids    [B, P]   <pad> <pad> <s> p p p          (prompt_mask True on real tokens)
    response_ids  [B, R]   r r r </s> <pad> <pad>          (response_mask True up to EOS, included)

so the RLHF math (``trainer/rlhf.py``, ``fgkernels.gae``) sees right-padded ``[B, R]`` response
tensors, and a model sees ``cat(prompt, response)`` with position ids counted over real tokens
only (``attention_mask.cumsum - 1``), the same positions during generation and scoring.

Under FSDP2, :func:`unsharded` all-gathers the actor once for a whole rollout and reshards it at
the end; without it every decoding step would all-gather every layer again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from trainer.infra.dryrun import is_fake
from trainer.models import position_ids

__all__ = ["Rollout", "generate", "sample_next", "unsharded"]


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
    """
    from torch.distributed.fsdp import FSDPModule

    mods = [m for m in model.modules() if isinstance(m, FSDPModule)]
    saved = []
    for m in mods:
        state = m._get_fsdp_state()
        saved.append(
            (state._auto_reshard_after_forward, [g.post_forward_mesh_info for g in state._fsdp_param_groups])
        )
        m.set_reshard_after_forward(False, recurse=False)
    for m in mods:
        m.unshard()  # one all-gather per parameter group, for the whole rollout
    try:
        yield model
    finally:
        for m, (auto, infos) in zip(mods, saved):
            state = m._get_fsdp_state()
            state._auto_reshard_after_forward = auto
            for g, info in zip(state._fsdp_param_groups, infos):
                g.post_forward_mesh_info = info
            m.reshard()


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, top_p: float = 1.0, greedy: bool = False
) -> torch.Tensor:
    """One token per row from ``logits`` ``[B, V]``: argmax (``greedy``), else a sample from
    softmax(logits / temperature) restricted to the smallest set of tokens whose probability
    reaches ``top_p`` (nucleus sampling). Uses the global torch RNG. Returns ``[B]`` int64."""
    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # drop a token when the tokens before it already reach top_p (the first is always kept)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        choice = torch.multinomial(sorted_p, 1)
        return order.gather(-1, choice)[:, 0]
    return torch.multinomial(probs, 1)[:, 0]


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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched sampling with a KV cache from left-padded prompts.

    One prefill forward over the prompts, then one single-token forward per step reusing the
    cache. A row stops after it emits EOS (EOS is part of the response); later positions hold
    ``pad_token_id`` and are masked. Wrap the call in :func:`unsharded` under FSDP2.

    Args:
        model: a causal LM (``transformers``; sharded or not).
        prompt_ids: ``[B, P]`` int64, left-padded. prompt_mask: ``[B, P]`` bool.
        max_new_tokens: most response tokens per row.
        eos_token_id: ends a row (None: rows run to ``max_new_tokens``).

    Returns:
        ``(response_ids [B, R], response_mask [B, R])`` with ``R ≤ max_new_tokens``.
    """
    B = prompt_ids.shape[0]
    device = prompt_ids.device
    attn = prompt_mask.long()
    out = model(
        input_ids=prompt_ids,
        attention_mask=attn,
        position_ids=position_ids(attn),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = out.past_key_values
    next_pos = attn.sum(-1, keepdim=True)  # [B, 1] position of the first response token
    alive = torch.ones(B, dtype=torch.bool, device=device)
    tokens, masks = [], []
    for t in range(max_new_tokens):
        tok = sample_next(out.logits[:, -1], temperature, top_p, greedy)
        tok = torch.where(alive, tok, torch.full_like(tok, pad_token_id))
        tokens.append(tok)
        masks.append(alive)
        if eos_token_id is not None:
            alive = alive & (tok != eos_token_id)
        # host sync once per token (early stop when every row has ended); a decoding loop
        # cannot avoid it without running to max_new_tokens (a dry run's fake tensors have no
        # data: every row runs to max_new_tokens, the worst case)
        if t == max_new_tokens - 1 or (not is_fake(alive) and not bool(alive.any())):
            break
        attn = torch.cat([attn, masks[-1].long()[:, None]], dim=1)
        out = model(
            input_ids=tok[:, None],
            attention_mask=attn,
            position_ids=next_pos + t,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
    return torch.stack(tokens, dim=1), torch.stack(masks, dim=1)
