"""``report_to``: the fan-out to TensorBoard / W&B / MLflow (trainer/infra/trackers.py), read back
with each tracker's own tools.

* the fan-out alone, with fake trackers: a failing or hanging tracker, a missing package, the
  resume bookkeeping, the secrets scrubbed from messages;
* real libraries on tiny runs: TensorBoard event files read with ``EventAccumulator``; W&B
  offline (its ``.wandb`` transaction log parsed into ``wandb.proto`` records); MLflow against an
  ``mlflow server`` this module starts, read with ``MlflowClient``. A PPO run and its resume (one
  tracker run each, no step twice), the server killed mid-run, a server on another host (a
  network namespace) whose link is cut mid-run and the resume that catches it up, a 2-process
  run, the reward and SFT trainers, a server behind MLflow's basic-auth app (the right and a
  wrong password), and trackers that cannot start (no credentials, no server).

No network: W&B runs offline (a W&B online start is tried only without credentials, against a
closed local port), MLflow talks to servers on this machine only (127.0.0.1, or a network
namespace's address).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from _tiny_runs import TINY_PPO_SMALL, TINY_SUPERVISED
from _utils import clean_env, launch

from trainer.infra import trackers as T

ROOT = Path(__file__).resolve().parent.parent
TINY_PPO = TINY_PPO_SMALL
ALL = "report_to=[tensorboard,wandb,mlflow]"

for mod in ("tensorboard", "wandb", "mlflow"):  # the [track] extra: `make install` installs it
    pytest.importorskip(mod)


# --------------------------------------------------------------------------------------------
# Helpers: environment, runs, and each tracker's reader
# --------------------------------------------------------------------------------------------
def tracker_env(tmp: Path, **extra: str) -> dict:
    """A child's environment: no distributed or tracker variables of ours, W&B offline with every
    directory of its own under ``tmp`` (nothing in $HOME), its server URL a closed local port."""
    env = {k: v for k, v in clean_env().items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    for name in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        env[name] = str(tmp / "wandb-home" / name.lower())
    env.update(
        OMP_NUM_THREADS="1",
        TRITON_INTERPRET="1",
        WANDB_MODE="offline",
        WANDB_BASE_URL="http://127.0.0.1:9",  # the discard port: never a real server
        WANDB_SILENT="true",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",  # a dead server fails at once, not after minutes
        MLFLOW_HTTP_REQUEST_TIMEOUT="10",
    )
    env.update(extra)
    return env


def run(script: str, args: list[str], env: dict, nproc: int = 1, timeout: int = 300):
    """``script args`` (under torchrun when ``nproc`` > 1); asserts exit 0."""
    return launch(script, args, nproc=nproc, env=env, timeout=timeout)


def run_and_interrupt(args: list[str], env: dict, out: Path, records: int, act, what: str):
    """``trainer/ppo.py args`` in the background; once ``out/metrics.jsonl`` holds ``records``
    records, ``act()``, while it still runs (``what`` names it in a failure); then its exit code and
    output (killed if it outlives the wait)."""
    proc = subprocess.Popen(
        [sys.executable, "trainer/ppo.py", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and len(jsonl(out / "metrics.jsonl")) >= records):
            assert proc.poll() is None and time.monotonic() < deadline, f"{records} records before {what}"
            time.sleep(0.05)
        act()
        assert proc.poll() is None, f"the run ended before {what}"
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, output


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def expected_scalars(out: Path, step_key: str) -> dict[str, dict[int, float]]:
    """``{tag: {step: value}}`` of every number in ``out/metrics.jsonl`` (the trackers' names)."""
    want: dict[str, dict[int, float]] = {}
    for rec in jsonl(out / "metrics.jsonl"):
        for k, v in T.numeric_fields(rec, step_key).items():
            want.setdefault(k, {})[rec[step_key]] = v
    return want


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6)


