"""Run safety, written once for every trainer: what the run skeleton (``trainer/loop.py``) and the
runtime (``trainer/infra/runtime.py``) promise each trainer — SIGTERM -> checkpoint -> exit 75
and a rerun that resumes; a stopped run resumed exactly (2 processes); the output directory's
lock; resume's config check (a changed model key refused, resume=false moving the old run
aside); a truncated newest checkpoint falling back to the previous one. Parametrized over
``reward``, ``sft``, ``figa`` (the supervised recipes on :func:`trainer.loop.run_supervised`)
and ``ppo`` (its own iteration body on the same runtime) where the property applies.

The other tests run the trainers' ``main`` in this process (a real SIGTERM to this process,
handled by the trainers' handler; ``main`` returns the exit status the script passes to
``os._exit``): no interpreter start per run. The exact-resume test needs 2 processes (each
rank's data position and random stream), so it runs under torchrun. PPO's own bit-exact resume
(actor, critic, KL controller, reward moments) is in test_ppo."""

from __future__ import annotations

import fcntl
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from _tiny_runs import TINY_PPO, TINY_REWARD, TINY_SUPERVISED
from _utils import ROOT, clean_env, launch

from trainer.infra.checkpoint import Checkpointer

# PPO with the gold reward (no RM trained first), at the smallest width
_PPO = [*TINY_PPO, "reward_source=gold", "hidden_size=32", "intermediate_size=64", "plots=false",
        "report=false"]  # fmt: skip
# trainer -> (module, tiny overrides, the metrics' step key)
TRAINERS = {
    "reward": ("trainer.reward", [*TINY_REWARD, "save_best=false", "plots=false", "report=false"], "step"),
    "sft": ("trainer.sft", TINY_SUPERVISED, "step"),
    "figa": ("trainer.sft", ["objective=figa", *TINY_SUPERVISED], "step"),
    "ppo": ("trainer.ppo", _PPO, "iteration"),
}
SUPERVISED = ("reward", "sft", "figa")


def _records(out: Path, key: str) -> list[dict]:
    """The training records of ``out/metrics.jsonl`` (supervised: ``split: train``; PPO: all)."""
    if not (out / "metrics.jsonl").exists():
        return []
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in recs if key == "iteration" or r.get("split") == "train"]


@pytest.fixture
def in_process():
    """Run a trainer's ``main`` here: the process-wide state a trainer sets (the SIGTERM handler
    and stop flag, deterministic algorithms, CPU threads) is put back afterwards."""
    from trainer.infra.runtime import STOP

    handler = signal.getsignal(signal.SIGTERM)
    deterministic, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()

    def main(trainer: str, args: list[str]) -> int:
        STOP.requested = False  # a fresh process's flag
        module, tiny, _ = TRAINERS[trainer]
        return importlib.import_module(module).main([*tiny, *args])

    yield main
    signal.signal(signal.SIGTERM, handler)
    STOP.requested = False
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def _sigterm_after_first_record(out: Path, key: str) -> tuple[threading.Thread, threading.Event]:
    """A watcher that sends this process SIGTERM once ``out`` has a training record (the run is
    in its loop), as a scheduler would; set the event to call it off."""
    off = threading.Event()

    def watch() -> None:
        deadline = time.time() + 180
        while not off.is_set() and time.time() < deadline:
            if _records(out, key):
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.05)

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    return t, off


