"""Reward-model evaluation metrics: pure functions on tensors.

* pairwise accuracy (the paper's Table 2 metric) and mean margin of R(chosen) − R(rejected);
* mean per-token reward of changed vs unchanged tokens (``fgkernels.masked_token_sums``);
* AUROC of per-token rewards (rank-based Mann–Whitney U, ties counted one half);
* agreement with a gold order (the synthetic world).

The reward trainer's evaluation (``trainer/reward.py::evaluate``) scores pairs collectively and
then calls only these.
"""

from __future__ import annotations

import torch

import fgkernels as fk

__all__ = ["auroc", "changed_unchanged_sums", "gold_accuracy", "pair_stats", "token_reward_metrics"]


def auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for telling ``labels`` True from False.

    The probability that a random positive scores above a random negative (ties count 1/2),
    computed from average ranks: AUROC = (Σ rank(pos) − n₊(n₊+1)/2) / (n₊ n₋).

    Args:
        scores: ``[N]`` float.
        labels: ``[N]`` bool.

    Returns:
        The AUROC in [0, 1], or NaN when either class is empty.

    Example (worked by hand): scores [0.1, 0.4, 0.35, 0.8], labels [F, F, T, T]: of the four
    (pos, neg) pairs, 0.35 beats 0.1 only and 0.8 beats both: 3/4 = 0.75.
    """
    s = scores.detach().double().reshape(-1)
    y = labels.reshape(-1).bool()
    n_pos, n = int(y.sum()), s.numel()
    n_neg = n - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    uniq, inverse, counts = torch.unique(s, return_inverse=True, return_counts=True)
    # average 1-based rank of each distinct value: (first rank + last rank) / 2
    last = torch.cumsum(counts, 0).double()
    avg_rank = last - (counts.double() - 1) / 2
    rank_sum_pos = avg_rank[inverse][y].sum().item()
    return (rank_sum_pos - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def pair_stats(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> dict[str, float]:
    """Pairwise ``accuracy`` (fraction with R(chosen) > R(rejected)) and ``margin`` (mean
    difference) of ``[N]`` sequence rewards."""
    diff = (r_chosen - r_rejected).double()
    if diff.numel() == 0:
        return {"accuracy": float("nan"), "margin": float("nan")}
    return {"accuracy": (diff > 0).double().mean().item(), "margin": diff.mean().item()}


def changed_unchanged_sums(rewards: torch.Tensor, mask: torch.Tensor, changed: torch.Tensor) -> torch.Tensor:
    """``[4]`` fp32 totals over the batch: (Σ r over changed, n changed, Σ r over unchanged,
    n unchanged) of valid tokens, from ``rewards``/``mask``/``changed`` ``[B, T]``. Summable
    across batches and ranks; the means are ratios of the totals."""
    s = fk.masked_token_sums(rewards.detach().float(), mask, changed & mask)
    return torch.stack(
        [s.sum_changed.sum(), s.count_changed.sum(), s.sum_unchanged.sum(), s.count_unchanged.sum()]
    )


def token_reward_metrics(
    token_sums: torch.Tensor,
    added: tuple[torch.Tensor, torch.Tensor],
    removed: tuple[torch.Tensor, torch.Tensor],
) -> dict[str, float]:
    """Per-token metrics of edited pairs.

    Args:
        token_sums: ``[2, 4]``: :func:`changed_unchanged_sums` of the edited (row 0) and original
            (row 1) sides, summed over batches and ranks.
        added: ``(scores [N], changed [N])`` of the edited sides' response tokens.
        removed: ``(−scores [M], changed [M])`` of the original sides' response tokens.

    Returns:
        ``reward_{changed,unchanged}_{edited,original}`` (mean r; 0 when there is no such token),
        ``auroc_added`` (r tells the edit's added tokens from the kept ones) and
        ``auroc_removed`` (−r tells the removed tokens from the kept ones).
    """
    out = {}
    for side, name in ((0, "edited"), (1, "original")):
        s = token_sums[side].double()
        out[f"reward_changed_{name}"] = (s[0] / s[1].clamp_min(1)).item()
        out[f"reward_unchanged_{name}"] = (s[2] / s[3].clamp_min(1)).item()
    out["auroc_added"] = auroc(*added)
    out["auroc_removed"] = auroc(*removed)
    return out


def gold_accuracy(diff: torch.Tensor, gold_diff: torch.Tensor) -> float:
    """Fraction of pairs whose reward difference ``diff`` ``[N]`` has the sign of the gold
    difference ``gold_diff`` ``[N]``, over pairs the gold order does not tie (NaN when all tie).

    Example (by hand): diff [1, −2, 3], gold [2, 1, 0] -> pairs 1, 2 count, only the first
    agrees: 0.5.
    """
    keep = gold_diff != 0
    if not keep.any():
        return float("nan")
    agree = torch.sign(diff.double()[keep]) == torch.sign(gold_diff.double()[keep])
    return agree.double().mean().item()
