"""Evaluation: win rates from pairwise annotations (``winrate``: the AlpacaEval leaderboard's
arithmetic) and reward-model accuracy on held-out pairs (``rm_accuracy``). Generation for
evaluation, judges, reports and plots come next (open issues)."""
