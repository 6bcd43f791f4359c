"""The RLHF math of PPO with token-level rewards, as small pure functions.

The reward vectors are those of Xu et al. 2024, §2.2: [R_1 … R_n] from a token-level reward model
(fine-grained token-level PPO) vs PPO-RLHF's [−KL_1, …, R − KL_n].

Every function takes [B, T] tensors over *response* tokens with a boolean ``mask`` of the
valid ones (right-padded) and never reads masked positions. Losses are *sums* divided by
a caller-given ``num_tokens`` — the global count of valid tokens over every micro-batch and
rank of the optimiser step — never a mean of per-batch means, which would silently re-weight
token-level rewards (long responses would count less).

Notation: ``logp`` = log π(a_t | s_t) under the current policy, ``old_logp`` under the
policy that sampled (behaviour), ``ref_logp`` under the frozen SFT reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

KLEstimator = Literal["k1", "k3"]
RewardLevel = Literal["sequence", "token"]


# --------------------------------------------------------------------------------------
# Masked reductions
# --------------------------------------------------------------------------------------
def masked_sum(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ x over valid positions (masked entries are selected away, so inf/NaN there is
    harmless). x, mask: [B, T] -> fp32 scalar."""
    return torch.where(mask, x.float(), 0.0).sum()


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over valid positions of this batch (0 when none). x, mask: [B, T] -> scalar."""
    return masked_sum(x, mask) / mask.sum().clamp(min=1)


# --------------------------------------------------------------------------------------
# KL penalty and rewards
# --------------------------------------------------------------------------------------
def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(π || π_ref) from samples of π, [B, T] fp32.

    k1 = log π − log π_ref (unbiased, can be negative per token);
    k3 = (r − 1) − log r with r = π_ref / π (unbiased, always ≥ 0, lower variance;
    Schulman, "Approximating KL divergence", 2020).
    """
    log_ratio = logp.float() - ref_logp.float()
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"estimator={estimator!r} is not 'k1' or 'k3'")


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last True of each row of ``mask`` [B, T] (any padding: right-padded response
    masks and full-sequence masks alike), [B] int64; −1 for an empty row.

    Example (by hand): [[T, T, F], [F, T, T], [F, F, F]] -> [1, 2, -1].
    """
    pos = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), pos, -1).amax(-1)


def scale_token_rewards(
    token_reward: torch.Tensor, mask: torch.Tensor, scale: str, eos: torch.Tensor | None = None
) -> torch.Tensor:
    """The token-level reward PPO optimises, from the RM's per-token rewards r_t [B, T].

    * ``raw`` — the paper's [R_1 … R_n]: the return Σ_t r_t = T·R(τ) grows with the response
      length T, and because the Bradley–Terry loss cannot see a constant added to every token's
      reward, whether longer responses pay is set by that arbitrary level, not by the data;
    * ``mean`` — r̃_t = r_t / T (T = the row's valid tokens), so Σ_t r̃_t = R(τ) = (1/T) Σ_t r_t,
      the sequence reward the RM was trained on (eq. 1): a level shift c adds the same c to every
      response whatever its length, and the per-token credit (which tokens the RM blames) stays;
    * ``running_mean`` — the same R(τ), but over the *content* tokens (EOS excluded) and paid out
      *causally*: r̃_t = m_t − m_{t−1}, with m_t = the mean of the content scores up to t (m_0 = 0;
      EOS and padding leave m unchanged, so they get 0). The sum is still R(τ) = m_T, but the
      return-to-go from t, Σ_{k≥t} r̃_k = m_T − m_{t−1}, is exactly what the remaining actions
      change. With ``mean`` (r_t / T) the earlier tokens' rewards depend on T, i.e. on the later
      decision to stop, which GAE's reward-to-go cannot see: stopping looks like "0 from here",
      continuing like "+r/T per further token", so whenever scores are positive the policy is
      pushed to the cap (measured, ``bench/token_reward_scale.py``). Here continuing pays only if
      it raises the mean, and since m_{t−1} is a function of the prefix, the policy gradient
      equals that of the content mean with a state baseline (unbiased). The sum m_T is the RM's
      R(τ) without its EOS term. EOS's own score is left out because it is not learned from the
      content of the edits: under eq. 4 (``variant=changed``) EOS is unchanged in every pair and
      gets no gradient; under eq. 3 (``exact``) it enters both sides' means, weighted 1/T_i and
      1/T_j, so it learns only from the pair's length difference — paid out, that one score would
      decide when responses stop. Except in a response that is EOS alone, whose reward is its EOS
      score (a fixed 0 would beat every negative level).

    Example (by hand): r = [[2, 4, 0]], mask [[T, T, F]]: raw [[2, 4, 0]], mean [[1, 2, 0]];
    r = [[2, 4, 1, 0]], eos [[F, F, T, F]], mask [[T, T, T, F]]: m = 2, 3, 3 -> running_mean
    [[2, 1, 0, 0]] (Σ = 3 = the mean of the content scores 2 and 4).
    """
    r = torch.where(mask, token_reward.float(), 0.0)
    if scale == "raw":
        return r
    if scale == "mean":
        return r / mask.sum(-1, keepdim=True).clamp_min(1).to(r.dtype)
    if scale == "running_mean":
        if eos is None:
            raise ValueError("scale='running_mean' needs the eos positions")
        content = mask & ~eos
        # a response that is EOS alone has no content: its EOS score stands for it, so an empty
        # answer moves with the RM's level like any other (0 would beat every negative level)
        content = torch.where(content.any(-1, keepdim=True), content, mask)
        n = content.to(r.dtype).cumsum(-1)
        m = torch.where(n > 0, torch.where(content, r, 0.0).cumsum(-1) / n.clamp_min(1), 0.0)
        return torch.where(mask, m - torch.nn.functional.pad(m[:, :-1], (1, 0)), 0.0)
    raise ValueError(f"scale={scale!r} is not 'raw', 'mean' or 'running_mean'")


def eos_positions(response_ids: torch.Tensor, mask: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """[B, T] bool: the valid positions holding EOS (all False when there is no EOS token)."""
    if eos_token_id is None:
        return torch.zeros_like(mask, dtype=torch.bool)
    return mask & (response_ids == eos_token_id)


def missing_eos(response_ids: torch.Tensor, mask: torch.Tensor, eos_token_id: int | None) -> torch.Tensor:
    """[B] bool: the response did not end with EOS (cut at ``max_new_tokens``); all False when
    there is no EOS token."""
    if eos_token_id is None:
        return torch.zeros(mask.shape[0], dtype=torch.bool, device=mask.device)
    last = last_token_index(mask)
    tok = response_ids.gather(-1, last.clamp_min(0)[:, None])[:, 0]
    return (last < 0) | (tok != eos_token_id)


def add_on_last_token(rewards: torch.Tensor, mask: torch.Tensor, bonus: torch.Tensor) -> torch.Tensor:
    """``rewards`` [B, T] with ``bonus`` [B] added at each row's last valid token (empty rows
    unchanged): how a sequence-level term (R, a missing-EOS penalty) enters a per-token vector."""
    last = last_token_index(mask)  # -1 for an empty row: matches no position
    at_last = torch.arange(mask.shape[-1], device=mask.device)[None, :] == last[:, None]
    # no boolean indexing: no host sync, static shapes (CUDA graphs, a dry run's fake tensors)
    return rewards + at_last.to(rewards.dtype) * bonus.to(rewards.dtype)[:, None]


def prompt_order(iteration: int, rows: int, n_prompts: int, seed: int) -> torch.Tensor:
    """The ``rows`` prompt indices of ``iteration`` [rows] int64: consecutive slices of a stream of
    per-epoch permutations of ``range(n_prompts)`` (each a pure function of ``seed`` and the epoch),
    so every prompt is used once per epoch and a resumed run draws exactly what it would have.

    Example: n_prompts 4, rows 3: iteration 0 takes epoch 0's first three, iteration 1 its last one
    and epoch 1's first two.
    """
    start, stop = iteration * rows, (iteration + 1) * rows
    parts = []
    for epoch in range(start // n_prompts, (stop - 1) // n_prompts + 1):
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        lo, hi = max(start - epoch * n_prompts, 0), min(stop - epoch * n_prompts, n_prompts)
        parts.append(perm[lo:hi])
    return torch.cat(parts)


def compute_rewards(
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    level: RewardLevel,
    sequence_reward: torch.Tensor | None = None,
    token_reward: torch.Tensor | None = None,
) -> torch.Tensor:
    """The per-token reward vector PPO optimises, [B, T] fp32 (0 at masked positions), by ``level``:

    * ``sequence`` (PPO-RLHF): r = [−β·KL_1, …, −β·KL_{n−1}, R − β·KL_n] with R =
      ``sequence_reward`` [B] placed on each row's last valid token.
    * ``token`` (fine-grained token-level PPO): r_t = R_t − β·KL_t with R_t =
      ``token_reward`` [B, T] from the token-level reward model (β may be 0).

    Args:
        kl: per-token KL estimate [B, T] (see :func:`kl_penalty`).
        mask: valid response tokens [B, T] bool, right-padded.
        kl_coef: β ≥ 0.
    """
    if kl_coef < 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
    rewards = torch.where(mask, -kl_coef * kl.float(), 0.0)
    if level == "sequence":
        if sequence_reward is None:
            raise ValueError("level='sequence' needs sequence_reward [B]")
        return add_on_last_token(rewards, mask, sequence_reward.float())
    if level == "token":
        if token_reward is None:
            raise ValueError("level='token' needs token_reward [B, T]")
        return rewards + torch.where(mask, token_reward.float(), 0.0)
    raise ValueError(f"level={level!r} is not 'sequence' or 'token'")


# --------------------------------------------------------------------------------------
# KL controllers (Ziegler et al. 2019)
# --------------------------------------------------------------------------------------
@dataclass
class FixedKLController:
    """β stays at ``value``."""

    value: float

    def update(self, current_kl: float, n_steps: int) -> None:  # noqa: ARG002 - same API
        return None


@dataclass
class AdaptiveKLController:
    """β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·min(n_steps/horizon, 1)) (Ziegler et al.
    2019): raises β when the policy drifts past ``target`` nats per sequence, lowers it below.
    The step fraction is capped at 1, so one update moves β by at most ±20% and β stays
    positive even when a batch holds more samples than ``horizon``."""

    value: float
    target: float
    horizon: int

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * min(n_steps / self.horizon, 1.0)


# --------------------------------------------------------------------------------------
# Reward normalisation
# --------------------------------------------------------------------------------------
@dataclass
class RunningMoments:
    """Running mean/std of scalar rewards (Chan et al. parallel update), for optional reward
    normalisation: r ← (r − mean) / std. Feed it globally reduced batch statistics."""

    mean: float = 0.0
    var: float = 1.0
    count: float = 1e-8

    def update(self, batch_mean: float, batch_var: float, batch_count: float) -> None:
        delta = batch_mean - self.mean
        total = self.count + batch_count
        m2 = (
            self.var * self.count + batch_var * batch_count + delta * delta * self.count * batch_count / total
        )
        self.mean += delta * batch_count / total
        self.var = m2 / total
        self.count = total

    @property
    def std(self) -> float:
        return math.sqrt(max(self.var, 1e-12))


# --------------------------------------------------------------------------------------
# PPO losses
# --------------------------------------------------------------------------------------
class PolicyLossStats(NamedTuple):
    """Detached diagnostics, summed over valid tokens (divide by ``num_tokens`` to log)."""

    approx_kl_sum: torch.Tensor  # Σ k3(old → new): (ρ − 1) − log ρ
    clipfrac_sum: torch.Tensor  # Σ 1[|ρ − 1| > ε]


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    num_tokens: float | torch.Tensor,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """Clipped surrogate: Σ_t −min(ρ_t A_t, clip(ρ_t, 1−ε, 1+ε) A_t) / num_tokens,
    ρ_t = exp(log π − log π_old). Inputs [B, T]; returns (scalar loss, stats)."""
    log_ratio = torch.where(mask, logp.float() - old_logp.float(), 0.0)
    ratio = torch.exp(log_ratio)
    adv = advantages.float()
    surrogate = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps))
    loss = masked_sum(surrogate, mask) / num_tokens
    with torch.no_grad():
        stats = PolicyLossStats(
            approx_kl_sum=masked_sum(torch.expm1(log_ratio) - log_ratio, mask),
            clipfrac_sum=masked_sum(((ratio - 1.0).abs() > clip_eps).float(), mask),
        )
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    num_tokens: float | torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss Σ_t ½·max((V − G)², (V_clip − G)²) / num_tokens with
    V_clip = V_old + clip(V − V_old, −ε, ε). Returns (loss, Σ 1[clipped term larger])."""
    v = values.float()
    v_clip = old_values.float() + (v - old_values.float()).clamp(-clip_eps, clip_eps)
    g = returns.float()
    unclipped, clipped = (v - g) ** 2, (v_clip - g) ** 2
    loss = 0.5 * masked_sum(torch.maximum(unclipped, clipped), mask) / num_tokens
    with torch.no_grad():
        clipfrac_sum = masked_sum((clipped > unclipped).float(), mask)
    return loss, clipfrac_sum


