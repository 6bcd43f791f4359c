"""The tiny sizes the trainer tests share, and one tiny PPO run shared by test_summary,
test_plot and test_report.

The lists are ``key=value`` overrides of the trainers' configs (the models' shapes, data sizes,
batches): every test that trains starts from one of them. :func:`tiny_ppo_run` is a one-process
``trainer/ppo.py`` with a token RM trained on the fly (so both trainers' end-of-run outputs exist:
``rm/`` and the PPO run), run once per pytest session (a completion marker under the session's
base temp directory; each module's fixture reuses it), a few seconds on one core."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from _utils import clean_env

ROOT = Path(__file__).resolve().parent.parent
# SFT / FIGA (test_sft) and the supervised trainers' tracker runs (test_trackers)
TINY_SUPERVISED = [
    "progress=false", "synthetic.n_pairs=300", "micro_batch_size=8", "hidden_size=32", "intermediate_size=64",
]  # fmt: skip
# the reward trainer (test_reward): twice the pairs, so that held-out accuracy means something
TINY_REWARD = ["synthetic.n_pairs=600", "micro_batch_size=8", "progress=false", "hidden_size=32",
               "intermediate_size=64"]  # fmt: skip
# PPO (test_ppo): a random-init actor (the SFT start and held-out evaluation have their own tests)
TINY_PPO = [
    "progress=false", "sft_epochs=0", "eval_every=0", "missing_eos_penalty=0", "max_new_tokens=16",
    "synthetic.n_pairs=300", "rm_epochs=1", "rollout_batch_size=16", "micro_batch_size=4",
]  # fmt: skip
# PPO at the smallest width, rollout tables every iteration (test_trackers)
TINY_PPO_SMALL = [
    "progress=false", "sft_epochs=0", "eval_every=0", "missing_eos_penalty=0", "max_new_tokens=8",
    "synthetic.n_pairs=300", "rm_epochs=1", "rollout_batch_size=8", "micro_batch_size=4",
    "hidden_size=32", "intermediate_size=64", "save_rollouts_every=1", "rollout_samples=2",
]  # fmt: skip
# the shared run of tiny_ppo_run
SHARED_RUN = [
    "iterations=2", "save_rollouts_every=1", "rollout_samples=2", "progress=false",
    "synthetic.n_pairs=300", "rm_epochs=1", "rollout_batch_size=8", "micro_batch_size=4",
    "hidden_size=32", "intermediate_size=64", "sft_epochs=0", "eval_every=1", "eval_size=8",
    "missing_eos_penalty=0", "max_new_tokens=16",
]  # fmt: skip


def tiny_ppo_run(base: Path) -> tuple[Path, str]:
    """``(output_dir, stdout + stderr)`` of the tiny run under ``base`` (run on first use)."""
    out, log, done = base / "tiny_ppo", base / "tiny_ppo.log", base / "tiny_ppo.done"
    if not done.exists():
        env = {**clean_env(), "OMP_NUM_THREADS": "1"}
        p = subprocess.run(
            [sys.executable, "trainer/ppo.py", *SHARED_RUN, f"output_dir={out}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        log.write_text(p.stdout + p.stderr)
        assert p.returncode == 0, f"tiny PPO run failed ({p.returncode}):\n{(p.stdout + p.stderr)[-4000:]}"
        done.touch()
    return out, log.read_text()
