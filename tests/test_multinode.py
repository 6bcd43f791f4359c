"""More than one node, tried on one machine: two ``torchrun`` "nodes" (``--nnodes 2
--nproc_per_node 1``, a c10d rendezvous on 127.0.0.1), each started in a working directory of its
own (standing in for node-local disks), ``output_dir`` an absolute path both see (standing in for
a shared filesystem).

A tiny PPO run stopped after 2 iterations and resumed by a second launch of both nodes logs every
iteration once, with losses bit-identical to an uninterrupted single-node 2-process run, and
writes nothing into either node's working directory. With c10d, ``--node_rank`` is ignored
(torch says so): the rendezvous decides which node hosts global rank 0, and it may differ from one
launch to the next, so every rank-0 file must be on the shared filesystem.

Without a shared filesystem, what used to go wrong is now refused by name: a relative
``output_dir`` (one directory per node) ran to the end and split its checkpoints between the
nodes; a path that exists on one node only left the other node waiting in ``init_process_group``
for ``dist_timeout_min``; ``fgrlhf generate`` with a node-local ``-o`` exited 0 without writing
its output; a filesystem without ``flock`` support was taken for another run holding the lock.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _utils import clean_env
from test_ppo import TINY, metrics, torchrun

from trainer.infra.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parent.parent
PPO = str(ROOT / "trainer" / "ppo.py")
ARGS = [*TINY, "reward_level=token", "iterations=3", "checkpoint_every=2", "num_threads=1"]
LOSSES = ("policy_loss", "value_loss", "reward", "kl", "approx_kl", "clipfrac", "entropy")


# --- launching two "nodes" -----------------------------------------------------------------------
def _free_port() -> int:
    """A free TCP port on 127.0.0.1 for the c10d store; skips the test when none can be bound."""
    try:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    except OSError as e:
        pytest.skip(f"c10d rendezvous cannot bind 127.0.0.1 here ({e})")


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _stop(p: subprocess.Popen) -> None:
    """End a launcher we started: SIGTERM (it forwards it and kills its worker after
    ``--shutdown-timeout``), then SIGKILL if it is still there."""
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch_nodes(
    entry: list[str],
    cwds: list[Path],
    logs: list[Path],
    timeout: float = 300,
    grace: float | None = None,
    host_first: bool = False,
) -> list[tuple[int | None, str]]:
    """Start one ``torchrun --nnodes=len(cwds) --nproc_per_node=1`` per working directory (c10d
    rendezvous on a free local port) running ``entry`` (a script and its arguments, or ``-m``
    module ...) and wait for all of them. Returns ``(exit code, log)`` per node; the exit code is
    None for a node still running after ``timeout`` seconds, or ``grace`` seconds after the first
    node exited (it is then stopped). ``host_first``: node 0 starts alone and hosts the c10d store
    before the others start."""
    port = _free_port()
    # (PYTHONPATH: `-m trainer.cli` from a node's directory imports this checkout)
    env = {**clean_env(), "OMP_NUM_THREADS": "1", "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    launcher = [
        sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(cwds)}", "--nproc_per_node=1",
        "--rdzv_backend=c10d", f"--rdzv_endpoint=127.0.0.1:{port}", f"--rdzv_id=fgrlhf-{port}",
        "--shutdown-timeout=5",
    ]  # fmt: skip
    procs = []
    for i, (cwd, log) in enumerate(zip(cwds, logs, strict=True)):
        with open(log, "w") as fh:  # (the child keeps its own descriptor)
            procs.append(
                subprocess.Popen(
                    [*launcher, *entry],
                    cwd=cwd,
                    env=env,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
        if host_first and i == 0:
            deadline = time.time() + 60
            while not _listening(port) and procs[0].poll() is None and time.time() < deadline:
                time.sleep(0.1)
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs) and time.time() < deadline:
        if grace is not None and any(p.poll() is not None for p in procs):
            deadline = min(deadline, time.time() + grace)
            grace = None
        time.sleep(0.2)
    codes = [p.poll() for p in procs]
    for p in procs:
        _stop(p)
    return [(rc, log.read_text()) for rc, log in zip(codes, logs)]


def rank0_nodes(results: list[tuple[int | None, str]]) -> list[int]:
    """The nodes whose log shows global rank 0's start (it alone prints the resolved config)."""
    return [i for i, (_, log) in enumerate(results) if "[ppo] resolved config" in log]


