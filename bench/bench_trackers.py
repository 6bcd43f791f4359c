"""What ``report_to=[tensorboard,wandb,mlflow]`` costs a tiny PPO run (the target: < 3% wall time)::

    python bench/bench_trackers.py [--iterations 40] [--repeats 5] [--threads N] [--pin no|yes|both]
                                   [--record]

A tiny ``trainer/ppo.py`` (one process, the tiny LLaMA of the tests, a reward model trained once
up front and shared, ``save_rollouts_every`` 10 so rollout tables go out too, plots and the HTML
page at the end) runs ``--repeats`` times with no tracker and as often with all three, alternating
(ABAB… then BABA…, so drift from other jobs on the machine hits both arms alike). All three are
real: TensorBoard event files, W&B offline (``WANDB_MODE=offline``: the run is written locally by
``wandb-core``, as it is before an upload), MLflow against a tracking server this script starts on
127.0.0.1 (``mlflow server``, sqlite store). Reported, median and spread over the repeats:

* ``loop``: the training path, the sum of the iterations' ``iteration_s`` (steps 1-6 of each
  iteration as ``metrics.jsonl`` records them: what logging must not slow down);
* ``process``: the whole command's wall time, start-up (imports, tracker start) and the trackers'
  final drain (``close``) included;
* ``cpu``: user + system CPU seconds of the command and the children it waited for (the tracker
  process included; not the MLflow server, nor W&B's ``wandb-core`` service);
* the trackers' share of the trainer process's own time, as the trainer says it at the end
  (``TrackerProcess.cost``: starting the tracker process, the trainer's calls, the CPU of the
  two threads that feed it, the wait for it to finish): their whole cost where the cores are
  independent and not all busy, since the rest of their work runs in their own process.

The cost column is the median over repeats of the paired ratio (each "all" run against the "none"
run next to it), which cancels slow drifts in the machine's load better than a ratio of medians,
with its 95% bootstrap interval: a claim such as "< 3%" holds where the interval's upper end is
below it (on a noisy VM, more ``--repeats`` narrow it).

``--pin yes`` models a GPU node, where the trainer's core is not shared with the trackers and the
MLflow server is another machine: the trainer process runs on one CPU (``sched_setaffinity``; one
thread unless ``--threads`` says otherwise) and everything the trackers run — the tracker process,
W&B's ``wandb-core``, the MLflow server — and this script itself on another (a watcher thread pins
each new process under the trainer, all its threads, within ~20 ms of its start; what those start
later inherits it). ``--pin no`` (the default) leaves the scheduler free; ``--pin both`` measures
both ways (the unpinned first) and prints, and records, a table for each.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TINY = [
    "progress=false", "sft_epochs=0", "synthetic.n_pairs=300", "rm_epochs=1", "rollout_batch_size=8",
    "micro_batch_size=4", "hidden_size=32", "intermediate_size=64", "missing_eos_penalty=0",
    "max_new_tokens=16", "eval_every=0", "checkpoint_every=0", "save_rollouts_every=10",
]  # fmt: skip
ALL = "report_to=[tensorboard,wandb,mlflow]"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(
    root: Path,
    timeout: float = 180.0,
    nice: int = 0,
    cpus: set[int] | None = None,
    admin: tuple[str, str] | None = None,
    host: str = "127.0.0.1",
    prefix: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``mlflow server`` on ``host`` (sqlite store and artefacts under ``root``; the artefacts
    proxied, ``mlflow-artifacts:/``, as a server on another machine typically serves them: clients upload
    them over HTTP, never into a path of their own; one worker, no job runner), yielded as
    ``(tracking URI, process)`` once it answers ``/health``; stopped (its whole process group) on
    exit. ``nice``: its CPU priority; ``cpus``: the CPUs it (and its workers) may run on (None:
    any); ``admin``: ``(user, password)`` serves MLflow's basic-auth app (``--app-name
    basic-auth``, users in a sqlite file under ``root``, READ for everyone by default), as a shared
    server is run; None: no authentication; ``prefix``: a command to run it under (``ip netns exec
    NS``: another host's network; ``host`` is then its address there).
    Also used by ``tests/test_trackers.py``.

    Raises:
        RuntimeError: it did not answer within ``timeout`` seconds (its log's tail says why).
    """
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    cmd = [
        str(Path(sys.executable).with_name("mlflow")), "server", "--host", host, "--port", str(port),
        "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    if admin is not None:
        ini = root / "basic_auth.ini"
        ini.write_text(
            "[mlflow]\ndefault_permission = READ\n"
            f"database_uri = sqlite:///{root / 'basic_auth.db'}\nadmin_username = {admin[0]}\n"
            f"admin_password = {admin[1]}\n"  # (older MLflow reads it here; newer also from the env)
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        )
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini), MLFLOW_AUTH_ADMIN_PASSWORD=admin[1])
        env["MLFLOW_FLASK_SERVER_SECRET_KEY"] = os.urandom(16).hex()  # (the auth app's CSRF key)
        cmd += ["--app-name", "basic-auth"]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    cmd = [*prefix, *cmd]
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
    )  # fmt: skip
    uri = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = (root / "server.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"mlflow server did not start ({proc.returncode}):\n{tail}")
            time.sleep(0.25)
        yield uri, proc
    finally:
        stop_process_group(proc)
        log.close()


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session``), SIGKILL
    after 10 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def descendants(pid: int) -> list[int]:
    """The processes under ``pid`` (children, theirs, ...), from ``/proc/<pid>/task/*/children``."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                out += kids
                todo += kids
    return out


def tree_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` and the processes under it now (from
    ``/proc``; a process that already ended is not counted)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for p in [pid, *descendants(pid)]:
        with contextlib.suppress(OSError, ValueError):
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rfind(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def pin_all_threads(pid: int, cpus: set[int]) -> None:
    """Every thread of process ``pid`` onto ``cpus`` (``sched_setaffinity`` is per thread)."""
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError):
            os.sched_setaffinity(int(task.name), cpus)


@contextlib.contextmanager
def pin_descendants(pid: int, cpus: set[int], every_s: float = 0.02) -> Iterator[None]:
    """While in the block, a thread moves every process under ``pid`` onto ``cpus`` as it appears
    (all its threads; each process once: what it starts afterwards inherits its CPUs)."""
    stop, done = threading.Event(), set()

    def watch() -> None:
        while not stop.wait(every_s):
            for child in descendants(pid):
                if child not in done:
                    pin_all_threads(child, cpus)
                    done.add(child)

    t = threading.Thread(target=watch, name="pin-trackers", daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()


def run_ppo(
    args: list[str], out: Path, env: dict, pin: tuple[set[int], set[int]] | None = None
) -> tuple[float, float, float]:
    """``(process wall seconds, Σ iteration_s, CPU seconds)`` of one ``trainer/ppo.py`` run
    (its output is kept in ``out/output.txt``); ``pin``: ``(the trainer's CPUs, the CPUs of
    every process it starts)`` (None: not pinned)."""
    import resource

    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "trainer/ppo.py", *args, f"output_dir={out}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=(lambda: os.sched_setaffinity(0, pin[0])) if pin else None,
    )  # fmt: skip
    with pin_descendants(p.pid, pin[1]) if pin else contextlib.nullcontext():
        stdout, stderr = p.communicate()
    p = subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime
    out.mkdir(parents=True, exist_ok=True)  # (a run refused before it made output_dir)
    (out / "output.txt").write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise RuntimeError(f"ppo.py failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    if "warning: report_to" in p.stdout + p.stderr:
        raise RuntimeError("a tracker failed:\n" + (p.stdout + p.stderr)[-3000:])
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return wall, sum(r["iteration_s"] for r in recs), cpu


COST_LINE = re.compile(
    r"report_to: the trackers took (?P<total>[0-9.]+) s of this process's time: (?P<start>[0-9.]+) s to "
    r"start theirs, (?P<calls>[0-9.]+) s in the trainer's calls, (?P<threads>[0-9.]+) s of CPU on the two "
    r"threads that feed it, (?P<wait>[0-9.]+) s waiting for it to finish"
)  # what TrackerProcess.close says


def trainer_side_s(output: str) -> dict[str, float] | None:
    """The seconds of the trainer process's own time the trackers took, from the line
    ``TrackerProcess.close`` says: ``{"total", "start", "calls", "threads", "wait"}``; None when
    there is no such line (no tracker)."""
    m = COST_LINE.search(output)
    return {k: float(v) for k, v in m.groupdict().items()} if m else None


def spread(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} ({min(xs):.2f}-{max(xs):.2f})"


def median_ci(xs: list[float], level: float = 0.95, resamples: int = 10_000) -> tuple[float, float]:
    """A percentile-bootstrap ``level`` interval of the median of ``xs`` (seeded: the same data give
    the same interval). With the paired costs, its upper end is what "< 3%" has to be below."""
    import random

    rng = random.Random(0)
    meds = sorted(statistics.median(rng.choices(xs, k=len(xs))) for _ in range(resamples))
    cut = int(resamples * (1 - level) / 2)
    return meds[cut], meds[resamples - 1 - cut]


def _spin(cpu: int) -> None:
    """Keep ``cpu`` busy until killed (the neighbour of :func:`core_interference`)."""
    os.sched_setaffinity(0, {cpu})
    while True:
        pass


def core_interference(repeats: int = 3) -> float | None:
    """How much slower one CPU's single-threaded work gets while another CPU is busy (the median
    ratio - 1 of a fixed Python loop's time, neighbour busy vs idle; None with one CPU). About 0 on
    independent cores; a 2-vCPU VM whose vCPUs are one host core's hyperthreads, or an
    oversubscribed host, shows tens of percent — there the trackers' CPU time slows the trainer
    wherever it runs, and no placement can keep it off the training path."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpus[0]})

    def work() -> float:
        t, acc = time.perf_counter(), 0
        for i in range(3_000_000):
            acc += i * i % 7
        return time.perf_counter() - t

    try:
        idle = statistics.median(work() for _ in range(repeats))
        ctx = __import__("multiprocessing").get_context("fork")
        spinner = ctx.Process(target=_spin, args=(cpus[1],), daemon=True)
        spinner.start()
        time.sleep(0.3)
        busy = statistics.median(work() for _ in range(repeats))
        spinner.kill()
        spinner.join()
    finally:
        os.sched_setaffinity(0, before)
    return busy / idle - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument(
        "--threads", type=int, default=0, help="the runs' num_threads (0: the trainer's default, cores)"
    )
    ap.add_argument(
        "--pin",
        choices=("no", "yes", "both"),
        default="no",
        help="yes: the trainer on one CPU, the trackers (and the MLflow server) on another, as on a GPU "
        "node; both: measure unpinned, then pinned",
    )
    ap.add_argument("--record", action="store_true", help="append the table(s) to bench/RESULTS.md")
    a = ap.parse_args()
    a.interference = core_interference()
    if a.interference is not None:
        print(f"# one CPU's work while another is busy: {a.interference:+.0%} (0 on independent cores)")

    work = Path(tempfile.mkdtemp(prefix="bench_trackers_"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_"))}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_DIR=str(work / "wandb"), WANDB_SILENT="true")
    (work / "wandb").mkdir()
    # the reward model (and the synthetic world) once, shared by every timed run
    run_ppo([*TINY, "iterations=1"], work / "seed", env)
    base = [*TINY, f"iterations={a.iterations}", f"reward_model={work / 'seed' / 'rm' / 'final'}"]
    for pinned in {"no": [False], "yes": [True], "both": [False, True]}[a.pin]:
        measure(a, work / ("pinned" if pinned else "unpinned"), base, env, pinned)


def measure(a: argparse.Namespace, work: Path, base: list[str], env: dict, pinned: bool) -> None:
    """The interleaved repeats of both arms, their table printed (and recorded with ``--record``)."""
    pin, threads, mode = None, a.threads, "unpinned"
    if pinned:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs")
        pin = ({cpus[0]}, set(cpus[1:]))  # the trainer; the trackers, the server and this script
        threads = a.threads or 1  # (the default, as many threads as cores, would share one core)
        mode = f"pinned: trainer on CPU {cpus[0]}, trackers + MLflow server on {','.join(map(str, cpus[1:]))}"
        os.sched_setaffinity(0, pin[1])
    work.mkdir(parents=True)
    args = [*base, f"num_threads={threads}"]
    times: dict[str, list[tuple[float, float, float]]] = {"none": [], "all": []}
    print(f"# {mode}", flush=True)
    # the server stands in for one on another machine: at nice +10 it takes no core the runs need
    # (pinned: it has the trackers' CPU only)
    server_cpu: list[float] = []  # the MLflow server's CPU seconds during each "all" run
    with mlflow_server(work / "mlflow", nice=10, cpus=pin[1] if pin else None) as (uri, server):
        env_all = {**env, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_NAME": "bench"}
        for i in range(a.repeats):
            for arm in ("none", "all") if i % 2 == 0 else ("all", "none"):
                extra, e = ([ALL], env_all) if arm == "all" else ([], env)
                s0 = tree_cpu_s(server.pid)
                wall, loop, cpu = run_ppo(args + extra, work / f"{arm}{i}", e, pin)
                times[arm].append((wall, loop, cpu))
                if arm == "all":
                    server_cpu.append(tree_cpu_s(server.pid) - s0)
                load = os.getloadavg()[0]
                print(
                    f"repeat {i} {arm:>4}: process {wall:.2f} s, loop {loop:.2f} s, cpu {cpu:.2f} s "
                    f"(load {load:.1f})",
                    flush=True,
                )
    if pin:
        os.sched_setaffinity(0, pin[0] | pin[1])

    said = [trainer_side_s((work / f"all{i}" / "output.txt").read_text()) for i in range(a.repeats)]
    own = [c for c in said if c is not None]
    own_pct = [100 * c["total"] / t[0] for c, t in zip(said, times["all"]) if c is not None]
    own_line = "the trainer said nothing of the trackers' time"
    if own:
        parts = ", ".join(
            f"{k} {statistics.median(c[k] for c in own):.3f}" for k in ("start", "calls", "threads", "wait")
        )
        own_line = (
            f"the trackers' share of the trainer process's own time (measured in the trainer): "
            f"{statistics.median(own_pct):.2f}% of the run ({min(own_pct):.2f}-{max(own_pct):.2f}%), median "
            f"{statistics.median(c['total'] for c in own):.3f} s (medians of its parts, s: {parts})"
        )
    own_line += (
        f"; the MLflow server (on this machine here, another one in a real deployment) used a median "
        f"{statistics.median(server_cpu):.2f} CPU-s per run with the trackers"
    )
    rows = []
    for j, what in enumerate(("process", "loop", "cpu")):
        none = [t[j] for t in times["none"]]
        alls = [t[j] for t in times["all"]]
        paired = [100 * (a / n - 1) for a, n in zip(alls, none)]
        lo, hi = median_ci(paired)
        cost = f"{statistics.median(paired):+.1f}% [{lo:+.1f}, {hi:+.1f}]"
        rows.append([what, spread(none), spread(alls), cost, spread(paired)])
    header = [
        "seconds (median, min-max)", "report_to=[]", "report_to=[tensorboard,wandb,mlflow]",
        "cost: median paired [95% CI]", "paired % (min-max)",
    ]  # fmt: skip
    width = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, width)))
    print(own_line)
    if a.record:
        from bench.common import record

        title = "Tracker overhead: a tiny PPO run with report_to=[tensorboard,wandb,mlflow] vs none"
        record(
            f"{title} ({'pinned, as on a GPU node' if pin else 'unpinned'})",
            header,
            rows,
            notes=(
                f"{a.iterations} iterations x {a.repeats} repeats per arm, interleaved; one process, "
                f"num_threads={threads or 'default (cores)'}; {mode}; one CPU's work while another is "
                f"busy: {'n/a' if a.interference is None else f'{a.interference:+.0%}'}; "
                "W&B offline, MLflow to a local `mlflow server` at nice +10, TensorBoard event files; "
                "loop = sum of iteration_s, process = the command's wall time, cpu = its user+sys "
                f"seconds with the tracker process; {own_line}"
            ),
        )


if __name__ == "__main__":
    main()
