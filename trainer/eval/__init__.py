"""Evaluation: win rates from pairwise annotations (``winrate``; the AlpacaEval leaderboard's
arithmetic). Generation for evaluation, judges, reports and plots come next (open issues)."""