# --- SIGTERM: checkpoint, exit 75, PREEMPTED; the rerun resumes (an allowed key changed) ---------
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_sigterm_checkpoints_exits_75_and_a_rerun_resumes(trainer, tmp_path, in_process, capsys):
    """SIGTERM mid-run: the step (iteration) in hand finishes, its record is written, a checkpoint
    is saved, the trainer exits 75 (pre-empted, distinct from a finished run) leaving a PREEMPTED
    marker naming the step. The same command again, with an allowed (RESUME_SAFE) key changed so
    that it ends one step later, resumes from that checkpoint, says what changed, removes the
    marker and logs every step exactly once."""
    _, _, key = TRAINERS[trainer]
    out = tmp_path / trainer
    if key == "step":
        base, more = ["max_steps=100000", "log_every=1", "eval_every=0"], "stop_after_steps"
    else:
        base, more = ["iterations=100000"], "iterations"
    args = [*base, "checkpoint_every=0", f"output_dir={out}"]
    watcher, off = _sigterm_after_first_record(out, key)
    try:
        rc = in_process(trainer, args)
    finally:
        off.set()
        watcher.join()
    err = capsys.readouterr().err
    assert rc == 75, err[-3000:]
    n = len(_records(out, key))
    assert 1 <= n < 100000
    assert f"SIGTERM: checkpoint saved at step {n} " in err
    assert (out / "PREEMPTED").read_text() == f"step {n}\n"
    assert Checkpointer.damage(out / "checkpoints" / f"step_{n:08d}") is None
    assert [r[key] for r in _records(out, key)] == list(range(1, n + 1))  # the last step's record too

    again = [a for a in args if not a.startswith(f"{more}=")] + [f"{more}={n + 1}"]
    rc = in_process(trainer, again)
    log = "".join(capsys.readouterr())
    assert rc == 0, log[-3000:]
    assert f"resumed from {key} {n}" in log
    assert f"changed keys (allowed): {more}: " in log
    assert not (out / "PREEMPTED").exists()
    assert [r[key] for r in _records(out, key)] == list(range(1, n + 2))  # none twice, none missing


@pytest.mark.slow
def test_a_trainer_script_under_sigterm_exits_75_as_a_process(tmp_path):
    """The same as a real process (the one test of the script's own exit path: ``os._exit`` of
    ``main``'s status, the trackers' shutdown): ``python trainer/reward.py`` sent SIGTERM in its loop
    checkpoints, writes PREEMPTED and exits 75 with no traceback."""
    module, tiny, key = TRAINERS["reward"]
    out = tmp_path / "o"
    cmd = [sys.executable, module.replace(".", "/") + ".py", *tiny, f"output_dir={out}", "max_steps=100000",
           "checkpoint_every=0", "eval_every=0", "log_every=1"]  # fmt: skip
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    while not _records(out, key):
        assert time.time() < deadline and p.poll() is None, p.stdout.read() if p.poll() is not None else ""
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    log, _ = p.communicate(timeout=180)
    assert p.returncode == 75, log[-3000:]
    assert "SIGTERM: checkpoint saved at step" in log and "Traceback" not in log
    step = int((out / "PREEMPTED").read_text().split()[1])
    assert Checkpointer.damage(out / "checkpoints" / f"step_{step:08d}") is None


