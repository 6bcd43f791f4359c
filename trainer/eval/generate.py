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

Output: ``OUT`` is a JSON list in AlpacaEval's format — ``instruction`` (the instruction, and
``input`` separately when the record had one), ``output``, ``generator``, ``dataset`` — plus
``num_tokens`` (response tokens) and ``finished`` (False when cut at ``--max-new-tokens``).

Resumable: each finished answer is appended at once to ``OUT.partial.jsonl`` (one file per rank
under ``torchrun``: ``OUT.partial.rank<r>.jsonl``; :class:`~trainer.infra.appendlog.AppendLog`:
whole lines, fsync, a torn last line dropped); a rerun generates only what is missing and writes
``OUT`` when every answer exists. The answers do not depend on where a run was stopped: the
prompts are cut into fixed batches (sorted by length, ``--batch-size``), batch ``b`` is sampled
with the seed ``seed + b`` and runs on rank ``b mod world``. A rerun with other settings (model,
sampling, template, lengths, batch size, seed) than the stored answers is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from trainer.data.formats import DataError, Prompt, prompt_parts, read_records
from trainer.infra.appendlog import AppendLog

log = logging.getLogger(__name__)

__all__ = ["GenerateConfig", "OutputLog", "load_instructions", "run_generate"]


@dataclass
class GenerateConfig:
    """Settings of ``fgrlhf generate``.

    Attributes:
        model: a ``transformers`` causal-LM directory (``runs/ppo/final/actor``, ``runs/sft/final``)
            or hub name available offline.
        instructions: the instruction set (AlpacaEval/AlpacaFarm JSON or JSONL).
        output: the AlpacaEval-format JSON to write.
        generator: the name recorded in every output (default: the model directory's name).
        max_new_tokens: most response tokens.
        max_prompt_length: prompts are cut from the left to this many tokens (BOS kept).
        temperature: sampling temperature (ignored with ``greedy``).
        top_p: nucleus sampling mass (1 = plain sampling).
        greedy: argmax decoding.
        seed: batch ``b`` is sampled with ``seed + b``.
        batch_size: prompts per batch (fixed batches: changing it changes sampled answers).
        prompt_template: ``auto|plain|alpaca|chat``, or None for the policy's own (its
            ``fgrlhf_policy.json``; ``auto`` without one).
        dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16``, ``float16``.
        device: ``auto`` (CUDA when available), ``cuda`` or ``cpu``.
        limit: only the first ``limit`` instructions.
        skip_invalid: skip (and count) bad records instead of stopping.
        progress: a progress bar.
        fsync: fsync after every answer.
    """

    model: str
    instructions: str
    output: str
    generator: str | None = None
    max_new_tokens: int = 512
    max_prompt_length: int = 1024
    temperature: float = 0.7
    top_p: float = 1.0
    greedy: bool = False
    seed: int = 0
    batch_size: int = 8
    prompt_template: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    limit: int | None = None
    skip_invalid: bool = False
    progress: bool = True
    fsync: bool = True


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
    out, bad = [], []
    for where, rec in read_records(path):
        try:
            if isinstance(rec, DataError):
                raise rec
            prompt = prompt_parts(rec, path, where)
            dataset = rec.get("dataset")
            if dataset is not None and not isinstance(dataset, str):
                raise DataError(path, f"expected a string, got {type(dataset).__name__}", where, "dataset")
        except DataError as e:
            if not skip_invalid:
                raise
            bad.append(e)
            continue
        out.append(Instruction(len(out) + len(bad), prompt, dataset, where))
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


def _settings(cfg: GenerateConfig, template: str) -> dict[str, Any]:
    """What the answers depend on (a rerun with other values is refused)."""
    keys = ("max_new_tokens", "max_prompt_length", "temperature", "top_p", "greedy", "seed", "batch_size")
    return {"model": str(cfg.model), "template": template, **{k: getattr(cfg, k) for k in keys}}


def _partial_paths(output: Path) -> list[Path]:
    return sorted(output.parent.glob(output.name + ".partial*.jsonl"))


