"""Experiment trackers — TensorBoard, Weights & Biases, MLflow — fed by the one metrics logger,
off the training path.

``report_to=[tensorboard,wandb,mlflow]`` (any of them; every trainer has the key) makes
:class:`~trainer.infra.metrics.MetricsLog` hand each record it writes to ``metrics.jsonl`` (always
written: the source of truth) to the trackers as well, through the one fan-out here. Each tracker
gets, on rank 0 only:

* every numeric field of every record at its step (``split`` records as ``train/loss``, ...);
* the resolved config as hyper-parameters, the run's git commit (when the code is a git checkout)
  and its command line;
* tables of sample rollouts (PPO, as often as ``rollouts.jsonl``: ``save_rollouts_every``);
* at the end, the summary's figures and text, and the plots (``output_dir/plots/*.png``) and the
  HTML page (``report.html``) as artefacts where the tracker stores files.

Nothing here runs on the training path. The trainer's calls only enqueue into a bounded queue
(a full queue drops the record, counted and warned about once; ``metrics.jsonl`` still has it)
that one thread pipes to a child process (:class:`TrackerProcess`), where :class:`Trackers`
gives each tracker its own thread and queue. The trackers' imports (seconds of CPU), start-up and
calls thus take neither the trainer's GIL nor its time (measured: ``bench/bench_trackers.py``),
and a tracker library that hangs or crashes cannot take the run with it. ``close`` drains the
queues within a time limit (:data:`CLOSE_TIMEOUT_S`) and abandons a tracker still busy then.

A tracker that fails — not installed, no credentials, a server that cannot be reached or dies
mid-run, an exception in any call — never stops the training: one warning naming the tracker and
the reason, then that tracker is dropped (the others go on; ``metrics.jsonl`` has everything). A
requested tracker whose package is missing is reported before training starts, as such a warning
naming the extra to install (``pip install 'fgrlhf[wandb]'``), not as an error: a long job is
not lost over a dashboard.

Resume: ``output_dir/trackers.json`` keeps each tracker's run id and the last step it was sent,
so a resumed run continues the same W&B run (``resume="allow"``), the same MLflow run and the same
TensorBoard directory (``purge_step`` past the last step sent), and no step reaches a tracker
twice: only fields not yet sent at a step are forwarded. The records ``metrics.jsonl`` drops on
resume (logged after the checkpoint) and logs again are therefore not re-sent: a tracker keeps
the values it first received for those steps. A resume also catches each tracker up on the
records after the last step it was sent, up to the checkpoint (its server was down or
unreachable, the run was killed before they went out, it was added on resume):
:meth:`Trackers.catch_up`, read from ``metrics.jsonl`` in the tracker process. (Records a full
queue dropped mid-run lie before that step: they are not caught up.) Secrets come only from the
environment (``WANDB_API_KEY``, ``MLFLOW_TRACKING_URI`` / ``MLFLOW_TRACKING_USERNAME`` /
``..._PASSWORD`` / ``..._TOKEN``); they are never written to a file, and every message is scrubbed
of them.

Where each tracker writes, unless its environment says otherwise: TensorBoard ``output_dir/tb``
(``tensorboard --logdir output_dir``); W&B the project ``$WANDB_PROJECT`` (default ``fgrlhf``),
its local files under ``$WANDB_DIR`` (default ``output_dir``); MLflow ``$MLFLOW_TRACKING_URI``
(default ``sqlite:///output_dir/mlflow.db`` with artefacts in ``output_dir/mlartifacts``), the
experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``fgrlhf``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import os
import pickle
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CLOSE_TIMEOUT_S",
    "STATE_FILE",
    "TRACKERS",
    "RunInfo",
    "Tracker",
    "Trackers",
    "add_report_to",
    "close_all",
    "command_line",
    "flat_numbers",
    "git_commit",
    "redact",
    "report_once",
]

TRACKERS = ("tensorboard", "wandb", "mlflow")  # the values report_to accepts
STATE_FILE = "trackers.json"  # output_dir/trackers.json: run ids and the last step sent
QUEUE_SIZE = 4096  # items per tracker's queue (a record, a table, the end)
CLOSE_TIMEOUT_S = 60.0  # how long close() waits for the trackers to drain, in all
NICE = 10  # the tracker process's CPU priority, below the training's

# package to import and pip extra of each tracker
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


# --------------------------------------------------------------------------------------------
# Secrets out of every message
# --------------------------------------------------------------------------------------------
_SECRET_ENV = re.compile(r"(API_KEY|TOKEN|PASSWORD|SECRET|CREDENTIALS?)$", re.IGNORECASE)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")


def redact(text: str) -> str:
    """``text`` without secrets: the values of environment variables whose names end in
    ``API_KEY``, ``TOKEN``, ``PASSWORD``, ``SECRET`` or ``CREDENTIALS`` (``WANDB_API_KEY``,
    ``MLFLOW_TRACKING_PASSWORD``, ...) become ``***``, and so does the ``user:password@`` part
    of any URL."""
    for name, value in os.environ.items():
        if len(value) >= 4 and _SECRET_ENV.search(name) and value in text:
            text = text.replace(value, "***")
    return _URL_USERINFO.sub(r"\g<scheme>***@", text)


def _reason(e: BaseException) -> str:
    """``"Type: first line of the message"``, redacted (a warning's reason)."""
    lines = [line for line in str(e).splitlines() if line.strip()]
    return redact(f"{type(e).__name__}: {lines[0][:300] if lines else ''}".rstrip(": "))


# --------------------------------------------------------------------------------------------
# What a tracker is told about the run
# --------------------------------------------------------------------------------------------
@functools.cache
def git_commit(root: str | None = None) -> str | None:
    """The commit checked out where this code lives (``git rev-parse HEAD``, with ``+dirty``
    when tracked files differ from it); None outside a git checkout or without ``git``."""
    root = root or str(Path(__file__).resolve().parents[2])
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", root, "diff", "--quiet", "HEAD", "--"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")


def command_line(argv: list[str] | None = None) -> str:
    """The process's command line as a shell would take it (redacted)."""
    argv = sys.argv if argv is None else argv
    return redact(shlex.join([Path(sys.executable).name, *argv]))


def _offer(q: queue.Queue, item: tuple) -> bool:
    """Put ``item`` without waiting: False when the queue is full (the caller drops it: a
    tracker never makes training wait)."""
    try:
        q.put_nowait(item)
    except queue.Full:
        return False
    return True


