"""``dry_run=true``: the trainers' real code path on fake tensors over a fake 8-rank process
group — every phase completes at the configured shapes, its peak memory is measured, and a config
that cannot run is refused naming the phase. The full 32-layer 7B runs are in bench/ (minutes);
CI runs the 7B configs with 2 decoder layers of the real widths (``dry_run_layers=2``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _utils import clean_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3
PPO_PHASES = {"generate", "score", "rewards", "train", "checkpoint"}
RM_PHASES = {"train", "checkpoint", "eval"}
SFT_PHASES = RM_PHASES

# runs one dry run in a process of its own (it starts a fake process group) and prints its result
RUNNER = """
import json, sys
from trainer.infra.config import load_config
trainer = sys.argv[1]
if trainer == "ppo":
    from trainer.ppo import PPOConfig as C, train
elif trainer == "sft":
    from trainer.sft import SFTConfig as C, train
else:
    from trainer.reward import RewardConfig as C, train
out = train(load_config(C, sys.argv[2:]))
print("RESULT " + json.dumps(out))
"""


def dry_run(trainer: str, *args: str, ok: bool = True) -> tuple[dict | None, subprocess.CompletedProcess]:
    p = subprocess.run(
        [sys.executable, "-c", RUNNER, trainer, "dry_run=true", *args],
        cwd=ROOT, env={**clean_env(), "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if not ok:
        return None, p
    assert p.returncode == 0, p.stderr[-4000:]
    line = next(x for x in p.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :]), p


def only_the_plan(out_dir: Path, peaks: dict) -> bool:
    """A dry run writes nothing where the config points but its measured memory plan."""
    plan = json.loads((out_dir / "memory_plan.json").read_text())
    return sorted(os.listdir(out_dir)) == ["memory_plan.json"] and plan["peaks"] == peaks


@pytest.mark.slow
def test_tiny_ppo_and_reward_dry_runs(tmp_path):
    """The tiny defaults: every phase runs and is measured; nothing is written where the config
    points (a dry run works in a temporary directory) but the measured memory plan."""
    out, p = dry_run("ppo", f"output_dir={tmp_path / 'ppo'}")
    assert set(out["peaks"]) == PPO_PHASES and all(v > 0 for v in out["peaks"].values())
    assert out["parts"]["train"]["Gradient"] > 0 and out["parts"]["generate"]["Gradient"] == 0
    assert out["parts"]["generate"]["Optstate"] > 0  # states exist from the first step on
    assert "peak memory of one rank per phase" in p.stdout + p.stderr
    assert only_the_plan(tmp_path / "ppo", out["peaks"])
    out, _ = dry_run("reward", f"output_dir={tmp_path / 'rm'}")
    assert set(out["peaks"]) == RM_PHASES and only_the_plan(tmp_path / "rm", out["peaks"])
    for objective in ("sft", "figa"):
        out, _ = dry_run("sft", f"objective={objective}", f"output_dir={tmp_path / objective}")
        assert set(out["peaks"]) == SFT_PHASES and only_the_plan(tmp_path / objective, out["peaks"])
        assert out["parts"]["train"]["Gradient"] > 0 and out["parts"]["checkpoint"]["Optstate"] > 0


@pytest.mark.slow
def test_the_real_run_checks_memory_against_the_dry_runs_measurement(tmp_path):
    """memory_limit_gb in a real run uses the dry run's measured peak of exactly this run
    (output_dir/memory_plan.json): a limit under the measured peak but over nothing else is
    refused naming the measured phase, one just over it runs even where the estimate would
    refuse; a plan measured for another config, world size or reduced model is not used (the
    differing keys are named) and the estimate decides."""
    out = tmp_path / "run"
    common = ["reward_source=gold", f"output_dir={out}", "progress=false", "rollout_batch_size=8",
              "micro_batch_size=4"]  # fmt: skip
    res, _ = dry_run("ppo", "dry_run_world_size=1", *common)
    measured = max(res["peaks"].values())
    phase = max(res["peaks"], key=res["peaks"].get)

    def real(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "trainer/ppo.py", *common, "iterations=1", "plots=false", "report=false"]
        env = {**clean_env(), "OMP_NUM_THREADS": "2"}
        return subprocess.run([*cmd, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)

    under = real(f"memory_limit_gb={0.95 * measured / GIB}")
    assert under.returncode == 2, under.stderr[-2000:]
    assert f"measured by its dry run, phase '{phase}'" in under.stderr
    other = real("micro_batch_size=2", "memory_limit_gb=0.000001")  # refused by the estimate
    assert other.returncode == 2 and "(estimated: " in other.stderr
    assert "was measured for another run (differs in: micro_batch_size)" in other.stdout + other.stderr
    estimate = json.loads((out / "memory_plan.json").read_text())["estimates"]
    limit = 1.03 * measured
    assert max(estimate.values()) > limit  # the estimate alone would refuse this limit
    ok = real(f"memory_limit_gb={limit / GIB}")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "memory plan: measured by the dry run" in ok.stdout + ok.stderr
    reduced, _ = dry_run("ppo", "dry_run_world_size=1", "dry_run_layers=1", *common[:2],
                         f"output_dir={tmp_path / 'reduced'}")  # fmt: skip
    assert not (tmp_path / "reduced").exists()  # a smaller model's figures are no plan


@pytest.mark.slow
def test_7b_configs_reduced_layers_fit_and_shard_as_computed():
    """The 7B configs as shipped (no checkpoints, no data: their ??? paths stay unset), at the
    real widths and lengths with 2 decoder layers, on 8 fake ranks: every phase completes, the
    optimizer state per rank is AdamW's 8 bytes × parameters / 8 as computed by hand, and the
    peaks are far under the limit."""
    from transformers import LlamaConfig

    from trainer.models import llama_param_count

    two = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
                      vocab_size=32000)  # fmt: skip
    rm, p = dry_run(
        "reward", "--config", "configs/llama7b_8xa100/reward.yaml", "arch=llama-7b", "dry_run_layers=2"
    )
    assert set(rm["peaks"]) == RM_PHASES
    n = llama_param_count(two, lm_head=False)  # the reward model: backbone + a 1-wide head
    assert rm["parts"]["checkpoint"]["Optstate"] == pytest.approx(8 * n / 8, rel=0.01)
    assert max(rm["peaks"].values()) < 20 * GIB
    assert "1 pairs x 2 x 512 tokens, accumulation 2" in p.stdout + p.stderr
    # SFT/FIGA: the causal LM (backbone + LM head) at the same widths, FIGA pairs of 2 x 1024 tokens
    sft, p = dry_run(
        "sft", "--config", "configs/llama7b_8xa100/sft.yaml", "arch=llama-7b", "dry_run_layers=2"
    )
    assert set(sft["peaks"]) == SFT_PHASES
    assert sft["parts"]["checkpoint"]["Optstate"] == pytest.approx(8 * llama_param_count(two) / 8, rel=0.01)
    assert max(sft["peaks"].values()) < 20 * GIB
    assert "micro-batch 8 x 1024 tokens (figa), accumulation 4" in p.stdout + p.stderr
    for phase, est in sft["estimates"].items():  # the estimate's terms agree with the tracker
        assert 0.8 <= est / sft["peaks"][phase] <= 1.2, phase
    # (one PPO epoch: the second repeats the same minibatches at the same shapes; ~2 min on 2 cores)
    ppo, p = dry_run(
        "ppo", "--config", "configs/llama7b_8xa100/ppo.yaml", "arch=llama-7b", "dry_run_layers=2",
        "ppo_epochs=1",
    )  # fmt: skip
    assert set(ppo["peaks"]) == PPO_PHASES
    trainable = llama_param_count(two) + llama_param_count(two, lm_head=False)  # actor + critic
    assert ppo["parts"]["train"]["Optstate"] == pytest.approx(8 * trainable / 8, rel=0.01)
    assert max(ppo["peaks"].values()) < 30 * GIB
    assert "rollout 64 x (192 + 300) tokens per rank" in p.stdout + p.stderr


@pytest.mark.slow
def test_a_config_that_cannot_run_is_refused_naming_the_phase():
    """Over the memory limit: the first phase that does not fit is named, exit status 2 through
    the entry point; a batch that does not split is refused before anything is built."""
    _, p = dry_run("reward", "--config", "configs/llama7b_8xa100/reward.yaml", "arch=llama-7b",
                   "dry_run_layers=2", "memory_limit_gb=1", ok=False)  # fmt: skip
    assert p.returncode != 0 and "dry run, phase 'train': peak" in p.stderr
    assert "exceeds memory_limit_gb=1" in p.stderr
    cli = subprocess.run(
        [sys.executable, "trainer/reward.py", "--config", "configs/llama7b_8xa100/reward.yaml",
         "dry_run=true", "arch=llama-7b", "dry_run_layers=2", "memory_limit_gb=1"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cli.returncode == 2 and "dry run, phase 'train'" in cli.stderr and "Traceback" not in cli.stderr
    bad = subprocess.run(
        [sys.executable, "trainer/ppo.py", "--config", "configs/llama7b_8xa100/ppo.yaml", "dry_run=true",
         "arch=llama-7b", "dry_run_layers=2", "micro_batch_size=5"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2 and "micro_batch_size=5" in bad.stderr
    # without dry_run the 7B config still requires its paths
    real = subprocess.run(
        [sys.executable, "trainer/ppo.py", "--config", "configs/llama7b_8xa100/ppo.yaml"],
        cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert real.returncode == 2 and "is required" in real.stderr


# --- the measured memory plan, read back (no dry run: a plan written by save_plan, then edited) ---
PLAN_PEAKS = {"train": 1.5 * GIB, "checkpoint": 0.5 * GIB, "eval": 0.75 * GIB}
SHAPE = {"hidden_size": 64, "num_hidden_layers": 2}


def _planned(tmp_path: Path):
    """An SFT config whose output_dir holds the plan of a dry run that measured PLAN_PEAKS, the
    estimates of the real run (10% over), and the plan's path."""
    from trainer.infra.dryrun import save_plan
    from trainer.sft import SFTConfig

    cfg = SFTConfig(output_dir=str(tmp_path / "run"))
    estimates = {k: 1.1 * v for k, v in PLAN_PEAKS.items()}
    path = save_plan(cfg, "sft", {"peaks": PLAN_PEAKS, "estimates": estimates, "model": SHAPE})
    return cfg, estimates, path


