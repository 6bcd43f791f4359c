"""Reward-model evaluation metrics: pure functions on tensors.

* pairwise accuracy (the paper's Table 2 metric) and mean margin of R(preferred) − R(other);
* mean per-token reward of changed vs unchanged tokens (``fgkernels.masked_token_sums``);
* AUROC of per-token rewards (rank-based Mann–Whitney U, ties counted one half).
"""

from __future__ import annotations

import torch

import fgkernels as fk

__all__ = ["auroc", "changed_unchanged_sums", "pair_stats"]


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


def pair_stats(r_preferred: torch.Tensor, r_other: torch.Tensor) -> dict[str, float]:
    """Pairwise ``accuracy`` (fraction with R(preferred) > R(other)) and ``margin`` (mean
    difference) of ``[N]`` sequence rewards."""
    diff = (r_preferred - r_other).double()
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