def tensorboard(out: Path):
    """TensorBoard's own reader over ``out/tb`` (every event kept)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(out / "tb"), size_guidance={"scalars": 0, "tensors": 0, "images": 0})
    ea.Reload()
    return ea


def wandb_records(path: Path):
    """The ``wandb.proto`` records of a ``.wandb`` transaction log (W&B's LevelDB-style log:
    a 7-byte file header, 32 KiB blocks of CRC-32-checked chunks; wandb 0.31 ships no Python
    reader, so the framing is undone here and each record parsed by wandb's own protobuf)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), (ident, magic, version)
    block, pos, buf = 32768, 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header: padding
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:
            continue
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"{path}: bad CRC"
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL / FIRST ... MIDDLE / LAST
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            yield rec


def wandb_runs(out: Path) -> list[dict]:
    """Each offline run directory under ``out/wandb`` (a resume adds one with the same id):
    ``{"dir", "id", "config", "history": [row dicts], "files": [paths under files/]}``."""
    runs = []
    for d in sorted((out / "wandb").glob("offline-run-*")):
        (log,) = d.glob("run-*.wandb")
        info = {"dir": d, "id": None, "config": {}, "history": [], "files": []}
        for rec in wandb_records(log):
            kind = rec.WhichOneof("record_type")
            if kind == "run":
                info["id"], info["name"] = rec.run.run_id, rec.run.display_name
                info["config"] = {u.key: json.loads(u.value_json) for u in rec.run.config.update}
            elif kind == "history":
                row = {}
                for item in rec.history.item:
                    key = item.key or ".".join(item.nested_key)
                    row[key] = json.loads(item.value_json)
                info["history"].append(row)
        info["files"] = sorted(
            str(p.relative_to(d / "files")) for p in (d / "files").rglob("*") if p.is_file()
        )
        runs.append(info)
    return runs


class MLflowServer:
    """The module's ``mlflow server`` (bench/bench_trackers.py's): started on first use and again
    after a test killed it."""

    def __init__(self, root: Path):
        self.root, self.n, self._cm, self.uri, self.proc = root, 0, None, "", None

    def get(self) -> str:
        if self.proc is None or self.proc.poll() is not None:
            self.stop()
            from bench.bench_trackers import mlflow_server

            self.n += 1
            self._cm = mlflow_server(self.root / f"server{self.n}")
            self.uri, self.proc = self._cm.__enter__()
        return self.uri

    def stop(self) -> None:
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None


@pytest.fixture(scope="module")
def mlflow_srv(tmp_path_factory):
    srv = MLflowServer(tmp_path_factory.mktemp("mlflow"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory) -> Path:
    """A tiny token-level RM (PPO trains it on the fly in a 1-iteration run), shared by the PPO
    tests so that each of them runs PPO alone."""
    tmp = tmp_path_factory.mktemp("rm")
    run("trainer/ppo.py", [*TINY_PPO, "iterations=1", f"output_dir={tmp}"], tracker_env(tmp))
    return tmp / "rm" / "final"


def mlflow_run(uri: str, experiment: str):
    """The one run of ``experiment`` on the server (asserts there is exactly one)."""
    from mlflow.tracking import MlflowClient

    c = MlflowClient(uri)
    exp = c.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    runs = c.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return c, runs[0]


def mlflow_artifacts(c, run_id: str, path: str | None = None) -> list[str]:
    out = []
    for a in c.list_artifacts(run_id, path):
        out += mlflow_artifacts(c, run_id, a.path) if a.is_dir else [a.path]
    return out


class OtherHost:
    """Another host on a network of its own: a Linux network namespace joined to this one by a
    veth pair (``10.231.N.1`` here, :attr:`ip` there), its neighbour entry fixed, so that
    :meth:`cut` is a partition as a broken link between two machines shows it — packets vanish,
    connections hang until their timeout — rather than an error at once; :meth:`mend` undoes it.
    Needs root and ``ip`` (iproute2); :meth:`up` skips the test where either is missing."""

    def __init__(self) -> None:
        self.ns, self.here, self.peer = f"fgr-{os.getpid()}", f"fgrh{os.getpid()}", "fgrp0"
        self.prefix = ["ip", "netns", "exec", self.ns]

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)

    def up(self) -> OtherHost:
        if shutil.which("ip") is None or os.geteuid() != 0:
            pytest.skip("another host needs root and iproute2's ip (a network namespace)")
        self.down()  # (a namespace of this name that a killed run of this process id left)
        try:
            self._ip("netns", "add", self.ns)
            used = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True, timeout=30).stdout
            n = next(n for n in range(1, 255) if f"10.231.{n}." not in used)  # (not another test's net)
            self.local, self.ip = f"10.231.{n}.1", f"10.231.{n}.2"
            self._ip("link", "add", self.here, "type", "veth", "peer", "name", self.peer, "netns", self.ns)
            self._ip("addr", "add", f"{self.local}/30", "dev", self.here)
            self._ip("link", "set", self.here, "up")
            self._ip("-n", self.ns, "addr", "add", f"{self.ip}/30", "dev", self.peer)
            self._ip("-n", self.ns, "link", "set", self.peer, "up")
            self._ip("-n", self.ns, "link", "set", "lo", "up")
            show = ["ip", "-n", self.ns, "-br", "link", "show", self.peer]  # NAME STATE MAC ...
            mac = subprocess.run(show, capture_output=True, text=True, check=True, timeout=30).stdout.split()[
                2
            ]
            self._ip("neigh", "replace", self.ip, "lladdr", mac, "dev", self.here, "nud", "permanent")
        except (subprocess.CalledProcessError, StopIteration, IndexError) as e:
            self.down()
            why = e.stderr.strip() if isinstance(e, subprocess.CalledProcessError) else type(e).__name__
            pytest.skip(f"cannot make another host's network here: {why}")
        return self

    def cut(self) -> None:
        self._ip("-n", self.ns, "link", "set", self.peer, "down")

    def mend(self) -> None:
        self._ip("-n", self.ns, "link", "set", self.peer, "up")

    def down(self) -> None:
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True, timeout=30)  # (and its veth)
        subprocess.run(["ip", "link", "del", self.here], capture_output=True, timeout=30)


# --------------------------------------------------------------------------------------------
# 1. The fan-out alone (fake trackers: no library, no training)
# --------------------------------------------------------------------------------------------
class Recorder(T.Tracker):
    """Keeps every call; ``fail_at`` (a step) raises there, ``block`` (an Event) hangs log()."""

    name = "recorder"
    calls: list = []
    fail_at: int | None = None
    block: threading.Event | None = None

    def start(self, info, state):
        type(self).calls.append(("start", dict(state)))
        return {"run_id": state.get("run_id", "run-1")}

    def log(self, step, values, wall_time):
        if self.block is not None:
            self.block.wait()
        if step == self.fail_at:
            raise ConnectionError("server said no to http://alice:s3cret-pass@tracker.example/api")
        type(self).calls.append(("log", step, dict(values)))

    def table(self, step, name, columns, rows):
        type(self).calls.append(("table", step, name, columns, rows))

    def finish(self, step, summary, text, files):
        type(self).calls.append(("finish", step, summary, text, [(p.name, f) for p, f in files]))

    def close(self, exit_code):
        type(self).calls.append(("close", exit_code))


def fake(name: str, **attrs) -> type[T.Tracker]:
    return type(f"Fake_{name}", (Recorder,), {"name": name, "calls": [], **attrs})


