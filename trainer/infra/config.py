"""Entry-point configs: one dataclass per entry point, YAML file + ``key=value`` overrides.

Built on OmegaConf structured configs (torchtune's choice): the dataclass is the schema, so
a key it does not have — in the YAML file or on the command line — is rejected with an error
naming the key, and values are type-checked. Every field carries a docstring (the string
literal after it), which ``--help`` prints::

    python trainer/reward.py --config configs/tiny_cpu/reward.yaml lr=3e-4 synthetic.n_pairs=500
    python trainer/reward.py --help
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import inspect
import itertools
import re
import sys
import textwrap
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from trainer.errors import (  # noqa: F401 - ConfigError, describe: re-exported (defined here before)
    EXIT_PREEMPTED,
    CheckpointError,
    ConfigError,
    DataError,
    PeerFailure,
    Preempted,
    describe,
    error_line,
    exit_status,
)
from trainer.infra.trackers import TRACKERS, close_all

__all__ = [
    "ConfigError",
    "TrainConfig",
    "check_declared",
    "cli_main",
    "config_help",
    "describe",
    "field_docs",
    "load_config",
    "to_yaml",
]

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass, read from the string literal after each field
    (over the class and its dataclass bases; a subclass's re-declaration wins)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass) or klass is object:
            continue
        body = _class_body(klass)
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


@functools.cache
def _source(path: str) -> str:
    return Path(path).read_text(encoding="utf-8")


def _class_body(klass: type) -> list[ast.stmt]:
    """The statements of ``klass``'s body, parsed from its module's file: a top-level class is cut
    out of the file's text (its ``class`` line and the indented lines after it) and only that is
    parsed — ``inspect.getsource`` parses the whole module, which ``fgrlhf --help`` noticed."""
    path = inspect.getsourcefile(klass)
    text = _source(path) if path and "." not in klass.__qualname__ else ""
    start = re.search(rf"^class {klass.__name__}\b", text, re.M)
    if start is not None:
        lines = text[start.start() :].splitlines()
        block = itertools.takewhile(lambda ln: not ln.strip() or ln[0] in " \t#", lines[1:])
        with contextlib.suppress(SyntaxError):  # (a string with unindented lines: the general path)
            return ast.parse("\n".join([lines[0], *block])).body[0].body  # type: ignore[attr-defined]
    return ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body  # type: ignore[attr-defined]


def declared(cls: type, name: str) -> dict:
    """A ``ClassVar`` dict (``CHOICES``, ``AT_LEAST``, ``ABOVE``, ``AT_MOST``, ``PATHS``,
    ``RESUME_SAFE``) merged over the MRO."""
    out: dict = {}
    for klass in reversed(cls.__mro__):
        out.update(vars(klass).get(name, {}))
    return out


def flag_name(key: str) -> str:
    """The command-line flag of a config field: ``max_tokens`` -> ``--max-tokens``."""
    return "--" + key.replace("_", "-")


def check_declared(cfg: Any, flags: bool = False) -> None:
    """Validate ``cfg`` against what its class declares (one mechanism for every trainer and
    ``fgrlhf`` command):

    * ``CHOICES: ClassVar[dict[str, tuple]]`` — the allowed values of a key (of each entry, for
      a list key);
    * ``AT_LEAST`` / ``ABOVE`` / ``AT_MOST: ClassVar[dict[str, float]]`` — the bounds of a numeric
      key (``>=``, ``>``, ``<=``; a None value, "not set", is not checked);
    * ``PATHS: ClassVar[dict]`` (its keys) — keys naming a local file or directory: when set and
      path-like (``./``, ``/``, ``~`` or a data-file suffix), it must exist;
    * ``RESUME_SAFE: ClassVar[dict]`` (its keys, read on resume by ``infra.runtime``) — keys
      that may change between a run and its resumption (logging, progress, stopping points).

    Args:
        cfg: the config.
        flags: name the keys as command-line flags (``--max-tokens must be >= 1, got 0``)
            instead of config keys (``config key 'lr': must be >= 0, got -1``).

    Raises:
        ConfigError / trainer.data.formats.DataError: naming the key and the bad value.
    """
    cls = type(cfg)
    name = flag_name if flags else (lambda key: f"config key {key!r}:")
    for key, allowed in declared(cls, "CHOICES").items():
        value = getattr(cfg, key)
        for v in value if isinstance(value, list) else [value]:
            if v not in allowed:
                raise ConfigError(f"{name(key)} {v!r} is not one of {tuple(allowed)}")
    bounds = {k: (v, False) for k, v in declared(cls, "AT_LEAST").items()}  # (lowest, excluded)
    bounds.update({k: (v, True) for k, v in declared(cls, "ABOVE").items()})
    highest = declared(cls, "AT_MOST")
    for key in dict.fromkeys([*bounds, *highest]):
        value = getattr(cfg, key)
        (lo, strict), hi = bounds.get(key, (None, False)), highest.get(key)
        too_low = lo is not None and value is not None and (value <= lo if strict else value < lo)
        too_high = hi is not None and value is not None and value > hi
        if not (too_low or too_high):
            continue
        fmt = (lambda x: f"{x:g}") if flags else str
        if hi is None:
            span = f"{'>' if strict else '>='} {fmt(lo)}"
        elif lo is None:
            span = f"<= {fmt(hi)}"
        else:
            span = f"in {'(' if strict else '['}{fmt(lo)}, {fmt(hi)}]"
        raise ConfigError(f"{name(key)} must be {span}, got {fmt(value)}")
    for key in declared(cls, "PATHS"):
        value = getattr(cfg, key)
        suffix = Path(value).suffix.lower()
        pathlike = value.startswith((".", "/", "~")) or suffix in (".json", ".jsonl", ".gz", ".parquet")
        if value and pathlike and not Path(value).expanduser().exists():
            raise DataError(value, f"no such file or directory (config key {key!r})")


@dataclasses.dataclass
class TrainConfig:
    """The keys every trainer shares (model size, optimizer, FSDP2, devices, outputs). Each
    entry point's config extends it; :meth:`check` validates the declared ranges and choices."""

    CHOICES: ClassVar[dict] = {
        "optimizer": ("adamw", "adamw8bit"),
        "param_dtype": ("float32", "bfloat16", "float16"),
        "reduce_dtype": ("float32", "bfloat16"),
        "device": ("auto", "cuda", "cpu"),
        "prompt_template": ("auto", "plain", "alpaca", "chat"),
        "grad_sync": ("step", "micro_batch"),
        "report_to": TRACKERS,
    }
    AT_LEAST: ClassVar[dict] = {
        "hidden_size": 1, "num_layers": 1, "num_heads": 1, "intermediate_size": 1, "weight_decay": 0,
        "max_grad_norm": 0, "num_threads": 0, "checkpoint_every": 0, "keep_checkpoints": 1,
        "dry_run_world_size": 1, "dry_run_layers": 0, "memory_limit_gb": 0, "dist_timeout_min": 1,
    }  # fmt: skip
    PATHS: ClassVar[dict] = {"init_from": None, "tokenizer": None}
    RESUME_SAFE: ClassVar[dict] = dict.fromkeys(
        (
            "progress", "checkpoint_every", "keep_checkpoints", "num_threads", "resume", "dist_timeout_min",
            "report_to", "run_name",
        )
    )  # fmt: skip

    tokenizer: str = ""
    """Tokenizer directory or hub name; empty: ``init_from``'s (or the synthetic world's)."""
    prompt_template: str = "auto"
    """How prompts are rendered: ``auto`` (the tokenizer's chat template when it has one, else
    ``plain``), ``plain`` (``"{prompt}\n"``), ``alpaca`` (the Alpaca template with / without
    input, what AlpacaFarm's LLaMA-7B SFT model was trained on), ``chat``. A reward model records
    it; PPO refuses a reward model rendered another way."""
    init_from: str = ""
    """Pretrained/SFT checkpoint directory or hub name; empty: a random-init tiny LLaMA (below)."""
    hidden_size: int = 64
    """Tiny LLaMA (``init_from`` empty): hidden size."""
    num_layers: int = 2
    """Tiny LLaMA: decoder layers."""
    num_heads: int = 4
    """Tiny LLaMA: attention heads."""
    intermediate_size: int = 256
    """Tiny LLaMA: MLP width."""

    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: list[float] = dataclasses.field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    optimizer: str = "adamw"
    """``adamw`` (torch) or ``adamw8bit`` (bitsandbytes, CUDA only)."""
    max_grad_norm: float = 1.0
    """Gradient clipping threshold (global L2 norm of each model); 0 disables."""

    param_dtype: str = "float32"
    """FSDP2 compute dtype of parameters: ``bfloat16`` on GPUs; ``float32`` on CPU (bf16 matmuls
    are slow there)."""
    reduce_dtype: str = "float32"
    """FSDP2 gradient reduce-scatter dtype."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer in backward (saves memory; on for 7B)."""
    grad_sync: str = "step"
    """When gradient accumulation reduce-scatters: ``step`` (once per optimizer step, after the
    last micro-batch: least communication, but FSDP2 keeps every layer's *unsharded* fp32
    gradient between micro-batches, 4 bytes × parameters per device) or ``micro_batch`` (after
    every micro-batch: sharded accumulation)."""
    attn_implementation: str = "auto"
    """``auto`` (flash_attention_2 when installed on CUDA, else sdpa), ``sdpa``, ``eager``, ..."""
    device: str = "auto"
    """``auto``, ``cuda`` or ``cpu``."""
    dist_timeout_min: float = 60.0
    """Minutes a collective may wait for the slowest rank before the process group gives up
    (NCCL's watchdog default is 10): rank 0 alone loads a 7B checkpoint in fp32, writes the final
    ``save_pretrained`` and deletes old checkpoints while every other rank waits in the next
    collective, which on a slow shared filesystem takes longer than 10 minutes."""
    num_threads: int = 0
    """CPU threads per process; 0: cores / processes on this node."""
    deterministic: bool = True
    """``torch.use_deterministic_algorithms(True)`` (exact resume on CPU)."""
    seed: int = 0
    """Seed of the initial weights, the data order and sampling."""

    output_dir: str = "runs/train"
    """Where config, metrics, checkpoints and models go."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every this many steps (and at the end); 0: only at the end."""
    keep_checkpoints: int = 2
    """Complete checkpoints kept (oldest removed); a damaged newest one falls back to the next."""
    resume: bool = True
    """Continue from the newest intact checkpoint in ``output_dir/checkpoints`` when there is one."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""
    report_to: list[str] = dataclasses.field(default_factory=list)
    """Experiment trackers that also get the run, besides ``metrics.jsonl`` (always written): any
    of ``tensorboard`` (``output_dir/tb``), ``wandb``, ``mlflow``, as ``report_to=[tensorboard,wandb]``.
    Each gets every metric at its step, the config, git commit and command line, sample rollouts
    (PPO) and, at the end, the summary, plots and ``report.html``; rank 0 only, off the training
    path. A resumed run continues the same tracker runs (``output_dir/trackers.json``). A tracker
    that is not installed (``pip install 'fgrlhf[track]'``) or fails is a warning: the run goes on
    without it. Credentials and servers come from the environment only (``WANDB_API_KEY``,
    ``WANDB_MODE``, ``WANDB_PROJECT``, ``MLFLOW_TRACKING_URI``, ...)."""
    run_name: str = ""
    """The run's name in W&B and MLflow (``report_to``); empty: ``output_dir``'s last part."""
    arch: str = ""
    """Architecture preset used when ``init_from`` is empty (``llama-7b``, ``llama-1b``: see
    ``trainer.infra.dryrun.ARCH_PRESETS``); empty: the tiny LLaMA of the sizes above."""
    memory_limit_gb: float = 0.0
    """Per-device memory a run must fit in, checked before models are built against the dry run's
    measured peak of exactly this run (``output_dir/memory_plan.json``, written by
    ``dry_run=true``) or, without one, the estimate; a dry run checks its own peaks. 0: the CUDA
    device's total less ~3 GiB that the CUDA context, NCCL and cuBLAS hold outside the allocator
    (no check on CPU). An 80 GB card holds 79.2 GiB: set 76, not 80."""
    dry_run: bool = False
    """Run the real code path for one iteration / step on fake tensors over a fake process group
    of ``dry_run_world_size`` ranks (no memory, no GPU, no checkpoints needed: required paths may
    stay unset), print the measured peak memory per phase beside the estimate, and exit."""
    dry_run_world_size: int = 8
    """Ranks of the dry run's fake process group (the GPUs the real job will use)."""
    dry_run_layers: int = 0
    """A dry run with this many decoder layers instead of the architecture's (0: all of them):
    every shape per layer is the real one, for a quick check of the code path (CI); the memory
    figures are then those of the smaller model."""

    def check(self) -> None:
        """Reject values no run can use (names the key): the declared choices, lower bounds and
        paths, then each trainer's own cross-key rules (overrides call ``super().check()``)."""
        import torch  # lazy: torch (this module is torch-free)

        check_declared(self)
        if len(self.betas) != 2:
            raise ConfigError(f"config key 'betas': expected two numbers, got {self.betas}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("config key 'device': 'cuda' but this torch build sees no CUDA device")
        if Path(self.output_dir).exists() and not Path(self.output_dir).is_dir():
            raise ConfigError(f"config key 'output_dir': {self.output_dir} exists and is not a directory")


def config_help(cls: type, prefix: str = "") -> str:
    """One line per field: ``name = default  # docstring`` (nested dataclasses expanded)."""
    lines = []
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            lines.append(f"# {prefix}{f.name}: {docs.get(f.name, '')}")
            lines.append(config_help(type(default), prefix=f"{prefix}{f.name}."))
        else:
            lines.append(f"{prefix}{f.name} = {default!r}  # {docs.get(f.name, '')}")
    return "\n".join(lines)


def load_config(cls: type[T], argv: list[str]) -> T:
    """Build a ``cls`` from ``argv``: an optional ``--config FILE.yaml`` then ``key=value``
    overrides (dotted keys for nested fields), applied in that order over the defaults.

    Raises:
        ConfigError: an unknown key (named, with the closest known keys), a value of the
            wrong type, a missing or malformed YAML file, or an argument that is not
            ``key=value``.
    """
    from omegaconf import OmegaConf  # lazy: omegaconf (heavy for the torch-free fgrlhf)
    from omegaconf.errors import (  # lazy: omegaconf (heavy for the torch-free fgrlhf)
        ConfigKeyError,
        OmegaConfBaseException,
    )

    argv = list(argv)
    files: list[str] = []
    overrides: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "-c"):
            if i + 1 >= len(argv):
                raise ConfigError("--config needs a file name")
            files.append(argv[i + 1])
            i += 2
            continue
        if a.startswith("--config="):
            files.append(a.split("=", 1)[1])
        elif "=" not in a or a.startswith("="):
            raise ConfigError(f"argument {a!r} is not key=value (or --config FILE)")
        else:
            overrides.append(a[2:] if a.startswith("--") else a)
        i += 1

    schema = OmegaConf.structured(cls)
    OmegaConf.set_struct(schema, True)
    merged = schema
    sources: list[tuple[str, Any]] = []
    for f in files:
        path = Path(f)
        if not path.is_file():
            raise ConfigError(f"config file {f}: no such file")
        try:
            sources.append((f"config file {f}", OmegaConf.load(path)))
        except Exception as e:
            raise ConfigError(f"config file {f}: not valid YAML ({e})") from e
    for o in overrides:
        key = o.split("=", 1)[0]
        try:
            sources.append((f"override {o!r}", OmegaConf.from_dotlist([o])))
        except Exception as e:
            raise ConfigError(f"override {o!r}: cannot parse key {key!r} ({e})") from e
    # ``???`` (required) in a file: merging it keeps the default, so track it by hand
    required: set[str] = set()
    for _, src in sources:
        required = {k for k in required if OmegaConf.select(src, k, default=None) is None}
        required |= set(OmegaConf.missing_keys(src))
    dry = any(OmegaConf.select(src, "dry_run", default=False) is True for _, src in sources)
    if required and not dry:  # a dry run needs no checkpoints or data: ??? paths stay empty
        key = sorted(required)[0]
        raise ConfigError(f"config key {key!r} is required (??? in the YAML file): set it as {key}=...")
    arch = any(OmegaConf.select(src, "arch", default="") for _, src in sources)
    if dry and "init_from" in required and not arch:  # ... but it must know which model it measures
        raise ConfigError(
            "config key 'init_from' is required (??? in the YAML file), also in a dry run: it measures "
            "the model the real run builds. Set init_from=<checkpoint dir> (only its config.json and "
            "tokenizer are read, no weights) or arch=<preset> (llama-7b, llama-1b)"
        )
    for where, src in sources:
        try:
            merged = OmegaConf.merge(merged, src)
        except ConfigKeyError as e:
            bad = getattr(e, "full_key", None) or str(e)
            known = sorted(_all_keys(cls))
            near = difflib.get_close_matches(str(bad), known, n=3, cutoff=0.6)
            hint = f"; did you mean one of {near}?" if near else ""
            raise ConfigError(
                f"{where}: unknown config key {bad!r} for {cls.__name__}{hint} (see --help)"
            ) from None
        except OmegaConfBaseException as e:
            key = getattr(e, "full_key", None)
            msg = str(e).splitlines()[0]
            raise ConfigError(f"{where}: bad value for key {key!r}: {msg}") from None
    try:
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        raise ConfigError(
            f"config key {key!r} has no value: set it in the YAML file or as {key}=..."
        ) from None


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            out += _all_keys(type(default), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def to_yaml(cfg: Any) -> str:
    """The resolved config as YAML (what the run logs at start and saves next to its outputs)."""
    from omegaconf import OmegaConf  # lazy: omegaconf (heavy for the torch-free fgrlhf)

    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def cli_main(config_cls: type[T], train: Any, doc: str | None, argv: list[str] | None = None) -> int:
    """The body of every entry point's ``main``: ``--help`` prints ``doc`` and every config
    key; otherwise parse ``argv`` (``--config FILE`` then ``key=value``) into ``config_cls``,
    run ``train(cfg)``, and turn a bad config, bad input or no intact checkpoint into a one-line
    error and exit 2, and a SIGTERM pre-emption (checkpoint written) into exit 75.
    The trackers of ``report_to`` are always closed (their runs marked with the exit status) and
    the process group shut down."""
    from trainer.infra.dist import shutdown  # lazy: torch; this module stays torch-free (fgrlhf, demo)

    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(doc)
        print(
            "Exit status: 0 finished; 1 a crash, or an OS error (unwritable path, full disk: named);\n"
            "2 a bad config, bad input or no intact checkpoint;\n"
            "75 pre-empted by SIGTERM (a checkpoint was written: rerun the same command to resume).\n"
        )
        print(config_help(config_cls))
        return 0
    cfg, code = None, 1  # (1: an exception none of these catches, a crash)
    try:
        cfg = load_config(config_cls, argv)
        train(cfg)
        code = 0
    except (ConfigError, DataError, CheckpointError, Preempted, PeerFailure, OSError) as e:
        # one line, the status of the README's table (trainer.errors.exit_status); anything else is
        # a crash: its traceback, exit 1
        code = exit_status(e) or 1
        if isinstance(e, Preempted):
            e.mark(Path(cfg.output_dir))
        # (an OSError names its path; PeerFailure: rank 0 failed and says why, this rank reports it)
        print(str(e) if isinstance(e, Preempted) else f"error: {error_line(e)}", file=sys.stderr, flush=True)
    finally:
        close_all(code)  # trackers still open after an error or a pre-emption (bounded wait)
        shutdown()
    return code
