"""Evaluation: a policy's answers (``generate``), pairwise judging by Claude, a reward model or the
synthetic world's gold (``judges``, ``pairwise``), win rates (``winrate``: the AlpacaEval
leaderboard's arithmetic), reward-model accuracy on held-out pairs (``rm_accuracy``), and the
end-of-run plots and token-reward HTML pages (``plot``, ``report``)."""