def test_fanout_sends_each_step_once_and_survives_a_failing_tracker(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-pass")
    said: list[str] = []
    good, bad = fake("tensorboard"), fake("mlflow", fail_at=2)
    info = T.RunInfo("ppo", tmp_path, {"lr": 0.1, "synthetic": {"n": 3}}, step_key="iteration")
    classes = {"tensorboard": good, "mlflow": bad}
    tr = T.Trackers(["tensorboard", "mlflow", "tensorboard"], info, said.append, classes)
    for it in (1, 2, 3):
        tr.log({"iteration": it, "reward": it / 10, "flag": True, "note": "x", "missing": None})
    tr.table("rollouts", 3, [{"prompt": "p", "reward": 0.5}, {"prompt": "q", "gold": 1.0}])
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "reward.png").write_bytes(b"png")
    tr.finish({"reward": 0.3}, "summary text", [tmp_path / "plots", tmp_path / "report.html"])
    tr.close()
    # the good tracker got everything, once, numbers only
    assert [c[1] for c in good.calls if c[0] == "log"] == [1, 2, 3]
    assert good.calls[1] == ("log", 1, {"reward": 0.1})
    assert (
        "table",
        3,
        "rollouts",
        ["prompt", "reward", "gold"],
        [["p", 0.5, None], ["q", None, 1.0]],
    ) in good.calls
    assert ("finish", 3, {"reward": 0.3}, "summary text", [("reward.png", "plots")]) in good.calls
    assert good.calls[-1] == ("close", 0)
    # the failing one: one warning naming it and the reason, secrets scrubbed, then nothing
    warnings = [s for s in said if "warning" in s]
    assert len(warnings) == 1 and "report_to mlflow" in warnings[0] and "ConnectionError" in warnings[0]
    assert "s3cret" not in warnings[0] and "alice" not in warnings[0], warnings[0]
    assert [c[0] for c in bad.calls] == ["start", "log"]
    state = json.loads((tmp_path / T.STATE_FILE).read_text())
    assert state["tensorboard"]["last_step"] == 3 and state["tensorboard"]["run_id"] == "run-1"

    # a resume: the kept run id, and only what was not sent yet (steps 1-3 again, then 4)
    good2 = fake("tensorboard")
    info2 = T.RunInfo("ppo", tmp_path, {}, step_key="iteration", resuming=True)
    tr = T.Trackers(["tensorboard"], info2, said.append, {"tensorboard": good2})
    for it in (2, 3, 4):
        tr.log({"iteration": it, "reward": 1.0, **({"heldout": 0.5} if it == 3 else {})})
    tr.table("rollouts", 3, [{"prompt": "again"}])
    tr.close()
    assert good2.calls[0] == ("start", state["tensorboard"])
    sent = [(c[1], sorted(c[2])) for c in good2.calls if c[0] == "log"]
    assert sent == [(3, ["heldout"]), (4, ["reward"])]  # step 3's reward and table went out before
    assert not [c for c in good2.calls if c[0] == "table"]


def wait_for(pred, what: str, timeout: float = 20.0) -> None:
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, what
        time.sleep(0.01)


def logged(tracker: type[Recorder]) -> list[tuple[int, dict]]:
    return [(c[1], c[2]) for c in tracker.calls if c[0] == "log"]


def test_a_resume_catches_up_on_what_a_tracker_missed(tmp_path):
    """A tracker that missed records (it failed at step 3: a server down; the warning says a
    resume sends them) gets them on the next resume, read from metrics.jsonl as ``resume_at``
    left it: steps after its last one up to the checkpoint, each once, before what the resumed
    run logs (a batching tracker too); a tracker added on resume gets the whole history; records
    dropped by the resume are not sent; a record at the checkpoint's step logged after the resume
    sends only its new fields. Run once more with nothing new (a finished run run again), the
    trackers get nothing: no record, no summary, no file."""
    from trainer.infra.metrics import MetricsLog

    said: list[str] = []
    info = T.RunInfo("ppo", tmp_path, {}, step_key="iteration", resumable=True)
    down, other = fake("mlflow", fail_at=3), fake("tensorboard")
    log = MetricsLog(
        tmp_path / "metrics.jsonl",
        True,
        "iteration",
        T.Trackers(["mlflow"], info, said.append, {"mlflow": down}),
    )
    for it in range(1, 7):
        log.write({"iteration": it, "reward": it / 10})
        if it == 2:  # (1 and 2 sent first)
            wait_for(lambda: len(logged(down)) == 2, "steps 1 and 2 not sent")
    log.close()
    assert [step for step, _ in logged(down)] == [1, 2]  # the failure at 3: no more
    (warning,) = [m for m in said if "warning" in m]
    assert "report_to mlflow" in warning and "a resume of the run sends them" in warning
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"iteration": 7, "rew')  # a torn last line, as a kill leaves it

    # resume from the checkpoint of step 5 (6 and the torn line are dropped, then logged again)
    up = fake("mlflow", interval_s=0.2)
    resumed = T.RunInfo("ppo", tmp_path, {}, step_key="iteration", resuming=True, resumable=True)
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "reward.png").write_bytes(b"png")

    def rerun(classes: dict, start: int, steps: list[int]) -> None:
        log = MetricsLog(
            tmp_path / "metrics.jsonl", True, "iteration", T.Trackers(list(classes), resumed, print, classes)
        )
        log.resume_at(start)
        if start == 5:
            log.write({"iteration": 5, "eval_reward": 0.9})  # (the step's evaluation, after the checkpoint)
        for it in steps:
            log.write({"iteration": it, "reward": 1.0})
        log.files([tmp_path / "plots"])
        log.finish({"reward": 1.0}, "summary text")
        log.close()

    rerun({"mlflow": up, "tensorboard": other}, 5, [6, 7])
    assert up.calls[0] == ("start", {"run_id": "run-1", "last_step": 2, "sent_at_last_step": ["reward"]})
    assert logged(up) == [
        (3, {"reward": 0.3}), (4, {"reward": 0.4}), (5, {"reward": 0.5}), (5, {"eval_reward": 0.9}),
        (6, {"reward": 1.0}), (7, {"reward": 1.0}),
    ]  # fmt: skip
    assert [step for step, _ in logged(other)] == [1, 2, 3, 4, 5, 5, 6, 7]
    for t in (up, other):
        ends = [c for c in t.calls if c[0] == "finish"]
        assert ends == [
            ("finish", 7, {}, "", [("reward.png", "plots")]),
            ("finish", 7, {"reward": 1.0}, "summary text", []),
        ], ends
    assert json.loads((tmp_path / T.STATE_FILE).read_text())["mlflow"]["last_step"] == 7

    again, other2 = fake("mlflow"), fake("tensorboard")
    rerun({"mlflow": again, "tensorboard": other2}, 7, [])
    for t in (again, other2):
        assert [c[0] for c in t.calls] == ["start", "close"], t.calls


