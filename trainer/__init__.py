"""fgrlhf trainer: the RLHF math (``rlhf``, ``rm_metrics``), the models (``models``), rollouts
(``decode``, ``rollout``), the trainers — ``reward``, ``sft``, ``ppo``, each runnable as a script
under torchrun — and the ``fgrlhf`` command (``cli``, ``demo``); data in ``data/``, shared
plumbing in ``infra/``, evaluation in ``eval/``. Imports point down these layers (tests/test_layers.py)."""