def _edit_plan(path: Path, **peaks) -> None:
    record = json.loads(path.read_text())
    record["peaks"].update(peaks)
    path.write_text(json.dumps(record))  # NaN and Infinity as Python's json writes them


def test_a_plan_for_this_run_is_used(tmp_path):
    from trainer.infra.dryrun import measured_peaks

    cfg, estimates, path = _planned(tmp_path)
    peaks, note = measured_peaks(cfg, "sft", cfg.dry_run_world_size, SHAPE, estimates)
    assert peaks == PLAN_PEAKS and "measured by the dry run of" in note


@pytest.mark.parametrize(
    "bad", [float("nan"), float("inf"), -1e12, 0, 1.0, 1e15, 10**400, "1e9", None, True], ids=repr
)
def test_a_plan_with_impossible_peaks_is_refused_naming_file_phase_and_value(tmp_path, bad):
    """A hand-edited plan (peaks not finite, not positive, not a number, or far from this run's
    estimate) is refused, not used: the message names the file, the phase and the value, and says
    what to do; no "nan GiB" anywhere."""
    from trainer.infra.config import ConfigError
    from trainer.infra.dryrun import measured_peaks

    cfg, estimates, path = _planned(tmp_path)
    _edit_plan(path, train=bad)
    with pytest.raises(ConfigError) as e:
        measured_peaks(cfg, "sft", cfg.dry_run_world_size, SHAPE, estimates)
    msg = str(e.value)
    assert str(path) in msg and "phase 'train'" in msg and "rerun the dry run" in msg and "delete" in msg
    assert "nan GiB" not in msg and "inf GiB" not in msg
    if type(bad) is float and bad in (1.0, 1e15):  # numbers, but far from any measurement of this run
        assert "x this run's estimate of 1.65 GiB" in msg
    else:
        assert f"has peak {bad!r}, not a positive finite number of bytes" in msg