def test_catch_up_bookkeeping(tmp_path, monkeypatch):
    """A catch-up is recorded sent chunk by chunk (a failure halfway loses one chunk at most); a
    tracker whose start opens another run (another server) gets the whole history; one whose
    store reports more than trackers.json (an answer lost after the request arrived) is not
    sent that again."""
    monkeypatch.setattr(T, "CATCH_UP_CHUNK", 2)
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": s / 10}) + "\n" for s in range(1, 9)))
    info = T.RunInfo("sft", tmp_path, {}, resuming=True, resumable=True)

    def resume(tracker: type[Recorder]) -> dict:
        tr = T.Trackers(["mlflow"], info, print, {"mlflow": tracker})
        tr.catch_up(path, 8)
        tr.close()
        return json.loads((tmp_path / T.STATE_FILE).read_text())["mlflow"]

    failing = fake("mlflow", fail_at=6)  # chunks [1 2] [3 4] sent and recorded, [5 6] fails
    assert resume(failing)["last_step"] == 4
    good = fake("mlflow")
    assert resume(good)["last_step"] == 8 and [s for s, _ in logged(good)] == [5, 6, 7, 8]

    def new_run(self, info, state):  # noqa: ARG001
        return {"run_id": "run-2"}

    moved = fake("mlflow", start=new_run)
    assert resume(moved) == {"run_id": "run-2", "last_step": 8, "sent_at_last_step": ["loss"]}
    assert [s for s, _ in logged(moved)] == list(range(1, 9))

    def store_has_more(self, info, state):  # noqa: ARG001
        return {"run_id": "run-2", "last_step": 9, "sent_at_last_step": ["loss"]}

    path.write_text(path.read_text() + "".join(json.dumps({"step": s, "loss": 0.5}) + "\n" for s in (9, 10)))
    ahead = fake("mlflow", start=store_has_more)
    info = T.RunInfo("sft", tmp_path, {}, resuming=True, resumable=True)
    tr = T.Trackers(["mlflow"], info, print, {"mlflow": ahead})
    tr.catch_up(path, 10)
    tr.close()
    assert [s for s, _ in logged(ahead)] == [10]


def test_a_batching_tracker_holds_records_until_its_interval_or_the_end(tmp_path):
    """A tracker with ``interval_s`` (TensorBoard and W&B: 1 s, MLflow: 5 s) gets a batch's
    records together, in order; ``hurry`` (the loop is over) and ``close`` end the wait at once."""
    for end in ("hurry", "close"):
        (tmp_path / end).mkdir()
        slow = fake("mlflow", interval_s=60.0)
        tr = T.Trackers(
            ["mlflow"], T.RunInfo("ppo", tmp_path / end, {}, step_key="iteration"), print, {"mlflow": slow}
        )
        for it in (1, 2, 3):
            tr.log({"iteration": it, "reward": it / 10})
        time.sleep(0.5)
        assert [c for c in slow.calls if c[0] == "log"] == []  # held back: the interval has not passed
        t0 = time.monotonic()
        if end == "hurry":
            tr.hurry()
            while len([c for c in slow.calls if c[0] == "log"]) < 3:
                assert time.monotonic() - t0 < 20, "hurry() did not end the wait"
                time.sleep(0.01)
        tr.close()
        assert time.monotonic() - t0 < 20, f"{end}() did not end the wait"
        assert [c[1] for c in slow.calls if c[0] == "log"] == [1, 2, 3] and slow.calls[-1] == ("close", 0)


def test_fanout_never_waits_on_a_hung_tracker(tmp_path, monkeypatch):
    monkeypatch.setattr(T, "QUEUE_SIZE", 4)
    said: list[str] = []
    gate = threading.Event()
    hung = fake("wandb", block=gate)
    tr = T.Trackers(["wandb"], T.RunInfo("sft", tmp_path, {}), said.append, {"wandb": hung})
    t0 = time.perf_counter()
    for step in range(1000):
        tr.log({"step": step, "loss": 1.0})
    assert time.perf_counter() - t0 < 0.5  # enqueueing only; a full queue drops
    time.sleep(0.2)
    for step in range(1000, 1010):  # the thread is stuck in log(): the queue fills up for good
        tr.log({"step": step, "loss": 1.0})
    t0 = time.perf_counter()
    tr.close(timeout=1.0)
    assert time.perf_counter() - t0 < 3
    assert any("falling behind" in s for s in said)
    assert any("report_to wandb: still busy" in s for s in said)
    gate.set()


