"""A user's checkpoint, the way real ones arrive: a plain Hugging Face directory saved in bf16 or
fp16 (the stock LLaMA-7B ``config.json`` says float16; our own ``save_dtype=bfloat16`` writes
bfloat16). Every trainer must still keep fp32 master weights and optimizer states — in bf16 a
3e-6 step is below the weights' resolution and rounds away — on every rank alike; the dry run of
``init_from=<dir>`` must write the memory plan the real run of the same command then uses; and
the flash-attn / allocator / timeout choices of a GPU node are made the safe way.

The checkpoints are tiny random LLaMAs over the synthetic world's tokenizer; the PPO test runs on
2 processes (gloo) with a bf16-saved reward model as both reward model and critic source, from a
prompts file, as the 7B recipe does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _utils import clean_env, launch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HALF = {"bfloat16": torch.bfloat16, "float16": torch.float16}
LAYER = "model.layers.0.self_attn.q_proj.weight"  # a weight every step's gradient reaches


def run(cmd: list[str], timeout: int = 600, ok: bool = True) -> subprocess.CompletedProcess:
    """``cmd`` = ``[sys.executable, *target]``, as :func:`_utils.launch` runs it (one process)."""
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    return launch(cmd[1:], env=env, timeout=timeout, ok=ok)


def torchrun(script: str, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    return launch(script, args, nproc=2, env={**clean_env(), "OMP_NUM_THREADS": "1"}, ok=ok)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The synthetic world's pairs and tokenizer, a prompts file of its prompts (the
    ``instruction`` format of AlpacaFarm's unlabeled split), and a tiny random LLaMA saved as a
    plain HF directory in bf16 and in fp16, each with the tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from trainer.data.synthetic import SyntheticConfig, write_synthetic

    base = tmp_path_factory.mktemp("user")
    write_synthetic(base / "synthetic", SyntheticConfig(n_pairs=300))
    pairs, tok_dir = base / "synthetic" / "pairs.jsonl", base / "synthetic" / "tokenizer"
    tok = AutoTokenizer.from_pretrained(tok_dir)
    prompts = base / "prompts.jsonl"
    rows = [json.loads(line) for line in pairs.read_text().splitlines()[:64]]
    prompts.write_text("".join(json.dumps({"instruction": r["prompt"]}) + "\n" for r in rows))
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=256, tie_word_embeddings=False,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    fp32 = LlamaForCausalLM(config)
    ckpts = {}
    for name, dtype in HALF.items():
        d = base / f"llama_{name}"
        fp32.to(dtype).save_pretrained(d)
        tok.save_pretrained(d)
        assert json.loads((d / "config.json").read_text())["dtype"] == name  # as a real checkpoint says
        ckpts[name] = d
    return SimpleNamespace(pairs=pairs, prompts=prompts, tokenizer=tok, ckpts=ckpts, base=base)


def saved_weight(model_dir: Path, key: str = LAYER) -> torch.Tensor:
    from safetensors.torch import load_file

    (f,) = model_dir.glob("*.safetensors")
    return load_file(f)[key]


def checkpoint_tensors(step_dir: Path) -> dict[str, torch.dtype]:
    """Every tensor of a DCP checkpoint with its stored dtype (from the metadata every rank's
    shards were written against)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(step_dir)).read_metadata()
    return {
        k: m.properties.dtype
        for k, m in meta.state_dict_metadata.items()
        if isinstance(m, TensorStorageMetadata)
    }