def test_the_memory_check_refuses_an_edited_plan_and_never_prints_nan(tmp_path):
    """check_run_memory (SFT, reward) and check_fits (PPO passes its largest estimate) refuse a
    plan whose peaks were edited; an intact plan is printed in bytes that are numbers."""
    import torch

    from trainer.infra.config import ConfigError
    from trainer.infra.dryrun import check_fits, check_run_memory

    cfg, estimates, path = _planned(tmp_path)
    said: list[str] = []
    di = SimpleNamespace(world_size=cfg.dry_run_world_size, device=torch.device("cpu"))
    run = SimpleNamespace(cfg=cfg, di=di, say=said.append)
    check_run_memory(run, "sft", estimates, SHAPE)
    assert any(s.startswith("memory measured per device: train 1.50 GiB") for s in said), said
    _edit_plan(path, train=float("nan"), eval=float("nan"))
    with pytest.raises(ConfigError, match="phase 'train' has peak nan"):
        check_run_memory(run, "sft", estimates, SHAPE)
    assert not any("nan" in s for s in said)
    # PPO reads the plan itself (measured_peaks) and hands check_fits the estimate's largest phase
    with pytest.raises(
        ConfigError, match=r"phase 'eval' has peak .*\(2000 bytes\), 1.13e-06x this run's estimate"
    ):
        check_fits(cfg, torch.device("cpu"), max(estimates.values()), "", {"train": 1.0, "eval": 2e3})


def test_a_plan_measured_by_another_fgrlhf_version_is_not_used(tmp_path):
    from trainer.infra.dryrun import fgrlhf_version, measured_peaks

    cfg, estimates, path = _planned(tmp_path)
    record = json.loads(path.read_text())
    assert record["key"]["fgrlhf"] == fgrlhf_version()
    record["key"]["fgrlhf"] = "0.0.1"
    path.write_text(json.dumps(record))
    peaks, note = measured_peaks(cfg, "sft", cfg.dry_run_world_size, SHAPE, estimates)
    assert peaks is None and f"measured by fgrlhf 0.0.1, this is {fgrlhf_version()}; not used" in note
    del record["key"]["fgrlhf"]  # a plan of a version that did not record its own
    path.write_text(json.dumps(record))
    peaks, note = measured_peaks(cfg, "sft", cfg.dry_run_world_size, SHAPE, estimates)
    assert peaks is None and "measured by fgrlhf (an earlier version)" in note