def test_missing_package_is_one_warning_naming_the_extra(tmp_path, monkeypatch):
    real = T.importlib.util.find_spec
    monkeypatch.setattr(T.importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a))
    said: list[str] = []
    tr = T.Trackers(["wandb"], T.RunInfo("reward", tmp_path, {}), said.append)
    tr.log({"step": 1, "loss": 1.0})
    tr.close()
    assert said == [
        "warning: report_to wandb: wandb is not installed (pip install 'fgrlhf[wandb]'); this run logs "
        "to metrics.jsonl without it"
    ]
    assert not tr.workers
    said.clear()
    assert T.start_trackers(["wandb"], T.RunInfo("reward", tmp_path, {}), said.append) is None
    assert len(said) == 1 and "pip install 'fgrlhf[wandb]'" in said[0]


def test_redact_and_config_key(monkeypatch):
    from trainer.infra.config import ConfigError, declared, load_config
    from trainer.ppo import PPOConfig
    from trainer.reward import RewardConfig
    from trainer.sft import SFTConfig

    monkeypatch.setenv("WANDB_API_KEY", "local-0123456789abcdef")
    msg = "key local-0123456789abcdef at https://bob:pw@host:5000/x and http://host/ok"
    assert T.redact(msg) == "key *** at https://***@host:5000/x and http://host/ok"
    for cls in (PPOConfig, RewardConfig, SFTConfig):
        assert load_config(cls, []).report_to == []
        cfg = load_config(cls, ["report_to=[tensorboard,mlflow]"])
        assert cfg.report_to == ["tensorboard", "mlflow"]
        assert "report_to" in declared(cls, "RESUME_SAFE")
        with pytest.raises(ConfigError, match="'report_to': 'neptune' is not one of"):
            load_config(cls, ["report_to=[wandb,neptune]", "device=cpu"]).check()


# --------------------------------------------------------------------------------------------
# 2. Real trackers on real runs
# --------------------------------------------------------------------------------------------
def check_tensorboard(out: Path, step_key: str) -> None:
    """Every number of metrics.jsonl is a TensorBoard scalar at its step, once."""
    ea = tensorboard(out)
    for tag, steps in expected_scalars(out, step_key).items():
        events = ea.Scalars(tag)
        got = [e.step for e in events]
        assert sorted(got) == sorted(steps) and len(set(got)) == len(got), (tag, got, sorted(steps))
        for e in events:
            assert same(e.value, steps[e.step]), (tag, e.step, e.value, steps[e.step])


@pytest.mark.slow
def test_ppo_with_every_tracker_and_its_resume(tmp_path, reward_model, mlflow_srv):
    """A PPO run and its resume from a checkpoint older than the last step logged: one run per
    tracker, every JSONL metric at its step exactly once, config, rollout tables, artefacts."""
    out = tmp_path / "ppo"
    uri = mlflow_srv.get()
    env = tracker_env(tmp_path, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="ppo-resume")
    args = [*TINY_PPO, ALL, f"reward_model={reward_model}", "checkpoint_every=2", f"output_dir={out}"]
    p = run("trainer/ppo.py", [*args, "iterations=3"], env)
    assert "warning: report_to" not in p.stdout + p.stderr
    # as if killed after iteration 3 was logged but before its checkpoint: resume from 2
    shutil.rmtree(out / "checkpoints" / "step_00000003")
    p = run("trainer/ppo.py", [*args, "iterations=4"], env)
    assert "resumed from iteration 2" in p.stdout + p.stderr
    assert "warning: report_to" not in p.stdout + p.stderr
    # the trainer's own time on them, said once at the end (the bench reads it): parts add up
    from bench.bench_trackers import COST_LINE, trainer_side_s

    assert len(COST_LINE.findall(p.stdout + p.stderr)) == 1, (p.stdout + p.stderr)[-2000:]
    cost = trainer_side_s(p.stdout + p.stderr)
    assert abs(cost.pop("total") - sum(cost.values())) <= 0.003 and cost["wait"] > 0
    assert [r["iteration"] for r in jsonl(out / "metrics.jsonl")] == [1, 2, 3, 4]
    state = json.loads((out / T.STATE_FILE).read_text())
    assert {k: v["last_step"] for k, v in state.items()} == {"tensorboard": 4, "wandb": 4, "mlflow": 4}
    assert {r["iteration"] for r in jsonl(out / "rollouts.jsonl")} == {1, 2, 3, 4}

    # TensorBoard: the JSONL's values, except iteration 3 (the trackers keep what they got first)
    ea = tensorboard(out)
    want = expected_scalars(out, "iteration")
    for tag, steps in want.items():
        got = {e.step: e.value for e in ea.Scalars(tag)}
        assert sorted(got) == [1, 2, 3, 4], (tag, sorted(got))
        assert all(same(got[s], steps[s]) for s in (1, 2, 4)), tag
    text = ea.Tags()["tensors"]
    assert {"run/config/text_summary", "run/command/text_summary", "rollouts/text_summary"} <= set(text)
    assert {"summary/text_summary", "summary/figures/text_summary"} <= set(text)
    assert "plots/reward" in ea.Tags()["images"]

    # W&B: two offline directories (a run and its resume) of one run id; every step once
    runs = wandb_runs(out)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"] == state["wandb"]["run_id"]
    rows = [r for w in runs for r in w["history"] if "reward" in r]
    assert sorted(r["iteration"] for r in rows) == [1, 2, 3, 4]
    for r in rows:
        if r["iteration"] != 3:
            assert all(same(r[k], v[r["iteration"]]) for k, v in want.items() if r["iteration"] in v)
    tables = [r["iteration"] for w in runs for r in w["history"] if "rollouts._type" in r]
    assert sorted(tables) == [1, 2, 3, 4]
    cfg = runs[0]["config"]
    assert cfg["rollout_batch_size"] == 8 and cfg["synthetic"]["n_pairs"] == 300
    assert "trainer/ppo.py" in cfg["command"] and cfg["world_size"] == 1
    assert cfg.get("git_commit", "x") and runs[1]["config"]["iterations"] == 4
    (table,) = [f for f in runs[0]["files"] if f.startswith("media/table/rollouts_")][:1]
    t = json.loads((runs[0]["dir"] / "files" / table).read_text())
    assert t["columns"] == ["sample", "prompt", "response", "rm_reward", "gold_reward", "token_rewards"]
    assert len(t["data"]) == 2 and t["data"][0][5].startswith("[")
    assert t["data"][0][4] is not None  # the synthetic world knows the gold reward
    files = runs[1]["files"]
    assert {"outputs/report.html", "outputs/summary.txt", "outputs/plots/reward.png"} <= set(files)

    # MLflow: one run, every metric once per step, the params, tags and artefacts
    c, r = mlflow_run(uri, "ppo-resume")
    assert r.info.run_id == state["mlflow"]["run_id"] and r.info.status == "FINISHED"
    for tag, steps in want.items():
        hist = c.get_metric_history(r.info.run_id, tag)
        assert sorted(m.step for m in hist) == [1, 2, 3, 4], (tag, [m.step for m in hist])
        assert all(same(m.value, steps[m.step]) for m in hist if m.step != 3), tag
    assert r.data.params["rollout_batch_size"] == "8" and r.data.params["synthetic.n_pairs"] == "300"
    assert r.data.params["iterations"] == "3" and r.data.tags["resumed.iterations"] == "4"
    assert "trainer/ppo.py" in r.data.tags["mlflow.source.name"]
    assert "summary/reward" in r.data.metrics
    arts = mlflow_artifacts(c, r.info.run_id)
    assert {"report.html", "summary.txt", "plots/reward.png"} <= set(arts)
    assert [a for a in arts if a.startswith("rollouts/")] == [
        f"rollouts/step_{i:07d}.json" for i in (1, 2, 3, 4)
    ]