def checkpoint_weight(step_dir: Path, suffix: str, tmp: Path) -> torch.Tensor:
    """The fp32 master of the parameter whose checkpoint key ends with ``suffix``."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp / f"{step_dir.name}.pt"
    dcp_to_torch_save(str(step_dir), str(out))
    flat: dict[str, torch.Tensor] = {}

    def walk(prefix: str, obj) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(obj, torch.Tensor):
            flat[prefix] = obj

    walk("", torch.load(out, weights_only=True))
    (key,) = [k for k in flat if k.endswith(suffix) and "optim" not in k and "state" not in k.split(".")[:2]]
    return flat[key]


def assert_fp32_masters(step_dir: Path, what: str) -> None:
    """Model and optimizer tensors of a checkpoint are fp32 (step counters may be any dtype)."""
    dtypes = checkpoint_tensors(step_dir)
    floats = {k: d for k, d in dtypes.items() if d.is_floating_point and not k.endswith(".step")}
    assert floats, f"{what}: no floating tensors in {step_dir}"
    bad = {k: d for k, d in floats.items() if d != torch.float32}
    assert not bad, f"{what}: not fp32 in the checkpoint: {list(bad.items())[:4]}"
    assert any("exp_avg" in k for k in floats), f"{what}: no AdamW states in {step_dir}"


def changed_fraction(before: torch.Tensor, after: torch.Tensor) -> float:
    return (after.float() != before.float()).float().mean().item()


# --- 1. the build itself ---------------------------------------------------------------------
@pytest.mark.parametrize("half", list(HALF))
def test_a_half_precision_checkpoint_builds_fp32_masters(world, half):
    """Through the one build path (``base_config`` → ``load_on_rank0`` → ``build_sharded``): every
    sharded parameter is fp32, equal to the checkpoint's values; the forward computes in
    ``param_dtype``; AdamW's states are fp32; and the config object the caller holds still says
    what the checkpoint says (a build that rewrites it on one rank made ranks disagree)."""
    from trainer.infra.dist import init_distributed
    from trainer.infra.runtime import build_optimizer
    from trainer.models import base_config, build_sharded, load_on_rank0, scalar_head_config

    di = init_distributed("cpu")
    d = str(world.ckpts[half])
    cfg = SimpleNamespace(
        init_from=d, arch="", dry_run=False, dry_run_layers=0, param_dtype="bfloat16", reduce_dtype="float32",
        activation_checkpointing=False, attn_implementation="sdpa", optimizer="adamw", betas=[0.9, 0.95],
        weight_decay=0.0,
    )  # fmt: skip
    config = base_config(cfg, world.tokenizer)
    assert config.dtype == HALF[half]
    for kind, c, new_head in (
        ("causal_lm", config, False),
        ("scalar_head", scalar_head_config(config, 0), True),
    ):
        sd = load_on_rank0(di, kind, c, d, 0, new_head=new_head)
        model = build_sharded(kind, c, sd and dict(sd), di, cfg, train=True)
        assert c.dtype == HALF[half], f"{kind}: the caller's config was rewritten to {c.dtype}"
        dtypes = {n: p.dtype for n, p in model.named_parameters()}
        assert set(dtypes.values()) == {torch.float32}, f"{kind}: {dtypes}"
        local = dict(model.named_parameters())[LAYER].to_local().detach().clone()
        assert torch.equal(local, saved_weight(world.ckpts[half]).float()), kind
        ids = torch.tensor([[1, 5, 6, 7]])
        out = model(input_ids=ids).logits
        assert out.dtype == torch.bfloat16, f"{kind}: compute dtype {out.dtype}"  # param_dtype
        opt = build_optimizer(model, 1e-6, cfg)
        out.float().square().mean().backward()
        opt.step()
        states = {t.dtype for s in opt.state.values() for k, t in s.items() if k != "step"}
        assert states == {torch.float32}, f"{kind}: optimizer states {states}"
        after = dict(model.named_parameters())[LAYER].to_local().detach()
        # a 1e-6 step survives on fp32 masters; on bf16 ones (ulp ~1e-4 here) it would round away
        assert changed_fraction(local, after) > 0.5, kind


# --- 2. every trainer, end to end ------------------------------------------------------------
@pytest.fixture(scope="module")
def reward_run(world):
    """``trainer/reward.py`` from the bf16 checkpoint (tokenizer from it), saving bf16 as our
    7B reward.yaml does: the reward model and critic source of the PPO test."""
    out = world.base / "rm"
    torchrun(
        "trainer/reward.py", f"init_from={world.ckpts['bfloat16']}", f"data={world.pairs}",
        f"output_dir={out}", "max_steps=3", "lr=1e-6", "warmup_steps=0", "micro_batch_size=4",
        "max_length=64", "eval_every=0", "checkpoint_every=3", "save_dtype=bfloat16", "progress=false",
    )  # fmt: skip
    return out


@pytest.mark.slow
def test_sft_and_reward_keep_fp32_masters_from_a_bf16_checkpoint(world, reward_run, tmp_path):
    """SFT (2 processes) and the reward model (the fixture): the checkpoints hold fp32 model and
    AdamW tensors, and three steps of lr 1e-6 — far below bf16's resolution of these weights —
    changed most of a layer's weights (bf16 masters would have left nearly all as they were)."""
    ckpt = world.ckpts["bfloat16"]
    start = saved_weight(ckpt)
    (step,) = sorted((reward_run / "checkpoints").glob("step_*"))
    assert_fp32_masters(step, "reward")
    assert changed_fraction(start, checkpoint_weight(step, LAYER, tmp_path)) > 0.5
    assert json.loads((reward_run / "final" / "config.json").read_text())["dtype"] == "bfloat16"
    out = world.base / "sft"
    torchrun(
        "trainer/sft.py", f"init_from={ckpt}", f"data={world.pairs}", f"output_dir={out}", "max_steps=3",
        "lr=1e-6", "warmup_steps=0", "micro_batch_size=4", "max_length=64", "eval_every=0",
        "checkpoint_every=3", "progress=false",
    )  # fmt: skip
    (step,) = sorted((out / "checkpoints").glob("step_*"))
    assert_fp32_masters(step, "sft")
    assert changed_fraction(start, checkpoint_weight(step, LAYER, tmp_path)) > 0.5
    assert changed_fraction(start, saved_weight(out / "final")) > 0.5  # saved in fp32 (save_dtype)