def _tails(results: list[tuple[int | None, str]]) -> str:
    return "\n".join(f"--- node {i} (exit {rc}):\n{log[-3000:]}" for i, (rc, log) in enumerate(results))


class Cluster:
    """Two node working directories, a log folder and a shared directory under ``base``."""

    def __init__(self, base: Path):
        self.nodes = [base / "node0", base / "node1"]
        self.logs, self.shared = base / "logs", base / "shared"
        for d in (*self.nodes, self.logs, self.shared):
            d.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, entry: list[str], **kw) -> list[tuple[int | None, str]]:
        logs = [self.logs / f"{name}.node{i}.log" for i in range(len(self.nodes))]
        return launch_nodes(entry, self.nodes, logs, **kw)


# --- 1. checkpoint on two nodes, resume on two nodes ---------------------------------------------
@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    """The tiny token-level PPO (RM trained on the fly) on two nodes with a shared absolute
    ``output_dir``: stopped after iteration 2, then resumed by a second launch to iteration 3."""
    c = Cluster(tmp_path_factory.mktemp("multinode"))
    out = c.shared / "ppo"
    first = c.run("stop", [PPO, *ARGS, f"output_dir={out}", "stop_after_iterations=2"])
    assert [rc for rc, _ in first] == [0, 0], _tails(first)
    step2 = sorted((out / "checkpoints" / "step_00000002").iterdir())
    iterations_after_stop = [r["iteration"] for r in metrics(out)]
    second = c.run("resume", [PPO, *ARGS, f"output_dir={out}"])
    assert [rc for rc, _ in second] == [0, 0], _tails(second)
    return c, out, first, second, step2, iterations_after_stop


@pytest.mark.slow
def test_two_nodes_resume_equals_one_node(two_nodes, tmp_path):
    c, out, first, second, step2, after_stop = two_nodes
    # one global rank 0 per launch (the rendezvous picks its node)
    assert len(rank0_nodes(first)) == 1 and len(rank0_nodes(second)) == 1, _tails(second)
    assert after_stop == [1, 2]
    names = {p.name for p in step2}  # both ranks' state and counters in one shared checkpoint
    assert {"extra_rank0.pt", "extra_rank1.pt", ".metadata", "manifest.json"} <= names, names
    assert sum(n.endswith(".distcp") for n in names) == 2, names
    assert "resumed from iteration 2" in "".join(log for _, log in second)
    recs = metrics(out)
    assert [r["iteration"] for r in recs] == [1, 2, 3]  # every iteration exactly once
    assert (out / "final" / "actor" / "model.safetensors").is_file()
    assert Checkpointer.damage(out / "checkpoints" / "step_00000003") is None
    # nothing was written to a node's own disk (the working directories)
    assert [sorted(p.name for p in n.iterdir()) for n in c.nodes] == [[], []]
    # the same losses as one node with two processes, from the same reward model
    ref = tmp_path / "one_node"
    torchrun("trainer/ppo.py", [*ARGS, f"output_dir={ref}", f"reward_model={out / 'rm' / 'final'}"])
    for a, b in zip(metrics(ref), recs, strict=True):
        for k in LOSSES:
            assert a[k] == b[k], (a["iteration"], k, a[k], b[k])