def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float, num_tokens) -> torch.Tensor:
    """−coef·Σ_t H_t / num_tokens, added to the policy loss to keep exploration."""
    return -coef * masked_sum(entropy, mask) / num_tokens


def explained_variance_sums(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The [5] fp64 sums that :func:`explained_variance_from_sums` needs: (n, Σ G, Σ G², Σ (G − V),
    Σ (G − V)²) over valid tokens. Summable over micro-batches and ranks (one all-reduce)."""
    m = mask.double()
    g, r = returns.double() * m, (returns.double() - values.double()) * m
    return torch.stack([m.sum(), g.sum(), (g * g).sum(), r.sum(), (r * r).sum()])


def explained_variance_from_sums(sums) -> float:
    """1 − Var[G − V] / Var[G] from :func:`explained_variance_sums` (any sequence of 5 numbers);
    NaN when the returns have no variance or there are no tokens."""
    n, sg, sg2, sr, sr2 = (float(x) for x in sums)
    if n <= 0:
        return float("nan")
    var_g = sg2 / n - (sg / n) ** 2
    var_r = sr2 / n - (sr / n) ** 2
    return 1.0 - var_r / var_g if var_g > 0 else float("nan")


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 − Var[G − V] / Var[G] over valid tokens (1 = perfect critic, ≤ 0 = useless);
    NaN when the returns have no variance."""
    return explained_variance_from_sums(explained_variance_sums(values, returns, mask))