@pytest.mark.slow
def test_mlflow_server_killed_mid_run(tmp_path, reward_model, mlflow_srv):
    """The server dies during training: the run finishes, one warning names MLflow, metrics.jsonl
    is complete, and TensorBoard (the other tracker) still has every step."""
    out = tmp_path / "ppo"
    uri = mlflow_srv.get()
    env = tracker_env(tmp_path, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="killed")
    args = [*TINY_PPO, "report_to=[mlflow,tensorboard]", f"reward_model={reward_model}", "iterations=6"]
    args += ["save_rollouts_every=0", f"output_dir={out}"]

    def kill() -> None:  # mid-run (the fixture starts another server later)
        os.killpg(mlflow_srv.proc.pid, signal.SIGKILL)
        mlflow_srv.proc.wait()

    code, output = run_and_interrupt(args, env, out, 2, kill, "the server was killed")
    assert code == 0, output[-4000:]
    warnings = [line for line in output.splitlines() if "warning: report_to" in line]
    assert len(warnings) == 1 and "report_to mlflow" in warnings[0], output[-3000:]
    assert [r["iteration"] for r in jsonl(out / "metrics.jsonl")] == list(range(1, 7))
    check_tensorboard(out, "iteration")


@pytest.mark.slow
def test_mlflow_on_another_host_through_a_partition(tmp_path, reward_model):
    """An MLflow server on another host (:class:`OtherHost`). A PPO run logs to it, then its resume
    loses the link halfway (packets vanish; a request hangs until ``MLFLOW_HTTP_REQUEST_TIMEOUT``):
    that run still finishes, with one warning naming MLflow, no wait for the trackers' time limit,
    and metrics.jsonl complete. Once the link is back, the same command again (a resume of the
    finished run: no training) sends MLflow what it missed: every step once, the JSONL's values;
    TensorBoard, added to ``report_to`` then, gets the whole history."""
    from bench.bench_trackers import mlflow_server

    host = OtherHost()
    try:
        host.up()
        with mlflow_server(tmp_path / "server", host=host.ip, prefix=host.prefix) as (uri, _):
            out = tmp_path / "ppo"
            env = tracker_env(
                tmp_path, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="partition",
                MLFLOW_HTTP_REQUEST_TIMEOUT="5",
            )  # fmt: skip
            args = [*TINY_PPO, "report_to=[mlflow]", f"reward_model={reward_model}", f"output_dir={out}"]
            args += ["save_rollouts_every=0", "checkpoint_every=100"]
            p = run("trainer/ppo.py", [*args, "iterations=3"], env)
            assert "warning: report_to" not in p.stdout + p.stderr
            c, r = mlflow_run(uri, "partition")
            assert [m.step for m in c.get_metric_history(r.info.run_id, "reward")] == [1, 2, 3]

            try:
                code, output = run_and_interrupt([*args, "iterations=10"], env, out, 6, host.cut, "the cut")
            finally:
                host.mend()
            assert code == 0, output[-4000:]
            warnings = [line for line in output.splitlines() if "warning: report_to" in line]
            assert len(warnings) == 1 and "report_to mlflow" in warnings[0], output[-3000:]
            assert "a resume of the run sends them" in warnings[0]
            assert "still busy" not in output  # the request's own timeout ended it, not close's limit
            assert [r["iteration"] for r in jsonl(out / "metrics.jsonl")] == list(range(1, 11))
            sent = json.loads((out / T.STATE_FILE).read_text())["mlflow"]["last_step"]
            assert 3 <= sent < 10
            # as if one more request had reached the server but its answer was lost in the cut
            from mlflow.entities import Metric

            (rec,) = [x for x in jsonl(out / "metrics.jsonl") if x["iteration"] == sent + 1]
            lost = [Metric(k, v, 1000, sent + 1) for k, v in T.numeric_fields(rec, "iteration").items()]
            c.log_batch(r.info.run_id, metrics=lost)

            # the link back, the same command, with TensorBoard added: both get the whole history
            args[args.index("report_to=[mlflow]")] = "report_to=[mlflow,tensorboard]"
            p = run("trainer/ppo.py", [*args, "iterations=10"], env)
            assert "resumed from iteration 10" in p.stdout + p.stderr
            assert "warning: report_to" not in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
            check_tensorboard(out, "iteration")
            c, r = mlflow_run(uri, "partition")
            assert r.info.status == "FINISHED"
            for tag, steps in expected_scalars(out, "iteration").items():
                hist = c.get_metric_history(r.info.run_id, tag)
                assert sorted(m.step for m in hist) == list(range(1, 11)), (tag, [m.step for m in hist])
                assert all(same(m.value, steps[m.step]) for m in hist), tag
            # the artefacts went over HTTP, into the other host's store (the client has no path to it)
            assert r.info.artifact_uri.startswith("mlflow-artifacts:"), r.info.artifact_uri
            assert {"plots/reward.png", "summary.txt"} <= set(mlflow_artifacts(c, r.info.run_id))
            stored = tmp_path / "server" / "artifacts"
            assert [p.name for p in stored.rglob("reward.png")] == ["reward.png"]
    finally:
        host.down()