@dataclass
class RunInfo:
    """What every tracker is told when it starts.

    Attributes:
        trainer: ``reward``, ``sft``, ``ppo`` (``eval``, ``demo`` for the one-shot jobs).
        out_dir: the run's ``output_dir``.
        config: the resolved config (nested dicts, as its YAML).
        step_key: the field of a record that holds its step (``step`` / ``iteration``).
        command: the command line (redacted).
        world_size: processes of the run.
        resuming: the run resumes from a checkpoint (a tracker continues its kept run).
        name: the run's name in W&B and MLflow (``run_name``); empty: ``out_dir``'s last part.
        resumable: a trainer's run, which a resume continues (and catches the trackers up:
            :meth:`Trackers.catch_up`); the warnings about a tracker left behind say so.
    """

    trainer: str
    out_dir: Path
    config: dict
    step_key: str = "step"
    command: str = field(default_factory=command_line)
    world_size: int = 1
    resuming: bool = False
    name: str = ""
    resumable: bool = False

    @property
    def run_name(self) -> str:
        """The name the trackers show: ``name``, or ``out_dir``'s last part."""
        return self.name or self.out_dir.name

    @property
    def catch_up_hint(self) -> str:
        """The end of a warning about records a tracker did not get: where they are, and how it
        gets them later."""
        later = "; a resume of the run sends them" if self.resumable else ""
        return f"(metrics.jsonl has every record{later})"

    @property
    def git_commit(self) -> str | None:
        """The code's git commit (None outside a checkout); computed once, off the main thread."""
        return git_commit()

    def flat_config(self) -> dict[str, Any]:
        """The config flattened to dotted keys (``synthetic.n_pairs``); lists as their JSON."""
        out: dict[str, Any] = {}

        def walk(d: dict, prefix: str) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
                else:
                    out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v

        walk(self.config, "")
        return out