@pytest.mark.slow
def test_ppo_from_bf16_checkpoints_on_two_ranks(world, reward_run, tmp_path):
    """The 7B recipe's PPO command at tiny size: ``init_from`` a bf16 checkpoint, a bf16-saved
    token RM as ``reward_model`` and as ``critic_from``, a ``prompts`` file, 2 ranks. Both ranks
    build the same dtypes (the checkpoint's metadata is written from every rank's shards: a rank
    with bf16 critic shards would show there, or fail the build's check), the actor's and
    critic's masters and AdamW states are fp32, the actor learns below bf16 resolution, and the
    final actor is a causal LM ``fgrlhf generate`` can read."""
    out = tmp_path / "ppo"
    rm = reward_run / "final"
    torchrun(
        "trainer/ppo.py", f"init_from={world.ckpts['bfloat16']}", f"reward_model={rm}", f"critic_from={rm}",
        f"prompts={world.prompts}", f"output_dir={out}", "iterations=2", "rollout_batch_size=8",
        "micro_batch_size=4", "max_new_tokens=8", "max_prompt_length=32", "actor_lr=1e-6", "critic_lr=1e-6",
        "checkpoint_every=2", "progress=false", "plots=false", "report=false",
    )  # fmt: skip
    (step,) = sorted((out / "checkpoints").glob("step_*"))
    assert_fp32_masters(step, "ppo")
    dtypes = checkpoint_tensors(step)
    assert any(k.startswith("critic") for k in dtypes) and any(k.startswith("actor") for k in dtypes)
    start = saved_weight(world.ckpts["bfloat16"])
    assert changed_fraction(start, saved_weight(out / "final" / "actor")) > 0.5
    meta = json.loads((out / "final" / "actor" / "config.json").read_text())
    assert meta["architectures"] == ["LlamaForCausalLM"]


# --- 3. the dry run of the user's command writes the plan the real run uses ------------------------
@pytest.mark.slow
def test_dry_run_of_init_from_writes_the_plan_the_real_run_uses(world, reward_run, tmp_path):
    """``dry_run=true`` with ``init_from=<dir>`` (shapes from its config.json, no weights read)
    writes ``memory_plan.json``; the same command without ``dry_run`` says ``memory plan:
    measured``. A dry run of a config whose model is required (``init_from: ???``) but unset
    refuses, naming ``init_from=`` and ``arch=``, instead of measuring the tiny default."""
    out = tmp_path / "ppo"
    rm = reward_run / "final"
    cmd = [
        f"init_from={world.ckpts['bfloat16']}", f"reward_model={rm}", f"prompts={world.prompts}",
        f"output_dir={out}", "rollout_batch_size=8", "micro_batch_size=4", "max_new_tokens=8",
        "max_prompt_length=32", "iterations=1", "progress=false", "plots=false", "report=false",
        "dry_run_world_size=2",
    ]  # fmt: skip
    run([sys.executable, "trainer/ppo.py", *cmd, "dry_run=true"])
    plan = json.loads((out / "memory_plan.json").read_text())
    assert plan["key"]["model"]["actor"]["hidden_size"] == 32
    p = torchrun("trainer/ppo.py", *cmd, "memory_limit_gb=50")
    assert "memory plan: measured by the dry run" in p.stdout + p.stderr
    # the shipped 7B config, dry_run=true but no model: refused before anything is measured
    bare = run([sys.executable, "trainer/ppo.py", "--config", "configs/llama7b_8xa100/ppo.yaml",
                "dry_run=true", f"output_dir={tmp_path / 'bare'}"], ok=False)  # fmt: skip
    assert bare.returncode == 2, bare.stdout[-2000:] + bare.stderr[-2000:]
    assert "init_from=" in bare.stderr and "arch=" in bare.stderr
    assert not (tmp_path / "bare").exists()