@pytest.mark.slow
def test_two_processes_log_one_tracker_run(tmp_path, reward_model, mlflow_srv):
    out = tmp_path / "ppo2"
    uri = mlflow_srv.get()
    env = tracker_env(tmp_path, MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="two-procs")
    args = [*TINY_PPO, ALL, f"reward_model={reward_model}", "iterations=2", f"output_dir={out}"]
    p = run("trainer/ppo.py", args, env, nproc=2)
    assert "warning: report_to" not in p.stdout + p.stderr
    assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1
    check_tensorboard(out, "iteration")
    (w,) = wandb_runs(out)
    assert sorted(r["iteration"] for r in w["history"] if "reward" in r) == [1, 2]
    assert w["config"]["world_size"] == 2
    c, r = mlflow_run(uri, "two-procs")
    assert sorted(m.step for m in c.get_metric_history(r.info.run_id, "reward")) == [1, 2]


@pytest.mark.slow
def test_reward_and_sft_trainers_report_too(tmp_path):
    """The same key on the step-scheduled trainers: ``train/`` and ``eval/`` records at their
    steps in TensorBoard and W&B (no per-tracker code in any trainer)."""
    env = tracker_env(tmp_path)
    tiny = TINY_SUPERVISED
    for script, extra in (
        ("trainer/reward.py", ["max_steps=6", "eval_every=3", "log_every=2", "report_pairs=4"]),
        ("trainer/sft.py", ["max_steps=4", "eval_every=2", "log_every=2", "run_name=study/sft"]),
    ):
        out = tmp_path / Path(script).stem
        p = run(script, [*tiny, *extra, "report_to=[tensorboard,wandb]", f"output_dir={out}"], env)
        assert "warning: report_to" not in p.stdout + p.stderr
        check_tensorboard(out, "step")
        assert any(t.startswith("eval/") for t in expected_scalars(out, "step"))
        (w,) = wandb_runs(out)
        assert w["name"] == ("study/sft" if script.endswith("sft.py") else "reward")  # run_name, or the dir
        for tag, steps in expected_scalars(out, "step").items():
            got = sorted(r["step"] for r in w["history"] if tag in r)
            assert got == sorted(steps), (script, tag, got)


@pytest.mark.slow
def test_trackers_that_cannot_start_leave_the_run_alone(tmp_path):
    """No W&B credentials (online mode) and an MLflow URI with a password that nothing answers:
    two warnings, each naming its tracker; the run and metrics.jsonl complete; TensorBoard goes
    on; no secret in any output or file."""
    out = tmp_path / "sft"
    env = tracker_env(
        tmp_path,
        WANDB_MODE="online",
        HOME=str(tmp_path / "home"),  # no ~/.netrc
        MLFLOW_TRACKING_URI="http://fgrlhf-user:hunter2-secret@127.0.0.1:9",
        MLFLOW_TRACKING_PASSWORD="hunter2-secret",
    )
    tiny = TINY_SUPERVISED
    p = run("trainer/sft.py", [*tiny, "max_steps=4", "log_every=2", ALL, f"output_dir={out}"], env)
    said = p.stdout + p.stderr
    warnings = sorted(line for line in said.splitlines() if "warning: report_to" in line)
    assert len(warnings) == 2, said[-3000:]
    assert "report_to mlflow: cannot start" in warnings[0] and "report_to wandb: cannot start" in warnings[1]
    assert "hunter2" not in said and "fgrlhf-user" not in said
    for f in out.rglob("*"):
        if f.is_file():
            assert b"hunter2" not in f.read_bytes(), f
    assert [r["step"] for r in jsonl(out / "metrics.jsonl") if r.get("split") == "train"] == [2, 4]
    check_tensorboard(out, "step")


