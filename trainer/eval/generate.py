"""``fgrlhf generate``: a policy's answers to an instruction set, in AlpacaEval's format.

    fgrlhf generate runs/ppo/final/actor alpaca_eval.json -o outputs/ppo.json --generator ppo-token
    torchrun --nproc_per_node=8 -m trainer.cli generate MODEL INSTRUCTIONS -o OUT   # data-parallel

Input: AlpacaEval / AlpacaFarm records (a JSON list or JSONL) with ``instruction`` (str), an
optional ``input`` (str) and ``dataset`` (str); or ``prompt`` records. Prompts are rendered and
tokenised by the training code (:func:`trainer.data.examples.build_prompt`) with the template the
policy was trained on (its ``fgrlhf_policy.json``, written by ``trainer/ppo.py`` and
``trainer/sft.py``; ``--prompt-template`` for any other model), and sampled by the rollout
sampler of PPO (:func:`trainer.rollout.generate`: one prefill, then a KV-cached one-token
forward per step; EOS ends a row) — so evaluation sees exactly what training saw.

Model: a local ``transformers`` causal-LM directory, or a Hub id (``org/name``) already in the
Hugging Face cache (nothing is downloaded unless asked). A path that looks local (``./x``,
``/x``, ``~/x``, ``runs/x`` when ``runs/`` exists, ``a/b/c``, ``x/``) and does not exist is
refused at once. A reward model (``fgrlhf_reward.json``) and any directory whose weights do not
fit a causal LM (a missing LM head, unexpected or wrongly shaped weights) are refused, never
sampled with a random head.

Output: ``OUT`` is a JSON list in AlpacaEval's format — ``instruction`` (the instruction, and
``input`` separately when the record had one), ``output``, ``generator``, ``dataset`` — plus
``num_tokens`` (response tokens) and ``finished`` (False when cut at ``--max-new-tokens``).
``OUT`` may not be a directory, the instruction set, or a file of the model.

Resumable: each finished answer is appended at once to ``OUT.partial.jsonl`` (one file per rank
under ``torchrun``: ``OUT.partial.rank<r>.jsonl``; :class:`~trainer.infra.appendlog.AppendLog`:
whole lines, fsync, a torn last line dropped); a rerun generates only what is missing and writes
``OUT`` when every answer exists. The answers do not depend on where a run was stopped: the
prompts are cut into fixed batches (sorted by length, ``--batch-size``), batch ``b`` is sampled
with the seed ``seed + b`` and runs on rank ``b mod world``. Every stored answer carries what it
depends on, and a rerun that differs is refused before anything is generated: the model's
*contents* (a SHA-256 of its weight files, and of its config.json and tokenizer files — not its
path: a model directory replaced in place is another model, a moved one is the same), the
generator name, the dtype (``auto`` resolved to the checkpoint's), the device type (CPU and CUDA
sample other tokens; not the GPU model), the sampling settings, template, lengths, batch size,
seed, and its batch (its index and members: another ``--limit`` or ``--skip-invalid`` makes other
batches). The world size may change between runs. SIGTERM (a scheduler's pre-emption, from the
first step on) lets the batch in hand finish and be written, then stops with
:class:`~trainer.errors.Stopped` (exit 75). Under ``torchrun`` each rank stops after its own
batch (the loop has no collective) and torchrun ends the others; a batch still running when
torchrun's grace period (30 s by default) runs out is lost, and generated again by the rerun.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from trainer.data.formats import DataError, Prompt, prompt_parts, read_records, valid_records
from trainer.errors import ConfigError, JobFailed, Stopped, describe
from trainer.infra.appendlog import AppendLog
from trainer.infra.outputs import check_output, write_json
from trainer.infra.signals import sigterm_flag

log = logging.getLogger(__name__)
RERUN = "rerun the same command to continue"

__all__ = [
    "GenerateConfig",
    "OutputLog",
    "load_instructions",
    "model_identity",
    "resolve_model",
    "run_generate",
    "weights_sha256",
]


@dataclass
class GenerateConfig:
    """Settings of ``fgrlhf generate`` (its flags are derived from these fields)."""

    CHOICES: ClassVar[dict] = {
        "prompt_template": (None, "auto", "plain", "alpaca", "chat"),
        "dtype": ("auto", "float32", "bfloat16", "float16"),
        "device": ("auto", "cuda", "cpu"),
    }
    AT_LEAST: ClassVar[dict] = {"max_new_tokens": 1, "max_prompt_length": 1, "batch_size": 1, "limit": 1}
    ABOVE: ClassVar[dict] = {"top_p": 0}
    AT_MOST: ClassVar[dict] = {"top_p": 1}

    model: str
    """A ``transformers`` causal-LM directory (``runs/ppo/final/actor``, ``runs/sft/final``) or a
    Hub id (``org/name``) in the Hugging Face cache."""
    instructions: str
    """The instruction set: AlpacaEval/AlpacaFarm records (instruction [, input, dataset]), JSON or
    JSONL."""
    output: str
    """The AlpacaEval-format JSON to write."""
    generator: str | None = None
    """The name recorded in every output (default: the model directory's name)."""
    max_new_tokens: int = 512
    """Most response tokens."""
    max_prompt_length: int = 1024
    """Prompts are cut from the left to this many tokens (BOS kept)."""
    temperature: float = 0.7
    """Sampling temperature (> 0; ignored with ``greedy``)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = plain sampling)."""
    greedy: bool = False
    """Argmax decoding."""
    seed: int = 0
    """Batch ``b`` is sampled with ``seed + b``."""
    batch_size: int = 8
    """Prompts per batch (fixed batches: changing it changes sampled answers)."""
    prompt_template: str | None = None
    """``auto|plain|alpaca|chat``; default: the one the policy was trained on (its
    ``fgrlhf_policy.json``), else ``auto``."""
    dtype: str = "auto"
    """``auto`` (the checkpoint's), ``float32``, ``bfloat16``, ``float16``."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cuda`` or ``cpu``."""
    limit: int | None = None
    """Only the first ``limit`` instructions."""
    skip_invalid: bool = False
    """Skip (and count) bad records instead of stopping."""
    progress: bool = True
    """A progress bar (on a terminal)."""
    fsync: bool = True
    """Fsync after every answer."""
    allow_download: bool = False
    """Download a Hub id (``org/name``) that is not in the Hugging Face cache (default: refused)."""

    def check(self) -> None:
        """What the declared bounds cannot say: a sampling temperature is > 0.

        Raises:
            ConfigError: naming the flag.
        """
        if not self.greedy and self.temperature <= 0:
            raise ConfigError(f"--temperature must be > 0 (or --greedy), got {self.temperature:g}")


@dataclass(frozen=True)
class Instruction:
    """One record to answer: ``index`` in the input, the prompt's parts, ``dataset``, ``where``."""

    index: int
    prompt: Prompt
    dataset: str | None
    where: str


def load_instructions(path: str, skip_invalid: bool = False) -> tuple[list[Instruction], list[DataError]]:
    """The records of an instruction set, with their problems.

    Raises:
        DataError: an unreadable file, a bad record (without ``skip_invalid``: named by line or
            record and field), or no usable record.
    """

    def parse(where: str, rec: Any) -> tuple[Prompt, str | None]:
        prompt = prompt_parts(rec, path, where)
        dataset = rec.get("dataset")
        if dataset is not None and not isinstance(dataset, str):
            raise DataError(path, f"expected a string, got {type(dataset).__name__}", where, "dataset")
        return prompt, dataset

    out: list[Instruction] = []
    bad: list[DataError] = []
    for where, (prompt, dataset) in valid_records(read_records(path), parse, skip_invalid, bad.append):
        out.append(Instruction(len(out) + len(bad), prompt, dataset, where))  # index: its place in the input
    if not out:
        raise DataError(path, "no instructions" + (f" ({len(bad)} invalid skipped)" if bad else ""))
    return out, bad


class OutputLog(AppendLog):
    """The answers of one rank (``id`` = the instruction's index in the input)."""

    REQUIRED = ("id", "output", "settings")
    KIND = "generate record"
    TOOL = "fgrlhf generate"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# --- the model: where it is, what it is ------------------------------------------------------
def _looks_local(name: str) -> bool:
    """Whether ``name`` can only mean a local path (never a Hub id): it starts with ``.``, ``/``
    or ``~``, ends with a separator, has more than one separator, or its first component is an
    existing local directory (``runs/nope`` next to ``runs/``)."""
    seps = {"/", os.sep}
    if name.startswith((".", "/", "~", os.sep)) or name[-1:] in seps:
        return True
    if sum(name.count(s) for s in seps) > 1:
        return True
    first = name.replace(os.sep, "/").split("/")[0]
    return any(s in name for s in seps) and Path(first).expanduser().is_dir()


def resolve_model(name: str, allow_download: bool = False) -> Path:
    """The local directory of the model ``name``, without touching the network unless asked.

    * an existing local path: itself (``~`` expanded);
    * a path that looks local (:func:`_looks_local`) and does not exist: refused at once (it
      used to go to the Hub and time out 50 s later);
    * else a Hub id (``org/name``; ``gpt2``): its snapshot in the Hugging Face cache
      (``local_files_only``); with ``allow_download``, fetched first (config, tokenizer and
      one weight format: safetensors when the repo has them, else ``*.bin``).

    Raises:
        ConfigError: no such directory, an invalid Hub id, or a Hub model not in the cache.
    """
    p = Path(name).expanduser()
    if not name.strip():
        raise ConfigError("model: an empty path")
    if p.exists():
        return p
    if _looks_local(name):
        raise ConfigError(f"model {name}: no such model directory")
    from huggingface_hub import snapshot_download  # lazy: heavy; a test patches it in huggingface_hub
    from huggingface_hub.utils import (  # lazy: heavy (with snapshot_download)
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        if not allow_download:
            return Path(snapshot_download(name, local_files_only=True))
        found = Path(snapshot_download(name, allow_patterns=[*_IDENTITY_FILES, "*.safetensors*"]))
        if not any(found.glob("*.safetensors")):
            found = Path(
                snapshot_download(name, allow_patterns=[*_IDENTITY_FILES, "*.bin", "*.bin.index.json"])
            )
        return found
    except HFValidationError:
        raise ConfigError(f"model {name}: no such model directory, and not a Hub id (org/name)") from None
    except LocalEntryNotFoundError:
        raise ConfigError(
            f"model {name}: no such model directory, and not a model in the Hugging Face cache; nothing is "
            f"downloaded by default: fetch it first (hf download {name}) or allow downloads"
        ) from None
    except RepositoryNotFoundError as e:
        raise ConfigError(
            f"model {name}: no such model directory or Hub repository ({describe(e)})"
        ) from None


_WEIGHT_FILES = ("*.safetensors", "*.bin")
# what else decides the answers: the architecture and dtype, the tokenizer and its chat template
# (generation_config.json does not: the rollout sampler takes its settings from the flags)
_IDENTITY_FILES = (
    "config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.*",
    "merges.txt",
    "*.tiktoken",
    "chat_template.*",
    "spiece.model",
)
_SIDECAR = ".fgrlhf-sha256.json"  # in the model directory: file name -> (stat, sha256)
_RACY_NS = 2_000_000_000  # a file changed this recently is hashed but not cached (see weights_sha256)
_CHUNK = 8 << 20


def _files(directory: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The regular files (symlinks followed: a Hub snapshot links to its blobs) of ``directory``
    matching any of ``patterns``, by name."""
    found = {f for pat in patterns for f in directory.glob(pat) if f.is_file()}
    return sorted(found, key=lambda f: f.name)


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _file_sha256(path: Path, cache: dict[str, Any]) -> str:
    """The SHA-256 of the whole file ``path``; from ``cache`` when its entry's stat stamp (device,
    inode, size, mtime, ctime) is the file's, else computed and (when the file is not too fresh:
    see :func:`weights_sha256`) put in ``cache``.

    Raises:
        RuntimeError: the file changed while it was read.
    """
    st = path.stat()
    hit = cache.get(path.name)
    if isinstance(hit, dict) and hit.get("stat") == _stamp(st) and isinstance(hit.get("sha256"), str):
        return hit["sha256"]
    started = time.time_ns()
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    after = path.stat()
    if _stamp(after) != _stamp(st):
        raise JobFailed(f"{path} changed while it was read; rerun when the model is written")
    digest = h.hexdigest()
    if started - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
        cache[path.name] = {"stat": _stamp(st), "sha256": digest}
    else:
        cache.pop(path.name, None)
    return digest


def weights_sha256(model_dir: str | Path) -> str:
    """A SHA-256 over every weight file of ``model_dir`` (``*.safetensors``, ``*.bin``): each
    file's name, size and SHA-256 of its *full* content.

    Why the full content: a fine-tune may change any byte, and a hash of names, sizes and the
    first MiB (what the RM judge hashes) misses one that changes only later bytes, as does any
    sampling of chunks; a name, size and mtime is no content at all (``cp -p``, ``rsync -t`` and
    ``touch -d`` carry or set mtimes). Reading 13 GB (a 7B model in fp16) costs ~10 s, so each
    file's hash is kept in a sidecar, ``MODEL/.fgrlhf-sha256.json``, under the file's stat stamp:
    device, inode, size, mtime *and ctime*. The kernel sets ctime to the current time on every
    write, truncate, rename onto, ``utime`` or ``chmod``, and no system call sets it back, so a
    file whose stamp matches has not been written since it was hashed. The one gap of stamps,
    two writes within one timestamp tick (a few ms), is closed as git closes it: a file changed
    less than 2 s before its hash started is hashed but not cached. A copied or moved model gets
    a new stamp and is hashed again; a read-only model directory is hashed on every run. Under
    ``torchrun`` every rank hashes (they share the page cache; a rank cannot stop the others by
    failing here alone) and rank 0 writes the sidecar.

    Raises:
        trainer.infra.config.ConfigError: no weight file in ``model_dir``.
        RuntimeError: a weight file changed while it was read.
    """
    d = Path(model_dir)
    weights = _files(d, _WEIGHT_FILES)
    if not weights:
        raise ConfigError(f"model {d}: no weight files ({', '.join(_WEIGHT_FILES)}): not a model directory")
    sidecar = d / _SIDECAR
    try:
        cache = json.loads(sidecar.read_text(encoding="utf-8"))["files"]
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError, RecursionError, KeyError, TypeError):
        cache = {}
    before = json.dumps(cache, sort_keys=True)
    h = hashlib.sha256()
    for f in weights:
        h.update(f"{f.name}\0{f.stat().st_size}\0{_file_sha256(f, cache)}\n".encode())
    cache = {k: v for k, v in cache.items() if (d / k).is_file()}  # forget removed files
    if json.dumps(cache, sort_keys=True) != before and os.environ.get("RANK", "0") == "0":  # one writer
        try:
            write_json(sidecar, {"files": cache})
        except (OSError, ValueError) as e:  # a read-only model: no cache, the same hash
            log.debug("%s: not written (%s)", sidecar, e)
    return h.hexdigest()


def model_identity(model_dir: str | Path) -> dict[str, str]:
    """What identifies a model's answers: ``weights`` (:func:`weights_sha256`) and ``files``, a
    SHA-256 over the names and contents of its config.json and tokenizer files (small: read
    every time). 16 hex digits each; the directory's path is not part of it.

    Raises:
        trainer.infra.config.ConfigError: no weight file in ``model_dir``.
    """
    d = Path(model_dir)
    h = hashlib.sha256()
    for f in _files(d, _IDENTITY_FILES):
        h.update(f"{f.name}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return {"weights": weights_sha256(d)[:16], "files": h.hexdigest()[:16]}


def _checkpoint_dtype(model_dir: Path, dtype: str) -> str:
    """``dtype``, with ``auto`` resolved to the checkpoint's (config.json's ``dtype`` or
    ``torch_dtype``) when it names one, so ``auto`` and the same explicit dtype match."""
    if dtype != "auto":
        return dtype
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        stored = config.get("dtype") or config.get("torch_dtype")
    except (OSError, ValueError, RecursionError, AttributeError):
        return dtype
    return stored if isinstance(stored, str) and stored in ("float32", "bfloat16", "float16") else dtype


def _check_policy_dir(model_dir: Path, name: str) -> None:
    """A policy, not a reward model or a run's root.

    Raises:
        ConfigError: a reward model (``fgrlhf_reward.json``), a file, or no ``config.json``.
    """
    from trainer.models import RM_META_FILE, check_model_dir  # lazy: torch (fgrlhf --help is torch-free)

    check_model_dir(str(model_dir), "model")
    if (model_dir / RM_META_FILE).exists():
        raise ConfigError(
            f"model {name}: is a reward model ({RM_META_FILE}), not a policy; generate from a policy "
            "directory (runs/ppo/final/actor, runs/sft/final)"
        )


def _keys(info: dict, kind: str) -> list[str]:
    """The sorted key names of ``info[kind]`` (a list or set of names; mismatched keys are
    ``(name, shape, shape)`` tuples)."""
    return sorted(k if isinstance(k, str) else str(k[0]) for k in info.get(kind) or ())


def _load_policy(model_dir: Path, name: str, dtype: str, device: Any):
    """``AutoModelForCausalLM`` from ``model_dir`` (no network), every weight accounted for.

    Tied embeddings (an LM head shared with ``embed_tokens``, stored once) load as usual.

    Raises:
        ConfigError: a weight the model needs that the checkpoint lacks (an LM head: a reward
            model or a bare backbone), a checkpoint weight the model does not use, or a wrong
            shape; named with the first few keys.
    """
    import torch  # lazy: torch (fgrlhf --help is torch-free)
    from transformers import AutoModelForCausalLM  # lazy: transformers (heavy)

    model, info = AutoModelForCausalLM.from_pretrained(
        str(model_dir),
        dtype="auto" if dtype == "auto" else getattr(torch, dtype),
        output_loading_info=True,
        local_files_only=True,
    )
    missing, unexpected, mismatched = (
        _keys(info, k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    )
    if missing or unexpected or mismatched:
        raise ConfigError(
            f"model {name}: the weights in {model_dir} do not fit a causal LM (missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}, wrong shape {mismatched[:4]}): not a policy directory?"
        )
    return model.to(device).eval()


def _settings(
    cfg: GenerateConfig, identity: dict[str, str], template: str, generator: str, dtype: str, device: str
) -> dict[str, Any]:
    """What the stored answers depend on (a rerun with other values is refused): the model's
    contents (not its path), the generator name written into every answer, the dtype and device
    type (other numerics, another random stream), the template and the sampling settings."""
    keys = ("max_new_tokens", "max_prompt_length", "temperature", "top_p", "greedy", "seed", "batch_size")
    return {
        "model": identity,
        "generator": generator,
        "dtype": dtype,
        "device": device,
        "template": template,
        **{k: getattr(cfg, k) for k in keys},
    }


def _partial_paths(output: Path) -> list[Path]:
    return sorted(output.parent.glob(output.name + ".partial*.jsonl"))


def _stored(output: Path, own: Path | None = None) -> dict[str, dict]:
    """Every stored answer under ``output`` (all ranks' files but ``own``, which its log reads);
    a line that is not a record (a torn last line, damage) is skipped: its own log refuses or
    repairs it."""
    records: dict[str, dict] = {}
    for p in _partial_paths(output):
        if p == own:
            continue
        with open(p, "rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line.decode("utf-8"))
                    records[str(rec["id"])] = rec
                except (ValueError, RecursionError, KeyError, TypeError, IndexError):
                    continue  # ValueError: bad UTF-8 or JSON, a too long number
    return records


def batch_keys(items: list[Instruction], batches: list[list[int]]) -> dict[str, str]:
    """Each instruction's id -> its batch's key: the batch index (its seed is ``seed + b``) and
    its members' ids. An answer depends on the whole batch it was sampled in (the random stream
    is shared by the rows, and padding changes the numerics), so an answer stored under another
    batch plan (another ``--limit`` or ``--skip-invalid``, instructions added) is not the answer
    this run would give."""
    keys = {}
    for b, batch in enumerate(batches):
        key = _sha(f"{b}:" + ",".join(str(items[i].index) for i in batch))
        keys.update((str(items[i].index), key) for i in batch)
    return keys


def _check_stored(
    records: dict[str, dict], items: list[Instruction], settings: dict, plan: dict[str, str], output: Path
) -> None:
    """Stored answers must come from this input, this model, these settings and the same batches.

    Args:
        plan: :func:`batch_keys` of this run.

    Raises:
        DataError: a stored answer of another instruction (the input changed), of another model
            (its weights, or its config/tokenizer, differ), with other settings, or sampled in
            another batch.
    """
    by_id = {str(i.index): i for i in items}
    for rid, rec in records.items():
        item = by_id.get(rid)
        if item is not None and rec.get("prompt_sha") != _sha(item.prompt.text):
            raise DataError(
                str(output),
                f"the stored answer {rid} is for another instruction ({item.where} changed): "
                "give -o a new file for another instruction set",
            )
        old = rec.get("settings")
        old = old if isinstance(old, dict) else {}
        if old == settings:
            if rid in plan and rec.get("batch") != plan[rid]:
                raise DataError(
                    str(output),
                    f"the stored answer {rid} was sampled in another batch (another --limit or "
                    "--skip-invalid, or instructions added, select other prompts; a resumed answer must be "
                    "the one an uninterrupted run gives): rerun with the same flags, or give -o a new file",
                )
            continue
        was = old.get("model")
        if not isinstance(was, dict):
            raise DataError(
                str(output),
                "the stored answers do not record which model made them (written by an older `fgrlhf "
                "generate`, which stored the model's path, not its contents): give -o a new file",
            )
        for part, what in (("weights", "weights"), ("files", "config.json or tokenizer files")):
            if was.get(part) != settings["model"][part]:
                raise DataError(
                    str(output),
                    f"the stored answers were generated by another model ({what} differ: {part} "
                    f"sha256 {was.get(part)} made them, this model's is {settings['model'][part]}): "
                    "give -o a new file",
                )
        keys = [*settings, *(k for k in old if k not in settings)]
        diff = {k: f"{old.get(k)!r} -> {settings.get(k)!r}" for k in keys if old.get(k) != settings.get(k)}
        raise DataError(
            str(output),
            f"the stored answers were generated with other settings ({diff}): rerun with the same "
            "flags, or give -o a new file",
        )


def default_generator(model: str) -> str:
    """The name recorded without ``--generator``: the run's directory, not the trainers' fixed
    leaf names (``runs/ppo_token/final/actor`` -> ``ppo_token``, ``runs/sft/final`` -> ``sft``;
    every PPO arm used to be called ``actor``), else the model directory's (or hub name's) own."""
    parts = list(Path(model.rstrip("/")).parts)
    while len(parts) > 1 and parts[-1] in ("actor", "final", "best"):
        parts.pop()
    return parts[-1] if parts else model


def batches_of(items: list[Instruction], lengths: list[int], batch_size: int) -> list[list[int]]:
    """Fixed batches of item positions, by prompt length (longest first: an out-of-memory shows
    at once), ties by input order."""
    order = sorted(range(len(items)), key=lambda i: (-lengths[i], items[i].index))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _pending(batches: list[list[int]], items: list[Instruction], stored: dict, rank: int, world: int):
    """This rank's batches (``b mod world``) with an answer not in ``stored``."""
    return [
        (b, batch)
        for b, batch in enumerate(batches)
        if b % world == rank and any(str(items[i].index) not in stored for i in batch)
    ]


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate every missing answer, then (rank 0) write ``cfg.output``.

    Returns:
        A summary: ``instructions``, ``already_done``, ``generated`` (this rank), ``invalid``,
        ``output`` (None on ranks > 0 or when not every answer exists yet), seconds, tokens/s.

    Raises:
        trainer.infra.outputs.OutputError: ``-o`` is a directory, the instruction set or a file
            of the model (a ValueError).
        DataError: bad input, or stored answers that do not match (see the module docstring).
        trainer.infra.config.ConfigError: a model or template that cannot be used.
        Stopped: SIGTERM, after the batch in hand was written (a rerun continues).
    """
    with sigterm_flag() as sigterm:  # from the first step (model loading included) to the end
        return _run_generate(cfg, sigterm)


def _run_generate(cfg: GenerateConfig, sigterm: threading.Event) -> dict[str, Any]:
    """:func:`run_generate`'s steps; ``sigterm`` is checked between batches."""
    import torch  # lazy: torch (fgrlhf --help is torch-free)

    from trainer.data.examples import (  # lazy: torch (fgrlhf --help is torch-free)
        build_prompt,
        checked_template,
        collate,
    )
    from trainer.infra import dist as D  # lazy: torch (fgrlhf --help is torch-free)
    from trainer.models import (  # lazy: torch (fgrlhf --help is torch-free)
        load_tokenizer,
        pad_token_id,
        read_policy_meta,
    )
    from trainer.rollout import generate  # lazy: torch (fgrlhf --help is torch-free)

    # 1. the output may not be a directory or an input; nothing is written before this
    output = check_output(cfg.output, "-o", inputs=[cfg.instructions, cfg.model])
    # 2. the model: a local directory (a Hub id from the cache), a policy, and what it is
    model_dir = resolve_model(cfg.model, cfg.allow_download)
    _check_policy_dir(model_dir, cfg.model)
    check_output(output, "-o", inputs=[model_dir, *(f for f in model_dir.iterdir() if f.is_file())])
    identity = model_identity(model_dir)
    # 3. where this process stands (torchrun: one rank of a data-parallel world)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        di = D.init_distributed(cfg.device)
        rank, world, device = di.rank, di.world_size, di.device
    else:
        rank, world = 0, 1
        use_cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
        device = torch.device("cuda" if use_cuda else "cpu")
    # 4. instructions, tokenizer, template, the settings every answer records
    items, invalid = load_instructions(cfg.instructions, cfg.skip_invalid)
    items = items[: cfg.limit] if cfg.limit is not None else items
    tokenizer = load_tokenizer(str(model_dir), "model")
    template = cfg.prompt_template or read_policy_meta(model_dir).get("prompt_template", "auto")
    template = checked_template(tokenizer, template)
    examples = [build_prompt(tokenizer, it.prompt, cfg.max_prompt_length, template) for it in items]
    generator = cfg.generator or default_generator(cfg.model)
    dtype = _checkpoint_dtype(model_dir, cfg.dtype)
    settings = _settings(cfg, identity, template, generator, dtype, device.type)
    batches = batches_of(items, [len(e.input_ids) for e in examples], cfg.batch_size)
    plan = batch_keys(items, batches)
    # 5. stored answers of another model or other settings: refused before the model is loaded;
    #    the model is loaded only when this rank has something to do
    stored = _stored(output)
    _check_stored(stored, items, settings, plan, output)
    model = (
        _load_policy(model_dir, cfg.model, dtype, device)
        if _pending(batches, items, stored, rank, world)
        else None
    )
    # 6. this rank's file (locked; a torn last line dropped), what is done, what this rank does
    own = output.with_name(output.name + (".partial.jsonl" if world == 1 else f".partial.rank{rank}.jsonl"))
    outlog = OutputLog(own, fsync=cfg.fsync)
    t0, generated, new_tokens = time.perf_counter(), 0, 0
    try:
        stored = {**_stored(output, own), **outlog.records}
        _check_stored(stored, items, settings, plan, output)
        already_done = sum(str(it.index) in stored for it in items)
        mine = _pending(batches, items, stored, rank, world)
        if mine and model is None:  # answers removed since step 5
            model = _load_policy(model_dir, cfg.model, dtype, device)
        pad_id = pad_token_id(tokenizer)
        pad_id = pad_id if pad_id is not None else (tokenizer.eos_token_id or 0)
        bar = None
        if cfg.progress and mine and rank == 0:
            from tqdm.auto import tqdm  # lazy: tqdm (heavy for the torch-free fgrlhf), only to draw a bar

            bar = tqdm(total=sum(len(b) for _, b in mine), desc="generating", unit="answer", disable=None)
        # 7. each batch: fixed seed, the rollout sampler, decode, append; SIGTERM stops between batches
        for b, batch in mine:
            if sigterm.is_set():
                raise Stopped(
                    f"stopped by SIGTERM: {generated} answers written in this run to {own} are kept; {RERUN}"
                )
            torch.manual_seed(cfg.seed + b)
            enc = collate([examples[i] for i in batch], pad_id, padding_side="left")
            ids, mask = generate(
                model,
                enc["input_ids"].to(device),
                enc["attention_mask"].to(device).bool(),
                cfg.max_new_tokens,
                tokenizer.eos_token_id,
                pad_id,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                greedy=cfg.greedy,
            )
            ids, mask = ids.cpu(), mask.cpu()
            for row, i in enumerate(batch):
                it = items[i]
                if str(it.index) in stored:
                    continue  # written before a kill: the same answer (same batch, same seed)
                toks = ids[row][mask[row]].tolist()
                finished = tokenizer.eos_token_id is not None and tokenizer.eos_token_id in toks
                text = tokenizer.decode(toks, skip_special_tokens=True).strip()
                rec = {
                    "id": str(it.index),
                    "instruction": it.prompt.instruction,
                    **({"input": it.prompt.input} if it.prompt.input.strip() else {}),
                    "output": text,
                    "generator": generator,
                    "dataset": it.dataset,
                    "num_tokens": len(toks),
                    "finished": finished,
                    "prompt_sha": _sha(it.prompt.text),
                    "batch": plan[str(it.index)],
                    "settings": settings,
                }
                outlog.append(rec)
                stored[rec["id"]] = rec
                generated += 1
                new_tokens += len(toks)
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        if sigterm.is_set():  # during the last batch: what was generated is kept; a rerun writes OUT
            raise Stopped(
                f"stopped by SIGTERM: {generated} answers written in this run to {own} are kept; {RERUN}"
            )
    finally:
        outlog.close()
    seconds = time.perf_counter() - t0
    # 8. every rank done: rank 0 writes the AlpacaEval-format file (atomic, strict JSON)
    D.barrier()
    written = None
    if rank == 0:
        stored = _stored(output)
        missing = sum(str(it.index) not in stored for it in items)
        if missing:  # every rank wrote its answers: rank 0 cannot see some ranks' files
            raise DataError(
                str(output),
                f"{missing} of {len(items)} answers are not in {output.name}.partial*.jsonl here after "
                "every rank finished: the other ranks' files are elsewhere; every node must see -o "
                "on a filesystem they share, at the same absolute path",
            )
        rows = []
        for it in items:
            rec = dict(stored[str(it.index)])
            for k in ("id", "prompt_sha", "batch", "settings"):
                rec.pop(k, None)
            rows.append(rec)
        write_json(output, rows, "-o")
        written = str(output)
    summary = {
        "instructions": len(items),
        "invalid": len(invalid),
        "already_done": already_done,
        "generated": generated,
        "output": written,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(new_tokens / seconds, 1) if seconds > 0 else None,
        "config": asdict(cfg),
    }
    D.shutdown()
    return summary