@pytest.mark.slow
def test_a_dry_run_stops_at_the_first_phase_over_the_limit():
    """Generation over the limit: the dry run stops there, naming it, without measuring score,
    rewards and train first (they would take minutes at real sizes)."""
    p = run(
        [sys.executable, "trainer/ppo.py", "--config", "configs/llama7b_8xa100/ppo.yaml", "dry_run=true",
         "arch=llama-7b", "dry_run_layers=1", "memory_limit_gb=1", "rollout_batch_size=8",
         "forward_batch_size=8", "num_minibatches=1", "micro_batch_size=8", "max_new_tokens=16"],
        ok=False,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode == 2 and "dry run, phase 'generate'" in p.stderr, out[-3000:]
    assert "phase 'score'" not in out and "phase 'train'" not in out


# --- 4. the node's environment: flash-attn, the allocator, the collective timeout -------------
def test_flash_attn_is_chosen_only_when_it_imports_and_runs(tmp_path, monkeypatch):
    """A ``flash_attn`` that is installed but cannot import (a wheel built for another torch:
    an undefined symbol) is not chosen; one that imports and runs is."""
    from trainer import models

    broken = tmp_path / "broken" / "flash_attn"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text("raise ImportError('undefined symbol: _ZN3c10...')\n")
    monkeypatch.syspath_prepend(str(broken.parent))
    monkeypatch.setattr(models, "_FLASH_ATTN_OK", {})
    sys.modules.pop("flash_attn", None)
    assert models.attn_implementation("auto", torch.device("cuda")) == "sdpa"
    assert models.attn_implementation("auto", torch.device("cpu")) == "sdpa"
    working = tmp_path / "working" / "flash_attn"
    working.mkdir(parents=True)
    (working / "__init__.py").write_text("def flash_attn_func(q, k, v, causal=False):\n    return q\n")
    monkeypatch.syspath_prepend(str(working.parent))
    monkeypatch.setattr(models, "_FLASH_ATTN_OK", {})
    sys.modules.pop("flash_attn", None)
    assert models.flash_attn_works(torch.device("cpu"))  # the probe itself, on a device we have
    sys.modules.pop("flash_attn", None)


def test_allocator_and_timeout_defaults(monkeypatch):
    """``expandable_segments`` unless the user set ``PYTORCH_CUDA_ALLOC_CONF``; the collective
    timeout is a config key with a long default, validated, and reaches the process group."""
    from trainer.infra.config import ConfigError, load_config
    from trainer.infra.dist import default_cuda_alloc_conf
    from trainer.ppo import PPOConfig

    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    assert default_cuda_alloc_conf() == "expandable_segments:True"
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:512")
    assert default_cuda_alloc_conf() == "max_split_size_mb:512"
    assert load_config(PPOConfig, []).dist_timeout_min >= 30
    assert load_config(PPOConfig, ["dist_timeout_min=90"]).dist_timeout_min == 90
    with pytest.raises(ConfigError, match="dist_timeout_min"):
        load_config(PPOConfig, ["dist_timeout_min=0"]).check()


def test_timeout_reaches_the_process_group():
    """``init_distributed``'s timeout is the one the process group is created with."""
    code = (
        "import torch.distributed as dist\n"
        "seen, real = {}, dist.init_process_group\n"
        "dist.init_process_group = lambda *a, **k: (seen.update(k), real(*a, **k))[1]\n"
        "from trainer.infra.dist import init_distributed\n"
        "init_distributed('cpu', timeout_min=123)\n"
        "print('TIMEOUT', seen['timeout'].total_seconds())\n"
    )
    assert "TIMEOUT 7380.0" in run([sys.executable, "-c", code]).stdout
