"""trainer.infra.checkpoint: exact RNG round trip through weights_only files, and checkpoints that
survive damage (a truncated shard, a missing .metadata, a missing per-rank extra file): the newest
intact one is loaded with a one-line notice, and a clear error names the directory when none is
(end to end, for every trainer: test_run_safety); a run moved with its inputs resumes."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from _utils import clean_env, launch

from trainer.infra.checkpoint import Checkpointer, CheckpointError, get_rng_state, set_rng_state

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world():
    """A process group of one (DCP and the collectives need one)."""
    from trainer.infra.dist import init_distributed

    return init_distributed("cpu")


def _parts(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(4, 7)).sum().backward()
    opt.step()
    return {"model": (model, opt)}


def _weights(parts) -> list[torch.Tensor]:
    return [p.detach().clone() for p in parts["model"][0].parameters()]


def _save_three(root: Path, notices: list[str]) -> tuple[Checkpointer, list[list[torch.Tensor]]]:
    ck = Checkpointer(root, keep=3, say=notices.append)
    saved = []
    for step in (1, 2, 3):
        parts = _parts(step)
        ck.save(step, parts, {"step": step, "best": 0.5 * step, "sched": {"last_epoch": step, "lrs": [0.1]}})
        saved.append(_weights(parts))
    return ck, saved


def test_rng_state_round_trips_through_weights_only(tmp_path):
    torch.manual_seed(3)
    random.seed(4)
    np.random.seed(5)  # noqa: NPY002 - the global state is what a checkpoint restores
    torch.save(get_rng_state(), tmp_path / "rng.pt")
    want = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    torch.manual_seed(0), random.seed(0), np.random.seed(0)  # noqa: NPY002
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    got = (torch.rand(3), random.random(), np.random.rand())  # noqa: NPY002
    assert torch.equal(want[0], got[0]) and want[1:] == got[1:]


def test_intact_checkpoint_loads_newest_exactly(tmp_path, world):
    notices: list[str] = []
    ck, saved = _save_three(tmp_path / "ck", notices)
    target = _parts(99)
    step, extra = ck.load_latest(target)
    assert step == 3 and extra["best"] == 1.5 and extra["sched"] == {"last_epoch": 3, "lrs": [0.1]}
    assert all(torch.equal(a, b) for a, b in zip(_weights(target), saved[2]))
    assert notices == []
    manifest = json.loads((tmp_path / "ck" / "step_00000003" / "manifest.json").read_text())
    assert manifest["world_size"] == 1 and ".metadata" in manifest["files"]


@pytest.mark.parametrize("damage", ["truncated_shard", "missing_metadata", "missing_extra"])
def test_damaged_newest_falls_back_to_the_previous(tmp_path, world, damage):
    notices: list[str] = []
    ck, saved = _save_three(tmp_path / "ck", notices)
    newest = tmp_path / "ck" / "step_00000003"
    if damage == "truncated_shard":
        shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "missing_metadata":
        (newest / ".metadata").unlink()
    else:
        (newest / "extra_rank0.pt").unlink()
    assert ck.damage(newest) is not None
    target = _parts(99)
    step, extra = ck.load_latest(target)
    assert step == 2 and extra["step"] == 2
    assert all(torch.equal(a, b) for a, b in zip(_weights(target), saved[1]))
    assert len(notices) == 1 and "step_00000003 is damaged" in notices[0], notices


def test_no_intact_checkpoint_is_a_clear_error(tmp_path, world):
    ck, _ = _save_three(tmp_path / "ck", [])
    for p in (tmp_path / "ck").iterdir():
        (p / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"ck: no intact checkpoint to resume from"):
        ck.load_latest(_parts(0))
    assert Checkpointer(tmp_path / "none").load_latest(_parts(0)) is None  # nothing saved: a fresh run


@pytest.mark.slow
def test_a_run_moved_with_its_inputs_resumes_where_it_is_now(tmp_path):
    """``mv a b`` of a stopped run whose data and tokenizer sit beside it (a demo's stage): the
    rerun on the new paths resumes from its checkpoint, saying where it was moved from, instead of
    refusing the changed absolute paths; a changed data file (not moved) is still refused."""
    from trainer.data.synthetic import SyntheticConfig, write_synthetic

    write_synthetic(tmp_path / "a" / "world", SyntheticConfig(n_pairs=200))

    def args(root: Path, data: str = "pairs.jsonl") -> list[str]:
        return [
            f"output_dir={root / 'rm'}", f"data={root / 'world' / data}",
            f"tokenizer={root / 'world' / 'tokenizer'}", "micro_batch_size=8", "hidden_size=32",
            "intermediate_size=64", "max_steps=4", "checkpoint_every=2", "eval_every=0", "log_every=1",
            "save_best=false", "progress=false", "plots=false", "report=false",
        ]  # fmt: skip

    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    launch("trainer/reward.py", [*args(tmp_path / "a"), "stop_after_steps=2"], env=env, timeout=300)
    (tmp_path / "a").rename(tmp_path / "b")
    p = launch("trainer/reward.py", args(tmp_path / "b"), env=env, timeout=300)
    log = p.stdout + p.stderr
    assert f"resuming a run moved from {tmp_path / 'a'}" in log and "resumed from step 2" in log, log[-3000:]
    recs = [json.loads(line) for line in (tmp_path / "b" / "rm" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["split"] == "train"] == [1, 2, 3, 4]
    # another data file in the moved run's place is a change, not a move
    (tmp_path / "b" / "world" / "pairs.jsonl").rename(tmp_path / "b" / "world" / "other.jsonl")
    (tmp_path / "b" / "rm" / "final").rename(tmp_path / "b" / "rm" / "final.old")
    bad = launch("trainer/reward.py", args(tmp_path / "b", "other.jsonl"), env=env, timeout=300, ok=False)
    assert bad.returncode == 2
    assert "these keys change the model, data order or schedule: ['data']" in bad.stderr