# --- 2. what needs a filesystem every node sees --------------------------------------------------
@pytest.mark.slow
def test_node_local_output_dir_is_refused(two_nodes, tmp_path):
    """A relative ``output_dir`` is a directory per node. With the inputs outside it (prompts,
    tokenizer, reward model on the shared filesystem) the run today finishes with exit 0 on both
    nodes, rank 0's checkpoint holding rank 0's shard only (rank 1's stays in a temp directory on
    its own node) — a resume then fails or, with rank 0 on the other node, silently starts over.
    It must be refused at the start instead, naming output_dir."""
    _, out, *_ = two_nodes
    c = Cluster(tmp_path)
    syn = out / "synthetic"
    args = [
        *ARGS, "output_dir=run", f"prompts={syn / 'pairs.jsonl'}", f"tokenizer={syn / 'tokenizer'}",
        f"reward_model={out / 'rm' / 'final'}", "iterations=1", "plots=false", "report=false",
    ]  # fmt: skip
    res = c.run("relative", [PPO, *args], timeout=180)
    assert all(rc not in (0, None) for rc, _ in res), _tails(res)
    assert "every node must see output_dir" in "".join(log for _, log in res), _tails(res)


@pytest.mark.slow
def test_a_path_on_one_node_only_stops_both_nodes(two_nodes, tmp_path):
    """``reward_model=./rm`` exists on node 0 (which hosts the c10d store) only: node 1's worker
    refuses the config before joining the process group, and node 0's worker waits for it in
    ``init_process_group`` for ``dist_timeout_min`` (60 min by default) instead of stopping too."""
    _, out, *_ = two_nodes
    c = Cluster(tmp_path)
    shutil.copytree(out / "rm" / "final", c.nodes[0] / "rm")
    args = [*ARGS, f"output_dir={c.shared / 'run'}", "reward_model=./rm", "iterations=1"]
    res = c.run("one_node_path", [PPO, *args], timeout=120, grace=10, host_first=True)
    assert res[1][0] not in (0, None) and "./rm: no such file or directory" in res[1][1], _tails(res)
    assert res[0][0] is not None, "node 0 still waits for node 1, 10 s after node 1 refused"
    assert res[0][0] != 0 and "./rm" in res[0][1], _tails(res)


@pytest.mark.slow
def test_generate_with_node_local_output_says_so(two_nodes, tmp_path):
    """``fgrlhf generate`` on two nodes with a node-local ``-o`` (a relative path): each rank's
    partial file stays on its node, so rank 0 cannot write the output — today every node exits 0
    without a word; rank 0 must fail naming the cause. (A shared ``-o`` works as on one node:
    tests/test_eval.py runs it with 2 processes.)"""
    _, out, *_ = two_nodes
    c = Cluster(tmp_path)
    prompts = tmp_path / "instructions.json"
    prompts.write_text(json.dumps([{"instruction": f"p{i % 8} p{(3 * i) % 8} p1"} for i in range(8)]))
    gen = ["-m", "trainer.cli", "generate", str(out / "final" / "actor"), str(prompts), "-o", "answers.json",
           "--max-new-tokens=6", "--batch-size=2", "--no-progress"]  # fmt: skip
    res = c.run("generate", gen, timeout=180)
    assert sorted(p.name for n in c.nodes for p in n.glob("answers.json.partial.rank*.jsonl")) == [
        "answers.json.partial.rank0.jsonl",
        "answers.json.partial.rank1.jsonl",
    ]
    assert not any((n / "answers.json").exists() for n in c.nodes)
    assert any(rc not in (0, None) for rc, _ in res), _tails(res)
    assert "every node must see -o" in "".join(log for _, log in res), _tails(res)


def test_output_dir_lock_on_a_filesystem_without_flock(tmp_path, monkeypatch):
    """A shared filesystem mounted without ``flock`` support (Lustre's ``noflock``) fails
    ``flock`` with ENOSYS: that is not another run holding the lock; the run goes on without it
    (one-run-per-directory unguarded) instead of being refused as if the directory were busy."""
    import fcntl

    from trainer.infra import runtime

    def no_flock(fd, op):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    note = runtime._lock_output_dir(tmp_path)  # today: ConfigError "another run is using ..."
    assert "flock" in note and "nothing stops a second run" in note