# --- a stopped run, resumed, equals the uninterrupted one (2 processes) ------------------------
@pytest.mark.slow
@pytest.mark.parametrize("trainer", SUPERVISED)
def test_stopped_2_process_run_resumes_exactly(trainer, tmp_path):
    """2 processes, 6 steps, checkpoints every 3: stopped after step 3 (no final model at a stop
    point) and rerun, the run logs steps 1-6 once each with the uninterrupted run's losses and
    learning rates, ignores (and clears) the temp directory of a save a kill interrupted, and
    saves the final model."""
    module, tiny, _ = TRAINERS[trainer]
    script = module.replace(".", "/") + ".py"
    common = [*tiny, "max_steps=6", "checkpoint_every=3", "log_every=1", "eval_every=0"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    launch(script, [f"output_dir={full}", *common], nproc=2)
    launch(script, [f"output_dir={cut}", *common, "stop_after_steps=3"], nproc=2)  # the "kill"
    assert not (cut / "final").exists()
    (cut / "checkpoints" / ".tmp-step_00000005").mkdir()  # a save interrupted by a kill
    p = launch(script, [f"output_dir={cut}", *common], nproc=2)  # the same command again: resumes
    assert "resumed from step 3" in p.stdout + p.stderr
    want = {r["step"]: r for r in _records(full, "step")}
    got = _records(cut, "step")
    assert [r["step"] for r in got] == [1, 2, 3, 4, 5, 6]  # steps 4..6 from the resumed run only
    assert sorted(want) == [1, 2, 3, 4, 5, 6]
    for r in got:
        assert r["loss"] == pytest.approx(want[r["step"]]["loss"], abs=1e-6), r["step"]
        assert r["lr"] == pytest.approx(want[r["step"]]["lr"], abs=1e-12), r["step"]
    assert len({r["loss"] for r in got}) > 1 and len({r["loss"] for r in want.values()}) > 1
    assert not (cut / "checkpoints" / ".tmp-step_00000005").exists()
    for d in (full, cut):
        assert (d / "final" / "model.safetensors").exists()


# --- a finished run run again ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize(("trainer", "nproc"), [("reward", 1), ("sft", 2)])
def test_a_finished_run_run_again_keeps_its_final_evaluation(trainer, nproc, tmp_path):
    """The same command after the run finished (as to catch a tracker up) resumes at the last
    step, trains nothing, and keeps the final evaluation it logged (rank 0's file decides for
    every rank): metrics.jsonl is unchanged, the final evaluation in it once. The reward trainer's
    ``best/`` comes from the evaluation read back when ``save_best`` was turned on since, and is not
    saved again once it holds that step. A new run in the same directory (its checkpoints
    deleted) evaluates again."""
    module, tiny, _ = TRAINERS[trainer]
    script = module.replace(".", "/") + ".py"
    out = tmp_path / "o"
    args = [*tiny, "max_steps=3", "checkpoint_every=3", "eval_every=0", f"output_dir={out}"]
    launch(script, args, nproc=nproc)
    first = (out / "metrics.jsonl").read_text()
    assert [r["step"] for r in map(json.loads, first.splitlines()) if r["split"] == "eval"] == [3]
    again = [*args, "save_best=true"] if trainer == "reward" else args
    p = launch(script, again, nproc=nproc)
    assert "resumed from step 3" in p.stdout + p.stderr
    assert "the final evaluation (step 3) is in metrics.jsonl already: not repeated" in p.stdout + p.stderr
    assert (out / "metrics.jsonl").read_text() == first
    if trainer == "reward":
        best = out / "best" / "fgrlhf_reward.json"
        assert json.loads(best.read_text())["step"] == 3
        saved = best.stat().st_mtime_ns
        launch(script, again, nproc=nproc)
        assert best.stat().st_mtime_ns == saved
    shutil.rmtree(out / "checkpoints")
    p = launch(script, args, nproc=nproc)
    assert "not repeated" not in p.stdout + p.stderr and "resumed from" not in p.stdout + p.stderr
    evals = [
        r["step"]
        for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
        if r["split"] == "eval"
    ]
    assert evals == [3, 3]


# --- the output directory's lock ---------------------------------------------------------------
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_second_run_on_the_same_output_dir_is_refused(trainer, tmp_path, in_process, capsys):
    """An OS-level lock on output_dir: a run is refused (exit 2, one line) while another holds
    it, before it writes anything."""
    out = tmp_path / "o"
    out.mkdir()
    with open(out / ".lock", "a+") as fh:  # another run holds the lock (flock: per open file)
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        rc = in_process(trainer, [f"output_dir={out}", "progress=false"])
    err = capsys.readouterr().err
    assert rc == 2, err[-2000:]
    assert f"another run is using {out}" in err
    assert not (out / "metrics.jsonl").exists() and not (out / "config.yaml").exists()


# --- resume: a changed config key is refused; resume=false starts over beside the old run -------
def _stopped(trainer: str, out: Path, in_process, capsys) -> tuple[list[str], str]:
    """A run of 4 steps (iterations), checkpoints every 2, stopped after 2: its arguments (without
    the stop) and the stop's key."""
    _, _, key = TRAINERS[trainer]
    if key == "step":
        args, stop = ["max_steps=4", "eval_every=0"], "stop_after_steps"
    else:
        args, stop = ["iterations=4"], "stop_after_iterations"
    args = [*args, "checkpoint_every=2", f"output_dir={out}"]
    rc = in_process(trainer, [*args, f"{stop}=2"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    capsys.readouterr()
    return args, stop


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_resume_with_a_changed_model_key_is_refused_with_the_diff(trainer, tmp_path, in_process, capsys):
    """A key outside RESUME_SAFE (the model's width) changed on a directory with checkpoints: exit
    2 with the diff and the refused key named; the first run's config.yaml is kept."""
    out = tmp_path / trainer
    args, _ = _stopped(trainer, out, in_process, capsys)
    saved = (out / "config.yaml").read_text()
    rc = in_process(trainer, [*args, "hidden_size=48"])
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert "hidden_size: 32 -> 48" in err and "['hidden_size']" in err
    assert (out / "config.yaml").read_text() == saved


@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_resume_false_moves_the_old_run_aside(trainer, tmp_path, in_process, capsys):
    """resume=false on a directory with checkpoints: the old outputs move aside, so the new run
    is never pruned against (or later resumed from) the old one's higher steps."""
    _, _, key = TRAINERS[trainer]
    out = tmp_path / trainer
    args, stop = _stopped(trainer, out, in_process, capsys)
    rc = in_process(trainer, [*args, "resume=false", f"{stop}=1"])
    log = "".join(capsys.readouterr())
    assert rc == 0, log[-3000:]
    assert "moved to *.before-" in log and "resumed from" not in log
    assert sorted(x.name for x in (out / "checkpoints").iterdir()) == ["step_00000001"]
    old = [x for x in out.iterdir() if x.name.startswith("checkpoints.before-")]
    assert len(old) == 1 and (old[0] / "step_00000002").exists()
    assert [r[key] for r in _records(out, key)] == [1]  # the new run's only: the old ones moved too


# --- a damaged newest checkpoint: the previous one; none intact: a clear error ----------------
@pytest.mark.slow
@pytest.mark.parametrize("trainer", list(TRAINERS))
def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(trainer, tmp_path, in_process, capsys):
    """The newest checkpoint of a stopped run truncated: the same command again says so, resumes
    from the previous one and finishes, the records past that one dropped and logged again (once
    each); with every checkpoint damaged it stops with exit 2, naming the directory."""
    _, _, key = TRAINERS[trainer]
    out = tmp_path / trainer
    if key == "step":
        args, stop = ["max_steps=6", "eval_every=0", "log_every=1"], "stop_after_steps"
    else:
        args, stop = ["iterations=6"], "stop_after_iterations"
    args = [*args, "checkpoint_every=2", f"output_dir={out}"]
    rc = in_process(trainer, [*args, f"{stop}=4"])
    assert rc == 0, capsys.readouterr().err[-3000:]
    newest = out / "checkpoints" / "step_00000004"
    shard = next(p for p in newest.iterdir() if p.suffix == ".distcp")
    shard.write_bytes(shard.read_bytes()[:100])
    rc = in_process(trainer, args)
    log = "".join(capsys.readouterr())
    assert rc == 0, log[-3000:]
    assert "step_00000004 is damaged" in log and f"resumed from {key} 2" in log
    assert [r[key] for r in _records(out, key)] == [1, 2, 3, 4, 5, 6]
    assert (out / "final" / ("actor" if key == "iteration" else "") / "model.safetensors").exists()
    for p in (out / "checkpoints").iterdir():
        (p / ".metadata").unlink()
    rc = in_process(trainer, args)
    err = capsys.readouterr().err
    assert rc == 2, err[-3000:]
    assert f"{out / 'checkpoints'}: no intact checkpoint" in err