def numeric_fields(record: dict, step_key: str) -> dict[str, float]:
    """The numbers of a ``metrics.jsonl`` record a tracker plots: every int/float field but the
    step (bools and None skipped), named ``<split>/<field>`` when the record has a ``split``."""
    prefix = f"{record['split']}/" if isinstance(record.get("split"), str) else ""
    return {
        prefix + k: float(v)
        for k, v in record.items()
        if k != step_key and isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def flat_numbers(obj: Any, prefix: str = "") -> dict[str, float]:
    """Every number in nested dicts, by dotted name (``table1.fg_ppo.mean``); bools, None,
    strings and lists are left out (a one-shot job's summary as tracker metrics)."""
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flat_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        out[prefix.rstrip(".")] = float(obj)
    return out


def _files(paths: Iterable[Path]) -> list[tuple[Path, str]]:
    """``(file, folder in the tracker's store)`` of ``paths``: a directory's ``*.png`` files go
    under its name (``plots/reward.png``), a file at the top; missing paths are skipped."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [(f, p.name) for f in sorted(p.glob("*.png"))]
        elif p.is_file():
            out.append((p, ""))
    return out


# --------------------------------------------------------------------------------------------
# The trackers: one adapter each, every call made on that tracker's own thread
# --------------------------------------------------------------------------------------------
class Tracker:
    """One tracker's adapter. :class:`Trackers` calls these on the tracker's thread, in order;
    any exception drops the tracker (with a warning).

    ``start`` receives the state kept in ``trackers.json`` for this tracker (``{}`` for a new
    run) and returns the state to keep (its run id: never a secret)."""

    name = ""
    # > 0: records are taken together at most this often: one log_many (one request for MLflow, one
    # write for TensorBoard; W&B still logs each row), one flush and one rewrite of trackers.json per
    # batch instead of per record (a tiny run logs 10 records a second)
    interval_s = 0.0
    # what the tracker imports, done first and one tracker at a time: two threads importing the
    # same module (numpy under torch and wandb) can see it half-initialised
    modules: tuple[str, ...] = ()

    def load(self) -> None:
        """Import what the tracker needs (:attr:`modules`), before :meth:`start`."""
        for module in self.modules:
            importlib.import_module(module)

    def start(self, info: RunInfo, state: dict) -> dict:
        """Open (or resume) the tracker's run; log the config, git commit and command line."""
        raise NotImplementedError

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        """Log ``values`` (name → number) at ``step``."""
        raise NotImplementedError

    def log_many(self, entries: list[tuple[int, dict[str, float], float]]) -> None:
        """Log several ``(step, values, wall_time)`` (in order); one request where the tracker can."""
        for step, values, wall in entries:
            self.log(step, values, wall)

    def table(self, step: int, name: str, columns: list[str], rows: list[list]) -> None:
        """Log the table ``name`` at ``step``."""
        raise NotImplementedError

    def finish(self, step: int, summary: dict[str, float], text: str, files: list[tuple[Path, str]]) -> None:
        """The end of the run: the summary's figures and text, and ``files`` (``(file, folder)``)."""
        raise NotImplementedError

    def flush(self) -> None:
        """Make what was logged durable (before the state file says it was sent)."""

    def close(self, exit_code: int) -> None:
        """Close the run (``exit_code`` 0: finished; 75: pre-empted; else failed)."""

    def where(self) -> str:
        """Where the run can be seen, for the start message ('' to say nothing)."""
        return ""


class TensorBoardTracker(Tracker):
    """TensorBoard event files in ``output_dir/tb``, written with the ``tensorboard`` package's
    own writer and protos (no torch, no TensorFlow: a fifth of ``torch.utils.tensorboard``'s
    import time): scalars, the config under HPARAMS and TEXT, rollout tables as markdown text,
    the plots as images (their PNG bytes as they are), the summary as text. A resumed run writes
    a session start at the step after the last one sent (``purge_step``: TensorBoard discards
    events an earlier process wrote past it); a fresh one at step 0 (events an earlier, unresumed
    run left there are discarded)."""

    name = "tensorboard"
    interval_s = 1.0
    modules = (
        "tensorboard.summary.writer.event_file_writer", "tensorboard.compat.proto.event_pb2",
        "tensorboard.compat.proto.summary_pb2", "tensorboard.compat.proto.tensor_pb2",
        "tensorboard.plugins.text.plugin_data_pb2", "tensorboard.plugins.hparams.plugin_data_pb2",
    )  # fmt: skip

    def start(self, info: RunInfo, state: dict) -> dict:
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog  # optional: [track] extra
        from tensorboard.summary.writer.event_file_writer import EventFileWriter  # optional: [track] extra

        self.dir = info.out_dir / "tb"
        self.w = EventFileWriter(str(self.dir), max_queue_size=100, flush_secs=30)
        last = state.get("last_step")
        purge = last + 1 if last is not None else (None if info.resuming else 0)
        if purge is not None:  # what torch's SummaryWriter(purge_step=...) writes
            self.w.add_event(
                Event(wall_time=time.time(), step=purge, session_log=SessionLog(status=SessionLog.START))
            )
        if not state:  # a new run: its description once
            flat = info.flat_config()
            self._add(0, self._hparams({**flat, "world_size": info.world_size}))
            self._add(0, self._text("run/config", "\n".join(f"    {k}: {v}" for k, v in flat.items())))
            self._add(0, self._text("run/command", f"    {info.command}"))
            if info.git_commit:
                self._add(0, self._text("run/git_commit", info.git_commit))
        return {}

    def _add(self, step: int, summary: Any, wall_time: float | None = None) -> None:
        from tensorboard.compat.proto.event_pb2 import Event  # optional: [track] extra

        self.w.add_event(Event(wall_time=wall_time or time.time(), step=step, summary=summary))

    @staticmethod
    def _text(tag: str, text: str) -> Any:
        """A text-plugin summary (markdown), as ``torch.utils.tensorboard.summary.text`` makes it."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata  # optional: [track] extra
        from tensorboard.compat.proto.tensor_pb2 import TensorProto  # optional: [track] extra
        from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto  # optional: [track] extra
        from tensorboard.plugins.text.plugin_data_pb2 import TextPluginData  # optional: [track] extra

        meta = SummaryMetadata(
            plugin_data=SummaryMetadata.PluginData(
                plugin_name="text", content=TextPluginData(version=0).SerializeToString()
            )
        )
        tensor = TensorProto(
            dtype="DT_STRING",
            string_val=[text.encode("utf-8")],
            tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
        )
        return Summary(value=[Summary.Value(tag=f"{tag}/text_summary", metadata=meta, tensor=tensor)])

    @staticmethod
    def _hparams(config: dict[str, Any]) -> Any:
        """The HPARAMS plugin's session start (one value per config key; lists and None as text)."""
        from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata  # optional: [track] extra
        from tensorboard.plugins.hparams import metadata  # optional: [track] extra
        from tensorboard.plugins.hparams.plugin_data_pb2 import (  # optional: [track] extra
            HParamsPluginData,
            SessionStartInfo,
        )

        ssi = SessionStartInfo()
        for k, v in config.items():
            if isinstance(v, bool):
                ssi.hparams[k].bool_value = v
            elif isinstance(v, (int, float)):
                ssi.hparams[k].number_value = v
            else:
                ssi.hparams[k].string_value = str(v)
        content = HParamsPluginData(session_start_info=ssi, version=metadata.PLUGIN_DATA_VERSION)
        meta = SummaryMetadata(
            plugin_data=SummaryMetadata.PluginData(
                plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()
            )
        )
        return Summary(value=[Summary.Value(tag=metadata.SESSION_START_INFO_TAG, metadata=meta)])

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary  # optional: [track] extra

        summary = Summary(value=[Summary.Value(tag=k, simple_value=v) for k, v in values.items()])
        self._add(step, summary, wall_time)

    def table(self, step: int, name: str, columns: list[str], rows: list[list]) -> None:
        def cell(v: Any) -> str:
            s = "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)
            return s.replace("|", "\\|").replace("\n", " ")

        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
        self._add(step, self._text(name, "\n".join(lines)))

    def finish(self, step: int, summary: dict[str, float], text: str, files: list[tuple[Path, str]]) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary  # optional: [track] extra

        if text:
            self._add(step, self._text("summary", "\n".join("    " + line for line in text.splitlines())))
        if summary:
            rows = "\n".join(f"| {k} | {v:.6g} |" for k, v in summary.items())
            self._add(step, self._text("summary/figures", "| figure | value |\n|---|---|\n" + rows))
        for path, folder in files:
            png = path.read_bytes() if path.suffix == ".png" else b""
            if png[:8] != b"\x89PNG\r\n\x1a\n":
                continue
            width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
            colour = {0: 1, 2: 3, 4: 2, 6: 4}.get(png[25], 4)  # PNG colour type → channels
            image = Summary.Image(height=height, width=width, colorspace=colour, encoded_image_string=png)
            self._add(
                step, Summary(value=[Summary.Value(tag=f"{folder or 'files'}/{path.stem}", image=image)])
            )

    def flush(self) -> None:
        self.w.flush()

    def close(self, exit_code: int) -> None:
        self.w.close()

    def where(self) -> str:
        return f"{self.dir} (tensorboard --logdir {self.dir.parent})"


class WandbTracker(Tracker):
    """A Weights & Biases run: ``run.log`` with the trainer's step as the x-axis of every metric
    (``define_metric``: a resumed run's rows line up whatever W&B's own ``_step``), the config
    (plus ``git_commit`` and ``command``), ``wandb.Table`` rollouts, the summary figures in the
    run summary, plots as images and plots + page as run files. Online it needs credentials
    (``WANDB_API_KEY`` or ``wandb login``): it never prompts. ``WANDB_MODE=offline`` writes the
    run locally (``wandb sync`` uploads it later)."""

    name = "wandb"
    interval_s = 1.0
    modules = ("wandb", "PIL.Image")

    def start(self, info: RunInfo, state: dict) -> dict:
        import wandb  # optional: [track] extra

        self.wandb, self.step_key = wandb, info.step_key
        mode = os.environ.get("WANDB_MODE", "online").lower()
        if mode not in ("offline", "disabled", "dryrun"):
            wandb.login(prompt=False)  # no prompt from a training job: no credentials is an error
        config = {**info.config, "command": info.command, "world_size": info.world_size}
        if info.git_commit:
            config["git_commit"] = info.git_commit
        self.run = wandb.init(
            project=None if os.environ.get("WANDB_PROJECT") else "fgrlhf",
            name=info.run_name,
            job_type=info.trainer,  # (the group: $WANDB_RUN_GROUP, which fgrlhf demo sets)
            dir=os.environ.get("WANDB_DIR") or str(info.out_dir),
            id=state.get("run_id"),
            resume="allow",
            config=config,
            reinit="create_new",
            settings=wandb.Settings(console="off", silent=True),
        )
        self.run.config.update(config, allow_val_change=True)  # a resume's allowed changes
        self.run.define_metric(info.step_key)
        self.run.define_metric("*", step_metric=info.step_key)
        return {"run_id": self.run.id}

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self.run.log({self.step_key: step, **values})

    def table(self, step: int, name: str, columns: list[str], rows: list[list]) -> None:
        self.run.log({self.step_key: step, name: self.wandb.Table(columns=columns, data=rows)})

    def finish(self, step: int, summary: dict[str, float], text: str, files: list[tuple[Path, str]]) -> None:
        self.run.summary.update({f"summary/{k}": v for k, v in summary.items()})
        images = {f"{folder}/{p.stem}": self.wandb.Image(str(p)) for p, folder in files if p.suffix == ".png"}
        if images:
            self.run.log({self.step_key: step, **images})
        out, saved = Path(self.run.dir) / "outputs", []  # copies: a run's files outlive output_dir
        for p, folder in files:
            (out / folder).mkdir(parents=True, exist_ok=True)
            saved.append(Path(shutil.copy2(p, out / folder / p.name)))
        if text:
            out.mkdir(parents=True, exist_ok=True)
            (out / "summary.txt").write_text(text + "\n", encoding="utf-8")
            saved.append(out / "summary.txt")
        for f in saved:
            self.run.save(str(f), base_path=self.run.dir, policy="now")

    def close(self, exit_code: int) -> None:
        self.run.finish(exit_code=exit_code)

    def where(self) -> str:
        if self.run.offline:
            return f"run {self.run.id}, offline in {Path(self.run.dir).parent} (wandb sync uploads it)"
        return f"run {self.run.id} at {self.run.url}"


class MLflowTracker(Tracker):
    """An MLflow run (``MlflowClient``, no global state): metrics per step (``log_batch``), the
    config as params (a resume adds keys that changed as ``resumed.<key>`` tags: params are
    immutable), the git commit and command as the standard ``mlflow.source.*`` tags, rollout
    tables as JSON artefacts in ``mlflow.log_table``'s shape, the summary figures as
    ``summary/*`` metrics, ``summary.txt``, the plots and ``report.html`` as artefacts."""

    name = "mlflow"
    modules = ("mlflow.tracking", "mlflow.entities", "mlflow.exceptions")
    interval_s = 5.0  # one request per 5 s at most: a tiny run's iterations take < 1 s each

    def load(self) -> None:
        _mlflow_package_lazily()
        super().load()

    def start(self, info: RunInfo, state: dict) -> dict:
        from mlflow.entities import Param  # optional: [track] extra
        from mlflow.exceptions import MlflowException  # optional: [track] extra
        from mlflow.tracking import MlflowClient  # optional: [track] extra

        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # we say where, redacted
        self.local = not os.environ.get("MLFLOW_TRACKING_URI")
        uri = f"sqlite:///{(info.out_dir / 'mlflow.db').resolve()}" if self.local else None
        self.c = MlflowClient(tracking_uri=uri)
        self.uri = redact(self.c.tracking_uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "fgrlhf"
        self.run_id = None
        if state.get("run_id"):
            try:
                self.c.update_run(state["run_id"], status="RUNNING")
                self.run_id = state["run_id"]
            except MlflowException as e:  # another tracking server than the first run's: a new run
                if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
        params = {k: str(v)[:500] for k, v in info.flat_config().items()}
        params["world_size"] = str(info.world_size)
        if self.run_id is None:
            exp = self.c.get_experiment_by_name(name)
            if exp is not None:
                eid = exp.experiment_id
            else:
                art = _artifact_location(self.c.tracking_uri)
                eid = self.c.create_experiment(name, artifact_location=art)
            tags = {
                "mlflow.source.name": info.command,
                "mlflow.source.type": "LOCAL",
                "trainer": info.trainer,
            }
            if info.git_commit:  # (the UI links the bare commit; git_commit says +dirty too)
                tags["mlflow.source.git.commit"] = info.git_commit.removesuffix("+dirty")
                tags["git_commit"] = info.git_commit
            self.run_id = self.c.create_run(eid, run_name=info.run_name, tags=tags).info.run_id
            old, progress = {}, {}
        else:
            run = self.c.get_run(self.run_id)
            old, progress = run.data.params, _stored_progress(run)
            self.c.set_tag(self.run_id, "resumed.command", info.command)
        new = [Param(k, v) for k, v in params.items() if k not in old]
        for i in range(0, len(new), 100):  # the REST API's limit per request
            self.c.log_batch(self.run_id, params=new[i : i + 100])
        for k, v in params.items():
            if k in old and old[k] != v:
                self.c.set_tag(self.run_id, f"resumed.{k}", v)
        return {"run_id": self.run_id, **progress}

    def log(self, step: int, values: dict[str, float], wall_time: float) -> None:
        self.log_many([(step, values, wall_time)])

    def log_many(self, entries: list[tuple[int, dict[str, float], float]]) -> None:
        from mlflow.entities import Metric  # optional: [track] extra

        # (NaN is kept as NaN; MLflow stores ±inf as ±1.8e308)
        metrics = [
            Metric(k, v, int(wall * 1000), step) for step, values, wall in entries for k, v in values.items()
        ]
        for i in range(0, len(metrics), 1000):  # the REST API's limit per request
            self.c.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def table(self, step: int, name: str, columns: list[str], rows: list[list]) -> None:
        self.c.log_dict(self.run_id, {"columns": columns, "data": rows}, f"{name}/step_{step:07d}.json")

    def finish(self, step: int, summary: dict[str, float], text: str, files: list[tuple[Path, str]]) -> None:
        if summary:
            self.log(step, {f"summary/{k}": v for k, v in summary.items()}, time.time())
        if text:
            self.c.log_text(self.run_id, text + "\n", "summary.txt")
        for p, folder in files:
            self.c.log_artifact(self.run_id, str(p), folder or None)

    def close(self, exit_code: int) -> None:
        status = "FINISHED" if exit_code == 0 else "KILLED" if exit_code == 75 else "FAILED"
        self.c.set_terminated(self.run_id, status)

    def where(self) -> str:
        ui = f" (mlflow ui --backend-store-uri {self.uri})" if self.uri.startswith("sqlite:") else ""
        return f"run {self.run_id} at {self.uri}{ui}"


def _stored_progress(run: Any) -> dict:
    """The last step an MLflow run holds metrics at, and their names (``{"last_step",
    "sent_at_last_step"}``; ``{}`` for none), from the latest value of each metric the server keeps
    (the end-of-run ``summary/*`` figures aside)."""
    latest = [m for m in run.data.to_proto().metrics if not m.key.startswith("summary/")]
    if not latest:
        return {}
    top = max(m.step for m in latest)
    return {"last_step": top, "sent_at_last_step": sorted({m.key for m in latest if m.step == top})}


_MLFLOW_INIT_LOCK = threading.RLock()


def _mlflow_package_lazily() -> None:
    """Make ``mlflow`` importable without running its ``__init__`` now (no-op if already
    imported). That ``__init__`` imports the whole fluent API (GenAI, evaluation, the model
    flavours' loaders, pandas, FastAPI: about 1.8 CPU-seconds here) and starts MLflow's
    telemetry client; :class:`MlflowClient` and the entities need none of it. The package module is
    created bare, with ``__version__`` set; a submodule it lacks is imported on first access, and
    any other name (something of the fluent API) runs the real ``__init__`` then, once, in the same
    module: the package behaves as if fully imported, only later and only when needed. Another
    thread asking meanwhile waits for it; if it fails, the error is raised and the next access
    tries again."""
    if "mlflow" in sys.modules:
        return
    spec = importlib.util.find_spec("mlflow")
    if spec is None or spec.loader is None or not spec.submodule_search_locations:
        return  # (not installed: the import below says so)
    module = importlib.util.module_from_spec(spec)
    state = {"init": "no"}  # no -> running -> done

    def __getattr__(name: str) -> Any:  # (a module's own __getattr__: names it does not have yet)
        if name.startswith("__") and name != "__all__":
            raise AttributeError(f"module 'mlflow' has no attribute {name!r}")
        if importlib.util.find_spec(f"mlflow.{name}") is not None:
            return importlib.import_module(f"mlflow.{name}")
        with _MLFLOW_INIT_LOCK:  # (re-entrant: the __init__ itself may ask for a name it lacks yet)
            if state["init"] == "no":
                state["init"] = "running"
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    state["init"] = "no"
                    raise
                state["init"] = "done"
        if name in module.__dict__:
            return module.__dict__[name]
        raise AttributeError(f"module 'mlflow' has no attribute {name!r}")

    sys.modules["mlflow"] = module
    try:
        version = importlib.import_module("mlflow.version")
        module.__version__ = version.VERSION
    except BaseException:
        del sys.modules["mlflow"]
        raise
    module.__getattr__ = __getattr__


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artefacts: beside a SQLite store's file
    (``mlartifacts/``, as ``mlflow server`` does, rather than MLflow's client default of
    ``./mlruns`` under whatever directory the job started in); the server's choice otherwise."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    return None


TRACKER_CLASSES: dict[str, type[Tracker]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MLflowTracker,
}


# --------------------------------------------------------------------------------------------
# The fan-out
# --------------------------------------------------------------------------------------------
_CLOSE = object()  # the queue's last item
_COMMIT = object()  # in a catch-up: send what is gathered, then record it sent
CATCH_UP_CHUNK = 500  # records a catch-up sends between two records of what was sent
_IMPORT_LOCK = threading.Lock()


class _Worker:
    """One tracker's thread and queue; drops the tracker (one warning) on its first failure.

    The thread takes whatever is queued at once (waiting first until ``interval_s`` has passed
    since its last send, for a tracker that batches: all three; ``hurry`` and ``close`` end the
    wait), sends consecutive records in one :meth:`Tracker.log_many`, then makes them durable
    (``flush``) and records in ``state`` the last step sent and the fields sent at it, so a resumed
    run sends nothing twice. (A batch counts as sent once it all went out, a catch-up chunk by
    chunk: if the tracker fails, or the process is killed, halfway through one, a resume sends its
    first records again. W&B, which takes them row by row, can then show up to a second of rows, or
    a chunk, twice; TensorBoard's ``purge_step`` drops its copies; MLflow's store is asked what it
    holds on resume: :func:`_stored_progress`.)"""

    def __init__(self, tracker: Tracker, info: RunInfo, state: dict, owner: Trackers):
        self.tracker, self.info, self.state, self.owner = tracker, info, dict(state), owner
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.closing = threading.Event()  # set: no more batching wait (the loop is over, or close)
        self.failed: str | None = None
        self.dropped = 0
        self.exit_code = 0
        self.thread = threading.Thread(target=self._run, name=f"tracker-{tracker.name}", daemon=True)
        self.thread.start()

    # main thread ------------------------------------------------------------------------------
    def put(self, item: tuple) -> None:
        """Enqueue without waiting; a full queue drops the item (warned about once)."""
        if self.failed is not None:
            return
        if not _offer(self.q, item):
            self.dropped += 1
            if self.dropped == 1:
                self.owner.say(
                    f"warning: {self.tracker.name} is falling behind: records are dropped for it "
                    "(metrics.jsonl has every one)"
                )

    def close(self, exit_code: int, deadline: float) -> None:
        """Ask the thread to send what is queued (no more batching wait), then close the run;
        gives up at ``deadline`` (``time.monotonic()``) if the queue stays full."""
        self.exit_code = exit_code
        self.closing.set()
        while self.thread.is_alive() and time.monotonic() < deadline:
            try:
                self.q.put(_CLOSE, timeout=0.1)
                return
            except queue.Full:
                continue

    # the tracker's thread ------------------------------------------------------------------------
    def _run(self) -> None:
        name = self.tracker.name
        try:
            with _IMPORT_LOCK:
                self.tracker.load()
            self._started(self.tracker.start(self.info, self.state))
            self.owner.save(name, self.state)
            where = self.tracker.where()
            if where:
                self.owner.say(f"{name}: {where}")
        except BaseException as e:  # noqa: BLE001 - a tracker never stops the training
            self._fail(f"cannot start: {_reason(e)}")
            return
        last_send, done = time.monotonic(), False
        while not done:
            batch = [self.q.get()]
            if self.tracker.interval_s and batch[0] is not _CLOSE:
                self.closing.wait(max(0.0, last_send + self.tracker.interval_s - time.monotonic()))
            while True:
                try:
                    batch.append(self.q.get_nowait())
                except queue.Empty:
                    break
            done = any(item is _CLOSE for item in batch)
            if self.failed is not None:
                continue
            try:
                self._send([item for item in batch if item is not _CLOSE])
            except BaseException as e:  # noqa: BLE001
                self._fail(_reason(e))
            last_send = time.monotonic()
        if self.failed is None:
            try:
                self.tracker.close(self.exit_code)
            except BaseException as e:  # noqa: BLE001
                self._fail(f"cannot close its run: {_reason(e)}")

    def _started(self, new: dict) -> None:
        """Keep what :meth:`Tracker.start` returned. A run other than the kept one (another
        server's) has been sent nothing yet. A tracker that reports the last step its store holds
        (``last_step`` / ``sent_at_last_step``: MLflow on resume) moves the bookkeeping forward
        when the store has more than ``trackers.json`` says (a request that arrived but whose
        answer was lost), so a catch-up does not send it again."""
        if new.get("run_id") != self.state.get("run_id"):
            self.state.pop("last_step", None)
            self.state.pop("sent_at_last_step", None)
        seen, seen_keys = new.pop("last_step", None), set(new.pop("sent_at_last_step", ()))
        self.state.update(new)
        last = self.state.get("last_step")
        if seen is not None and (last is None or seen > last):
            self.state["last_step"], self.state["sent_at_last_step"] = seen, sorted(seen_keys)
        elif seen is not None and seen == last:
            self.state["sent_at_last_step"] = sorted(set(self.state["sent_at_last_step"]) | seen_keys)

    def _fresh(self, step: int, keys: set[str]) -> set[str]:
        """The keys of ``keys`` not yet sent at ``step`` (none at a step before the last one);
        marks them sent."""
        last = self.state.get("last_step")
        if last is not None and step < last:
            return set()
        if last is not None and step == last:
            keys = keys - set(self.state.get("sent_at_last_step", ()))
            self.state["sent_at_last_step"] = sorted(set(self.state["sent_at_last_step"]) | keys)
        else:
            self.state["last_step"], self.state["sent_at_last_step"] = step, sorted(keys)
        return keys

    def _missed(self, path: Path, up_to: int) -> Iterator[tuple]:
        """The records of ``path`` (the run's ``metrics.jsonl`` as a resume left it) at steps up to
        ``up_to``, as ``log`` items, read line by line (:meth:`_send` forwards only what was never
        sent). A record has no time of its own: each is stamped now. Lines that are not a JSON
        object with a finite step (a torn line, a foreign one) are skipped."""
        now = time.time()
        try:
            fh = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 - closed below
        except OSError:
            return
        with fh:
            for line in fh:
                try:
                    record = json.loads(line)
                except (ValueError, RecursionError):
                    continue
                step = record.get(self.info.step_key, 0) if isinstance(record, dict) else None
                if isinstance(step, (int, float)) and not isinstance(step, bool) and math.isfinite(step):
                    if step <= up_to:
                        yield ("log", int(step), record, now)

    def _expand(self, items: list[tuple]) -> Iterator[Any]:
        """``items`` with each ``catch_up`` replaced by the records it names (:meth:`_missed`),
        a :data:`_COMMIT` after every :data:`CATCH_UP_CHUNK` of them and after the last."""
        for item in items:
            if item[0] != "catch_up":
                yield item
                continue
            for n, record in enumerate(self._missed(Path(item[1]), item[2]), 1):
                yield record
                if n % CATCH_UP_CHUNK == 0:
                    yield _COMMIT
            yield _COMMIT

    def _commit(self, logs: list[tuple[int, dict[str, float], float]]) -> None:
        """Send ``logs`` (one ``log_many``), make everything sent durable (``flush``), then record
        it sent in ``trackers.json``; empties ``logs``."""
        if logs:
            self.tracker.log_many(logs)
            logs.clear()
        self.tracker.flush()
        self.owner.save(self.tracker.name, self.state)

    def _send(self, items: list[tuple]) -> None:
        """Hand ``items`` to the tracker in order, consecutive records as one ``log_many``, then
        record them sent (:meth:`_commit`). A catch-up is committed chunk by chunk: a failure or
        a kill halfway through one sends at most that chunk again on the next resume. The end of
        the run (``finish``) sends only the parts not yet sent at the last step: a resumed run
        that adds nothing (a finished run run again) repeats no summary and no file."""
        logs: list[tuple[int, dict[str, float], float]] = []
        for item in self._expand(items):
            if item is _COMMIT:
                self._commit(logs)
                continue
            if item[0] == "log":
                _, step, record, wall = item
                values = numeric_fields(record, self.info.step_key)
                keys = self._fresh(step, set(values))
                if keys:
                    logs.append((step, {k: v for k, v in values.items() if k in keys}, wall))
                continue
            if logs:
                self.tracker.log_many(logs)
                logs = []
            if item[0] == "table":
                _, step, name, columns, rows = item
                if self._fresh(step, {f"table:{name}"}):
                    self.tracker.table(step, name, columns, rows)
            elif item[0] == "finish":
                _, summary, text, paths = item
                step = self.state.get("last_step") or 0
                files = _files(paths)
                parts = {f"summary:{k}" for k in summary} | {f"file:{f}/{p.name}" for p, f in files}
                new = self._fresh(step, parts | ({"summary-text"} if text else set()))
                summary = {k: v for k, v in summary.items() if f"summary:{k}" in new}
                files = [(p, f) for p, f in files if f"file:{f}/{p.name}" in new]
                text = text if "summary-text" in new else ""
                if summary or files or text:
                    self.tracker.finish(step, summary, text, files)
        self._commit(logs)

    def _fail(self, why: str) -> None:
        self.failed = why
        self.owner.say(
            f"warning: report_to {self.tracker.name}: {why}; it gets nothing more from this run "
            f"{self.info.catch_up_hint}"
        )


_OPEN: set = set()  # the Trackers / TrackerProcess objects not closed yet (close_all)


def installed(names: Iterable[str], say: Callable[[str], None]) -> list[str]:
    """``names`` without repeats and without the trackers whose package is missing: each of those
    is one warning naming the extra to install (a missing dashboard does not stop a run)."""
    out = []
    for name in dict.fromkeys(names):
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            say(
                f"warning: report_to {name}: {_PACKAGES[name]} is not installed "
                f"(pip install 'fgrlhf[{name}]'); this run logs to metrics.jsonl without it"
            )
        else:
            out.append(name)
    return out


class Trackers:
    """The fan-out to the trackers of ``report_to``, in this process: each tracker starts on its
    own thread at once; every method here only enqueues. The trainers reach it through
    :class:`TrackerProcess` (which runs it in a child process); tests use it directly.

    Args:
        names: tracker names (:data:`TRACKERS`); repeats are ignored.
        info: what the trackers are told about the run.
        say: prints a message for the user (called from the trackers' threads too).
        classes: ``{name: Tracker subclass}`` (tests pass fakes); the default checks that each
            tracker's package is installed (:func:`installed`).
    """

    def __init__(
        self,
        names: Iterable[str],
        info: RunInfo,
        say: Callable[[str], None] = print,
        classes: dict[str, type[Tracker]] | None = None,
    ):
        self.info, self.say = info, say
        self.path = info.out_dir / STATE_FILE
        self._lock = threading.Lock()
        self.state = self._read_state() if info.resuming else {}
        names = installed(names, say) if classes is None else list(dict.fromkeys(names))
        classes = classes or TRACKER_CLASSES
        self.workers = {n: _Worker(classes[n](), info, self.state.get(n, {}), self) for n in names}
        _OPEN.add(self)

    def _read_state(self) -> dict:
        try:
            state = json.loads(self.path.read_text(encoding="utf-8"))
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def save(self, name: str, state: dict) -> None:
        """Record ``name``'s state (run id, last step sent) in ``output_dir/trackers.json``
        (atomic; called from the trackers' threads)."""
        with self._lock:
            self.state[name] = dict(state)
            tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(self.state, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)

    # what the trainer calls (each returns at once) ---------------------------------------------
    def log(self, record: dict, wall_time: float | None = None) -> None:
        """Send the numbers of one ``metrics.jsonl`` record at its step."""
        step = record.get(self.info.step_key, 0)
        item = ("log", int(step), dict(record), wall_time or time.time())
        for w in self.workers.values():
            w.put(item)

    def table(self, name: str, step: int, rows: list[dict]) -> None:
        """Send a table (``rows``: one dict per row; the columns are their keys, first seen first)."""
        columns = list(dict.fromkeys(k for r in rows for k in r))
        data = [[r.get(c) for c in columns] for r in rows]
        for w in self.workers.values():
            w.put(("table", int(step), name, columns, data))

    def catch_up(self, path: Path, up_to: int) -> None:
        """A resumed run: send each tracker what it missed before the resume — the records of
        ``path`` (the run's ``metrics.jsonl``, already cut back to the checkpoint) after the last
        step it was sent, up to step ``up_to`` (its server was down or unreachable, the run was
        killed before the tracker sent them, the tracker was added to ``report_to`` on resume).
        Read in the tracker's thread, before anything the resumed run logs."""
        for w in self.workers.values():
            w.put(("catch_up", str(path), int(up_to)))

    def hurry(self) -> None:
        """The training loop is over: every tracker sends what it holds back for batching now,
        and from now on sends at once (the end-of-run drain overlaps the trainer's last work)."""
        for w in self.workers.values():
            w.closing.set()

    def finish(self, summary: dict[str, float], text: str = "", files: Iterable[Path] = ()) -> None:
        """The end of the run: the summary's figures and text, and the files to store (plots
        directories and ``report.html``; missing ones are skipped). May come in parts (files as
        they are written, then the summary): each part is stored as it arrives."""
        item = ("finish", dict(summary), text, [Path(p) for p in files])
        for w in self.workers.values():
            w.put(item)

    def close(self, exit_code: int = 0, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Let every tracker send what is queued and close its run, waiting at most ``timeout``
        seconds in all; a tracker still busy then is left behind, with a warning (idempotent)."""
        if self not in _OPEN:
            return
        _OPEN.discard(self)
        deadline = time.monotonic() + timeout
        for w in self.workers.values():
            w.close(exit_code, deadline)
        for name, w in self.workers.items():
            w.thread.join(max(0.0, deadline - time.monotonic()))
            if w.thread.is_alive():
                self.say(
                    f"warning: report_to {name}: still busy {timeout:.0f} s after the end of the run "
                    f"(a slow or unreachable server?): left behind, {w.q.qsize()} items unsent "
                    f"{self.info.catch_up_hint}"
                )
            elif w.dropped:
                self.say(f"warning: report_to {name}: {w.dropped} records were dropped (queue full)")


# --------------------------------------------------------------------------------------------
# The fan-out's front in the training process: a child process runs the trackers
# --------------------------------------------------------------------------------------------
def _counted(method: Callable) -> Callable:
    """A :class:`TrackerProcess` method whose time is added to ``cost["calls_s"]`` (the trainer's
    calls: what they cost the training thread)."""

    @functools.wraps(method)
    def timed(self: TrackerProcess, *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return method(self, *args, **kwargs)
        finally:
            self.cost["calls_s"] += time.perf_counter() - t0

    return timed


class TrackerProcess:
    """What the trainers get (:func:`trainer.infra.runtime.open_metrics`, rank 0): the same
    methods as :class:`Trackers`, which runs in a child process (``python -m
    trainer.infra.trackers``, its own session), fed through a pipe by one thread of this process
    from a bounded queue. The trackers' imports, start-up (W&B, MLflow) and calls then take
    neither this process's GIL nor its time: the trainer's calls only enqueue (a full queue drops
    the record, warned once), and a tracker library that hangs or crashes cannot stop the run. The
    child's output comes back through ``say``, scrubbed of secrets. ``close`` waits at most
    ``timeout`` seconds for the child to send what is queued and close the runs, then ends it,
    and says how much of this process's time the trackers took (``cost``: the start, the
    trainer's calls, the CPU of the two feeding threads, the close's wait; wall seconds except
    the threads' CPU): the part of their cost on the training path wherever the cores are.

    Args:
        names: installed tracker names (:func:`installed`).
        info: what the trackers are told about the run.
        say: prints a message for the user (``Run.say``; called from this object's threads).
    """

    def __init__(self, names: list[str], info: RunInfo, say: Callable[[str], None] = print):
        self.info, self.say, self.names = info, say, names
        # the trainer's own time on the trackers (said at close): start (:func:`start_trackers`), the
        # trainer's calls, the CPU of this object's two threads, the close's wait; the rest runs in the child
        self.cost = dict.fromkeys(("start_s", "calls_s", "send_cpu_s", "read_cpu_s", "close_wait_s"), 0.0)
        self.q: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
        self.dropped, self.broken = 0, False
        root = str(Path(__file__).resolve().parents[2])  # the child imports this package from here
        path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trainer.infra.trackers"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,  # (a Ctrl-C or a scheduler's SIGTERM to the group: not it)
        )  # fmt: skip
        self.q.put(("start", names, info))
        self._writer = threading.Thread(target=self._write, name="trackers-writer", daemon=True)
        self._reader = threading.Thread(target=self._read, name="trackers-reader", daemon=True)
        self._writer.start()
        self._reader.start()
        _OPEN.add(self)

    def _put(self, item: tuple) -> None:
        if self.broken:
            return
        if not _offer(self.q, item):
            self.dropped += 1
            if self.dropped == 1:
                self.say("warning: report_to: the trackers are falling behind: records are dropped for them")

    def _write(self) -> None:
        """The writer thread: queue → the child's stdin (pickled), until ``close``."""
        try:
            self._write_all()
        finally:
            self.cost["send_cpu_s"] = time.thread_time()  # (this thread's CPU time, all of it)

    def _write_all(self) -> None:
        while True:
            item = self.q.get()
            try:
                if item is _CLOSE:
                    self.proc.stdin.close()
                    return
                pickle.dump(item, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
                self.proc.stdin.flush()
            except (OSError, ValueError):  # the child is gone
                if not self.broken:
                    self.broken = True
                    self.say(
                        f"warning: report_to: the tracker process ended (exit {self.proc.poll()}); "
                        f"{', '.join(self.names)} get nothing more from this run {self.info.catch_up_hint}"
                    )
                if item is _CLOSE:
                    return

    def _read(self) -> None:
        """The reader thread: the child's output lines → ``say`` (redacted)."""
        try:
            for line in iter(self.proc.stdout.readline, b""):
                text = line.decode("utf-8", "replace").rstrip()
                if text:
                    self.say(redact(text))
        finally:
            self.cost["read_cpu_s"] = time.thread_time()

    @_counted
    def log(self, record: dict) -> None:
        """:meth:`Trackers.log` (enqueued)."""
        self._put(("log", dict(record), time.time()))

    @_counted
    def table(self, name: str, step: int, rows: list[dict]) -> None:
        """:meth:`Trackers.table` (enqueued)."""
        self._put(("table", name, int(step), rows))

    @_counted
    def catch_up(self, path: Path, up_to: int) -> None:
        """:meth:`Trackers.catch_up` (enqueued; the child reads the file)."""
        self._put(("catch_up", str(path), int(up_to)))

    @_counted
    def hurry(self) -> None:
        """:meth:`Trackers.hurry` (enqueued)."""
        self._put(("hurry",))

    @_counted
    def finish(self, summary: dict[str, float], text: str = "", files: Iterable[Path] = ()) -> None:
        """:meth:`Trackers.finish` (enqueued)."""
        self._put(("finish", dict(summary), text, [Path(p) for p in files]))

    def close(self, exit_code: int = 0, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Send what is queued, let the child close the tracker runs (``exit_code`` marks them),
        and wait at most ``timeout`` seconds (plus a few for the child's own exit) before ending
        it. Idempotent."""
        if self not in _OPEN:
            return
        _OPEN.discard(self)
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout + 10
        for item in (("close", exit_code, timeout), _CLOSE):  # waits for room: never dropped
            try:
                self.q.put(item, timeout=max(0.1, deadline - time.monotonic()))
            except queue.Full:  # the writer is stuck: the child reads nothing
                break
        try:
            self.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.say(f"warning: report_to: the tracker process did not finish in {timeout:.0f} s: ended")
            self.proc.kill()
            self.proc.wait()
        self._reader.join(5)
        self._writer.join(1)
        self.cost["close_wait_s"] = time.perf_counter() - t0
        if self.dropped:
            self.say(f"warning: report_to: {self.dropped} records were dropped (the trackers fell behind)")
        c = self.cost
        self.say(
            f"report_to: the trackers took {sum(c.values()):.3f} s of this process's time: "
            f"{c['start_s']:.3f} s to start theirs, {c['calls_s']:.3f} s in the trainer's calls, "
            f"{c['send_cpu_s'] + c['read_cpu_s']:.3f} s of CPU on the two threads that feed it, "
            f"{c['close_wait_s']:.3f} s waiting for it to finish (their own work ran in that process)"
        )


def start_trackers(names: Iterable[str], info: RunInfo, say: Callable[[str], None]) -> TrackerProcess | None:
    """The trackers of ``names`` that are installed, started in a :class:`TrackerProcess`; None
    when none is (each missing one a warning naming its extra, said before training starts)."""
    t0 = time.perf_counter()
    names = installed(names, say)
    if not names:
        return None
    try:
        tp = TrackerProcess(names, info, say)
        tp.cost["start_s"] = time.perf_counter() - t0  # (the package checks too)
        return tp
    except OSError as e:  # no process to be had (a fork limit): the run goes on without them
        say(f"warning: report_to: cannot start the tracker process ({_reason(e)}); metrics.jsonl only")
        return None


def add_report_to(parser: Any, what: str) -> None:
    """The ``--report-to TRACKER ...`` flag of a command that is not a trainer (``fgrlhf eval``,
    ``fgrlhf demo``; the trainers have the ``report_to`` config key): ``what`` says what is sent."""
    parser.add_argument(
        "--report-to",
        nargs="+",
        default=[],
        choices=TRACKERS,
        metavar="TRACKER",
        help=f"also send {what} to these trackers: {', '.join(TRACKERS)}",
    )


def report_once(
    names: Iterable[str],
    info: RunInfo,
    record: dict,
    say: Callable[[str], None] = print,
    tables: dict[str, list[dict]] | None = None,
    text: str = "",
    files: Iterable[Path] = (),
) -> None:
    """The trackers of a job with no training loop (``fgrlhf eval``, ``fgrlhf demo``'s tables),
    told everything at once when it ends: ``record`` (its numbers, at ``record[info.step_key]``,
    also as the summary's figures), ``tables`` (``{name: rows}``), ``text`` and ``files`` as
    artefacts. Same process, rules and run state (``out_dir/trackers.json``: a rerun continues
    the same tracker runs, sending only what is new) as a trainer's; waits for them to finish
    (:data:`CLOSE_TIMEOUT_S` at most). A tracker that fails is a warning, never an error."""
    tr = start_trackers(names, info, say)
    if tr is None:
        return
    step, code = int(record.get(info.step_key, 0)), 1  # (an exception on the way marks the run failed)
    try:
        tr.log(record)
        for name, rows in (tables or {}).items():
            if rows:
                tr.table(name, step, rows)
        tr.finish(numeric_fields(record, info.step_key), text, files)
        code = 0
    finally:
        tr.close(code)


def _child_main() -> None:
    """``python -m trainer.infra.trackers``: the child of :class:`TrackerProcess`. Reads pickled
    messages on stdin — ``("start", names, info)`` first, then ``log`` / ``table`` /
    ``catch_up`` / ``hurry`` / ``finish`` in order — into a :class:`Trackers`, and closes it on
    ``("close", exit_code, timeout)`` or at the end of stdin (the trainer died: exit code 1).
    Ignores SIGINT / SIGTERM: the trainer decides. Runs at a lower CPU priority (``nice`` +10,
    inherited by W&B's ``wandb-core``): where the cores are busy, the training gets them first and
    the trackers wait."""

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with contextlib.suppress(OSError):
        os.nice(NICE)
    say = lambda msg: print(msg, flush=True)
    stdin = sys.stdin.buffer
    _, names, info = pickle.load(stdin)
    tr = Trackers(names, info, say, TRACKER_CLASSES)
    exit_code, timeout = 1, CLOSE_TIMEOUT_S
    while True:
        try:
            msg = pickle.load(stdin)
        except (EOFError, OSError, pickle.UnpicklingError):
            break
        if msg[0] == "log":
            tr.log(msg[1], msg[2])
        elif msg[0] == "table":
            tr.table(*msg[1:])
        elif msg[0] == "finish":
            tr.finish(*msg[1:])
        elif msg[0] == "catch_up":
            tr.catch_up(Path(msg[1]), msg[2])
        elif msg[0] == "hurry":
            tr.hurry()
        elif msg[0] == "close":
            exit_code, timeout = msg[1], msg[2]
            break
    tr.close(exit_code, timeout)
    sys.stdout.flush()
    os._exit(0)  # (a tracker thread left behind, or a library's exit hook, must not keep it alive)


def close_all(exit_code: int) -> None:
    """Close every :class:`TrackerProcess` / :class:`Trackers` still open (the entry point's last
    step, also after an error or a pre-emption: exit code 1 / 75 marks the tracker runs)."""
    for t in list(_OPEN):
        t.close(exit_code)


if __name__ == "__main__":
    from trainer.infra import trackers as _module  # the importable copy (pickled types live there)

    _module._child_main()