def _stored(output: Path, own: Path) -> dict[str, dict]:
    """Every stored answer under ``output`` (all ranks' files; the own file is read by its log)."""
    records: dict[str, dict] = {}
    for p in _partial_paths(output):
        if p == own:
            continue
        with open(p, "rb") as fh:
            for line in fh:
                try:
                    rec = json.loads(line.decode("utf-8"))
                    records[str(rec["id"])] = rec
                except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
                    continue  # a torn last line of another rank's file: its own log repairs it
    return records


def _check_stored(records: dict[str, dict], items: list[Instruction], settings: dict, output: Path) -> None:
    """Stored answers must come from this input and these settings.

    Raises:
        DataError: a stored answer of another instruction (the input changed) or other settings.
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
        if rec.get("settings") != settings:
            diff = {k: (rec.get("settings", {}).get(k), v) for k, v in settings.items()}
            diff = {k: f"{a!r} -> {b!r}" for k, (a, b) in diff.items() if a != b}
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


def run_generate(cfg: GenerateConfig) -> dict[str, Any]:
    """Generate every missing answer, then (rank 0) write ``cfg.output``.

    Returns:
        A summary: ``instructions``, ``already_done``, ``generated`` (this rank), ``invalid``,
        ``output`` (None on ranks > 0 or when not every answer exists yet), seconds, tokens/s.

    Raises:
        DataError: bad input, or stored answers that do not match (see the module docstring).
        trainer.infra.config.ConfigError: a model or template that cannot be used.
    """
    import time

    import torch
    from transformers import AutoModelForCausalLM

    from trainer.data.examples import build_prompt, checked_template, collate
    from trainer.infra import dist as D
    from trainer.models import check_model_dir, load_tokenizer, pad_token_id, read_policy_meta
    from trainer.rollout import generate

    # 1. where this process stands (torchrun: one rank of a data-parallel world)
    if os.environ.get("WORLD_SIZE", "1") != "1":
        di = D.init_distributed(cfg.device)
        rank, world, device = di.rank, di.world_size, di.device
    else:
        rank, world = 0, 1
        use_cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
        device = torch.device("cuda" if use_cuda else "cpu")
    output = Path(cfg.output)
    # 2. instructions, tokenizer, template
    items, invalid = load_instructions(cfg.instructions, cfg.skip_invalid)
    items = items[: cfg.limit] if cfg.limit is not None else items
    if Path(cfg.model).exists():
        check_model_dir(cfg.model, "model")
    tokenizer = load_tokenizer(cfg.model, "model")
    template = cfg.prompt_template or read_policy_meta(cfg.model).get("prompt_template", "auto")
    template = checked_template(tokenizer, template)
    examples = [build_prompt(tokenizer, it.prompt, cfg.max_prompt_length, template) for it in items]
    settings = _settings(cfg, template)
    generator = cfg.generator or default_generator(cfg.model)
    # 3. what is already done (every rank's file), what this rank does
    own = output.with_name(output.name + (".partial.jsonl" if world == 1 else f".partial.rank{rank}.jsonl"))
    outlog = OutputLog(own, fsync=cfg.fsync)
    t0, generated, new_tokens = time.perf_counter(), 0, 0
    try:
        stored = {**_stored(output, own), **outlog.records}
        _check_stored(stored, items, settings, output)
        already_done = sum(str(it.index) in stored for it in items)
        batches = batches_of(items, [len(e.input_ids) for e in examples], cfg.batch_size)
        mine = [
            (b, batch)
            for b, batch in enumerate(batches)
            if b % world == rank and any(str(items[i].index) not in stored for i in batch)
        ]
        # 4. the model, as the checkpoint stores it unless told otherwise
        dtype = "auto" if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
        model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=dtype).to(device).eval()
        pad_id = pad_token_id(tokenizer)
        pad_id = pad_id if pad_id is not None else (tokenizer.eos_token_id or 0)
        bar = None
        if cfg.progress and mine and rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=sum(len(b) for _, b in mine), desc="generating", unit="answer", disable=None)
        # 5. each batch: fixed seed, the rollout sampler, decode, append
        for b, batch in mine:
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
    finally:
        outlog.close()
    seconds = time.perf_counter() - t0
    # 6. every rank done: rank 0 writes the AlpacaEval-format file
    D.barrier()
    written = None
    if rank == 0:
        stored = _stored(output, Path("/nonexistent"))
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
            for k in ("id", "prompt_sha", "settings"):
                rec.pop(k, None)
            rows.append(rec)
        tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, output)
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