@pytest.mark.slow
def test_mlflow_server_with_basic_auth(tmp_path, monkeypatch):
    """A shared MLflow server behind MLflow's own basic-auth app (as a team runs one): a user's
    credentials from the environment (``MLFLOW_TRACKING_USERNAME`` / ``_PASSWORD``) get the
    metrics and params through; a wrong password is one warning naming MLflow and the refusal, the
    run completes, and the password is in no output or file."""
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs mlflow[auth] (the dev extra)")
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    from bench.bench_trackers import mlflow_server

    user, password = "trainer", "s3cret-trainer-pw"
    with mlflow_server(tmp_path / "server", admin=("admin", "s3cret-admin-pw")) as (uri, _):
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "admin")
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret-admin-pw")
        AuthServiceClient(uri).create_user(user, password)
        monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
        monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
        with pytest.raises(MlflowException, match="401"):  # the server does refuse anyone unnamed
            MlflowClient(uri).search_experiments()

        tiny = [*TINY_SUPERVISED, "max_steps=4", "log_every=2", "report_to=[mlflow]"]
        creds = dict(MLFLOW_TRACKING_URI=uri, MLFLOW_EXPERIMENT_NAME="team", MLFLOW_TRACKING_USERNAME=user)
        for pw, out in ((password, tmp_path / "sft"), ("wrong-password-123", tmp_path / "sft_refused")):
            env = tracker_env(tmp_path, **creds, MLFLOW_TRACKING_PASSWORD=pw)
            p = run("trainer/sft.py", [*tiny, f"output_dir={out}"], env)
            said = p.stdout + p.stderr
            warnings = [line for line in said.splitlines() if "warning: report_to" in line]
            if pw == password:
                assert not warnings, said[-3000:]
            else:
                assert len(warnings) == 1 and "report_to mlflow: cannot start" in warnings[0], said[-3000:]
                assert "401" in warnings[0] or "authenticat" in warnings[0].lower(), warnings[0]
            assert pw not in said and "s3cret" not in said
            for f in out.rglob("*"):
                if f.is_file():
                    assert pw.encode() not in f.read_bytes(), f
            assert [r["step"] for r in jsonl(out / "metrics.jsonl") if r.get("split") == "train"] == [2, 4]

        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
        c, r = mlflow_run(uri, "team")  # exactly one run: the refused one never started
        assert r.info.run_name == "sft" and r.data.params["max_steps"] == "4"
        expected = expected_scalars(tmp_path / "sft", "step")
        for tag, steps in expected.items():
            got = {m.step: m.value for m in c.get_metric_history(r.info.run_id, tag)}
            assert sorted(got) == sorted(steps) and all(same(got[s], v) for s, v in steps.items()), tag


@pytest.mark.slow
def test_eval_reports_its_result_and_a_rerun_continues_the_run(tmp_path):
    """``fgrlhf eval --report-to``: the summary's numbers at step = instructions judged, the
    annotations table and the files, in ``OUT/trackers``; a rerun over more instructions continues
    the same runs (one W&B id, one MLflow run in the local store) and sends only the new step."""
    from trainer.data.synthetic import SyntheticConfig, write_synthetic

    write_synthetic(tmp_path / "world", SyntheticConfig(n_pairs=20))
    for name, word in (("model", "g"), ("ref", "b")):
        rows = [{"instruction": f"p{i} p{i + 1}", "output": f"{word}{i} n{i}"} for i in range(5)]
        (tmp_path / f"{name}.json").write_text(json.dumps(rows))
    out, env = tmp_path / "eval", tracker_env(tmp_path)
    args = ["-m", "trainer.cli", "eval", str(tmp_path / "model.json"), str(tmp_path / "ref.json")]
    args += ["-o", str(out)]
    args += ["--judge", f"gold:{tmp_path / 'world'}", "--no-progress", "--report-to", "tensorboard", "wandb"]
    for limit in (3, 5):
        p = run(args[0], [*args[1:], "mlflow", "--limit", str(limit)], env)
        assert "warning" not in p.stdout + p.stderr, p.stdout + p.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_total"] == 5 and summary["win_rate"] == 100.0
    trk = out / "trackers"
    state = json.loads((trk / T.STATE_FILE).read_text())
    assert {k: v["last_step"] for k, v in state.items()} == {"tensorboard": 5, "wandb": 5, "mlflow": 5}
    ea = tensorboard(trk)
    assert [(e.step, e.value) for e in ea.Scalars("n_total")] == [(3, 3.0), (5, 5.0)]
    assert [e.step for e in ea.Scalars("win_rate")] == [3, 5]
    assert "annotations/text_summary" in ea.Tags()["tensors"]
    runs = wandb_runs(trk)
    assert len(runs) == 2 and runs[0]["id"] == runs[1]["id"] == state["wandb"]["run_id"]
    assert sorted(r["step"] for w in runs for r in w["history"] if "win_rate" in r) == [3, 5]
    assert runs[0]["config"]["judge"].startswith("gold:") and runs[0]["config"]["limit"] == 3
    assert {"outputs/summary.json", "outputs/annotations.json"} <= set(runs[1]["files"])
    c, r = mlflow_run(f"sqlite:///{trk / 'mlflow.db'}", "fgrlhf")
    assert r.info.run_name == "eval" and r.info.status == "FINISHED"
    assert [(m.step, m.value) for m in c.get_metric_history(r.info.run_id, "n_total")] == [(3, 3.0), (5, 5.0)]
    arts = mlflow_artifacts(c, r.info.run_id)
    assert {"summary.json", "annotations.json", "summary.txt"} <= set(arts)
    tables = [a for a in arts if a.startswith("annotations/")]
    assert tables == [f"annotations/step_{i:07d}.json" for i in (3, 5)]
    path = c.download_artifacts(r.info.run_id, "annotations/step_0000005.json", str(tmp_path))
    table = json.loads(Path(path).read_text())
    assert table["columns"][:3] == ["instruction", "reference (output_1)", "model (output_2)"]
    assert len(table["data"]) == 5
