"""Our PPO loop (``trainer/ppo.py``) against TRL's (``trl.experimental.ppo.PPOTrainer``, trl 0.29.1)
on identical work, CPU, one process per side::

    python bench/ppo_vs_trl.py [--settings small long] [--kernels both] [--iterations 6]
                               [--warmup 2] [--repeats 1] [--threads N] [--count] [--record]

What runs. Both sides get the same random-init LLaMA (vocab 512, hidden 64, 2 layers, 4 heads,
MLP 256, fp32, sdpa attention): the policy and a frozen copy as reference, and one random scalar-head
model as reward model and as the value model's initialisation (ours: ``LlamaForTokenClassification``,
a ``scalar_head`` written by ``trainer.models.save_pretrained`` with ``level: sequence``; TRL: the
same weights loaded as ``LlamaForSequenceClassification``, num_labels=1). The same prompts (16
token ids each: BOS + 15 words, ``prompt_template=plain``; the dataset has exactly one rollout
batch of prompts, so both sides use every prompt once per iteration), sampling at temperature 1
(top_p 1, top_k 0), KL k1 with β = 0.05, sequence-level reward (the RM's last-token score at the
last response token, −β·KL on every token: our ``reward_level=sequence``), GAE γ 1 λ 0.95 with
whitened advantages, clip 0.2 / value clip 0.2, vf_coef 0.5, 1 PPO epoch of 2 minibatches,
fused AdamW on both sides, no gradient clipping (TRL's loop never clips: ours
gets ``max_grad_norm=0``), no activation checkpointing, no bf16, no dropout. Settings:

    small: 16 rollouts x 32 response tokens, micro-batch 8  (= the minibatch)
    long:  64 rollouts x 256 response tokens, micro-batch 32 (= the minibatch)

Every response is exactly ``response`` tokens on both sides: our tokenizer has no EOS token (the
trainer then runs every row to ``max_new_tokens``: ``rlhf.missing_eos``/``eos_positions`` are
all-False), and TRL runs with ``stop_token=None`` and a config without ``eos_token_id``, so its
``generate`` never stops early (TRL's tokenizer names ``</s>`` as EOS only because its loop counts
EOS tokens for a metric; nothing stops or is masked on it).

How it is timed. Each side runs in its own fresh subprocess, ``--warmup`` + ``--iterations``
iterations; with ``--repeats N`` the order of the sides alternates per repeat. Threads: the same
``torch.set_num_threads`` / ``OMP_NUM_THREADS`` on both sides (``--threads``, default all cores).
Seconds per iteration are wall clock between the ends of consecutive iterations, stamped with
``time.perf_counter()`` inside each process (the first ``--warmup`` intervals are dropped):

* ours: ``trainer/ppo.py``'s ``main`` in one process (the code ``python trainer/ppo.py ...``
  runs, imported by a small worker of this script), with ``MetricsLog.write`` wrapped to add a
  ``bench_wall_s`` stamp to each ``metrics.jsonl`` record: the record is written at step 6, once
  per iteration, after the iteration's all-reduce and host copy; ``metrics.jsonl`` itself has no
  timestamp. The per-phase split is the run's own ``time_{generate,score,rewards,train}_s``
  (``Phases``; ``rewards`` = step 3 rewards + KL and step 4 GAE); the wall interval also holds
  step 6 (logging) and the loop's bookkeeping, so it is a little more than their sum.
* TRL: a ``TrainerCallback`` whose ``on_step_end`` (called once per PPO update in
  ``PPOTrainer.train``, after the metrics and ``self.log``) stamps the time; the interval also
  holds TRL's ``gc.collect()`` / ``empty_cache`` and its per-update metrics, as shipped.

``kernels``: ``fused`` = our default dispatch (the fgkernels C++ CPU kernels for token_logprobs and
gae), ``reference`` = ``FGKERNELS_BACKEND=reference`` (eager PyTorch). TRL has no such switch, so
its column is the same run for both rows.

Same work, counted (``--count`` runs one iteration per side with global forward, backward and
optimizer-step hooks and prints the table). Small setting, B = 16 rollouts, P = 16, R = 32; backbone
forwards as calls x [rows x positions], the LM / score head's positions in parentheses:

    =================  =====================================  =====================================
    per iteration      ours (trainer/ppo.py)                  TRL PPOTrainer
    =================  =====================================  =====================================
    generate (policy)  1 x [16x16] + 31 x [16x1] (head 1 pos.) 1 x [16x16] + 31 x [16x1] (head 1 pos.)
                       = 512 sampled tokens, KV cache          = 512 sampled tokens, KV cache
    old log-probs      none: the sampling logits (default)     none: generate()'s scores
    ref log-probs      1 x [16x48] (head 33 pos.)              1 x [16x48] (head 48 pos.)
    values             1 x [16x48] (head 48 pos.)              1 x [16x48] (head 48 pos.)
    reward             1 x [16x48] (head 48 pos.)              1 x [16x48] (head 48 pos.)
    train, grad        policy 2 x [8x48] (head 33 pos.) + 2    policy 2 x [8x48] (head 48 pos.) + 2
                       backwards; value 2 x [8x48] + 2 bwd     backwards; value 2 x [8x48] + 2 bwd
    optimizer steps    4: 2 x actor (196,928 params) +         2: one AdamW over both models
                       2 x critic (164,225 params)             (361,152 params; no score bias)
    =================  =====================================  =====================================

The long setting is the same with 64 rows, 1 prefill + 255 decode forwards (16,384 sampled tokens),
[64x272] scoring forwards and [32x272] micro-batches (= minibatches). Ours' two backwards per
micro-batch are two ``backward()`` calls (actor loss, critic loss); TRL's one (pg + vf loss).
The differences that remain, and whom they favour:

* old log-probs: both sides take them from the sampling logits (ours: ``old_logprobs=generate``,
  the default since 2026-12-02; with ``old_logprobs=recompute`` ours adds a policy forward over
  the rollout, as it did before). Ours also takes the entropy there (TRL: in its train loop).
* ours is FSDP2-wrapped even in one process (a world of one over gloo; per-layer hooks, DTensor
  parameters, the unshard/reshard around generation). Favours TRL.
* logits: ours computes the LM head only at the last R+1 positions (``logits_to_keep``) in
  scoring and training; TRL computes it at every position (prompt included) and also keeps every
  layer's hidden states (``output_hidden_states=True``). Favours us; it is how each loop is written.
* TRL computes the policy entropy in the train loop (a softmax over every micro-batch's logits,
  no grad); ours computes it once in scoring (the fused log-prob kernel's entropy output).
* ours runs two AdamW (actor, critic) per minibatch, TRL one over both models' parameters: the
  same parameters updated. Both are torch's fused AdamW (ours since 2026-12-02; TRL's own default
  on torch >= 2.8 is ``adamw_torch_fused``, this script's default ``--trl-optim``); the run
  recorded on 2026-12-02 01:58 gave TRL ``adamw_torch`` (its two steps a few ms slower in all).
* TRL's batch sizes: in trl 0.29.1 the rollout batch is ``per_device_train_batch_size x
  gradient_accumulation_steps`` (no ``num_mini_batches`` factor) and a minibatch is
  1/``num_mini_batches`` of it, so ``gradient_accumulation_steps`` = rollouts / micro-batch (2 here:
  a minibatch is one micro-batch on both sides). Accelerate's ``accumulate`` would then step every
  2 micro-batches, once per iteration; but the dataset is one rollout batch, so every batch is the
  dataloader's last and ``accumulate`` syncs (steps) after every micro-batch: one optimizer step
  per minibatch, as ours (``--count`` checks it: 2 steps per iteration). TRL as shipped, unpatched;
  its loss is divided by 2 (``accelerator.backward``), which changes no work.
* TRL ends a row's masks at a sampled pad token (id 0, ~1/512 per token for the random policy)
  and masks it out of attention; ours keeps every sampled token. Compute is dense on both sides
  (same tensor shapes), only the masks differ.
* our side runs with ``deterministic=false`` (TRL sets no deterministic algorithms); learning
  rates differ (ours 1e-3 actor / 2e-3 critic, TRL 1e-3 for both, constant): no effect on the work.
* ours computes more per-iteration statistics (explained variance, KL, clip fractions: fp64 sums,
  one host copy); TRL's metrics are several ``.item()`` host syncs and a ``PrinterCallback`` line.

Output: the table (setting | kernels | ours s/it | TRL s/it | ours/TRL | our phases | TRL's
generate: the seconds in its ``batch_generation``, timed by a wrapper around that module function),
medians over every measured iteration of every repeat; ``--record`` appends it to
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import record  # noqa: E402

VOCAB, HIDDEN, LAYERS, HEADS, MLP = 512, 64, 2, 4, 256
PROMPT_LEN = 16
NUM_MINIBATCHES = 2
KL_COEF, VF_COEF, CLIP, VALUE_CLIP, GAMMA, LAM = 0.05, 0.5, 0.2, 0.2, 1.0, 0.95
PAD, BOS, UNK, TRL_EOS = "<pad>", "<s>", "<unk>", "</s>"
PHASES = ("generate", "score", "rewards", "train")
FUSED_OPS = ("token_logprobs", "gae")  # the fgkernels ops trainer/ppo.py calls


@dataclass(frozen=True)
class Setting:
    rollouts: int
    response: int
    micro: int

    @property
    def minibatch(self) -> int:
        return self.rollouts // NUM_MINIBATCHES


SETTINGS = {"small": Setting(16, 32, 8), "long": Setting(64, 256, 32)}


# --------------------------------------------------------------------------------------------
# Shared inputs: tokenizer, policy, reward model, prompts
# --------------------------------------------------------------------------------------------
def make_tokenizer():
    """A word-level tokenizer of exactly VOCAB ids: <pad> <s> <unk> </s> w4 ... w511; no EOS token
    (``</s>`` is an ordinary word for us; TRL's copy names it EOS for its metrics)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = [PAD, BOS, UNK, TRL_EOS] + [f"w{i}" for i in range(4, VOCAB)]
    tok = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, pad_token=PAD, unk_token=UNK)


def llama_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=HEADS, intermediate_size=MLP, max_position_embeddings=512,
        tie_word_embeddings=False, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=None,
    )  # fmt: skip


def make_assets(work: Path, n_prompts: int, seed: int = 0) -> Path:
    """``work/assets``: ``policy/`` (a random LLaMA causal LM + tokenizer), ``rm/`` (a random
    sequence-level scalar-head reward model, as ``trainer/reward.py`` writes one) and
    ``prompts.jsonl`` + ``prompt_ids.json`` (``n_prompts`` prompts of exactly PROMPT_LEN ids)."""
    import random

    import torch
    from transformers import AutoModelForTokenClassification, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from trainer.data.examples import build_prompt
    from trainer.models import save_pretrained, scalar_head_config

    out = work / "assets"
    hf_logging.disable_progress_bar()
    tok = make_tokenizer()
    config = llama_config(tok)
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(config).float()
    policy.generation_config.eos_token_id = None
    policy.save_pretrained(out / "policy")
    tok.save_pretrained(out / "policy")
    torch.manual_seed(seed + 1)
    r_cfg = scalar_head_config(config, tok.pad_token_id)
    rm = AutoModelForTokenClassification.from_config(r_cfg, dtype=torch.float32)
    meta = {"level": "sequence", "prompt_template": "plain", "variant": "random init (bench/ppo_vs_trl.py)"}
    save_pretrained(rm.state_dict(), r_cfg, "scalar_head", out / "rm", tok, reward_meta=meta)
    rng = random.Random(seed)
    texts = [" ".join(f"w{rng.randrange(4, VOCAB)}" for _ in range(PROMPT_LEN - 1)) for _ in range(n_prompts)]
    ids = [build_prompt(tok, t, PROMPT_LEN, "plain").input_ids for t in texts]
    if any(len(x) != PROMPT_LEN for x in ids):
        raise SystemExit(f"prompts do not render to {PROMPT_LEN} tokens: {[len(x) for x in ids]}")
    with open(out / "prompts.jsonl", "w") as fh:
        fh.writelines(json.dumps({"prompt": t}) + "\n" for t in texts)
    (out / "prompt_ids.json").write_text(json.dumps(ids))
    return out


def prompt_file(assets: Path, n: int) -> Path:
    """The first ``n`` prompts (one rollout batch: every prompt once per iteration)."""
    path = assets / f"prompts_{n}.jsonl"
    if not path.exists():
        path.write_text("".join((assets / "prompts.jsonl").read_text().splitlines(keepends=True)[:n]))
    return path


# --------------------------------------------------------------------------------------------
# Our side: trainer/ppo.py
# --------------------------------------------------------------------------------------------
def ours_args(s: Setting, assets: Path, out: Path, iterations: int, threads: int) -> list[str]:
    """``trainer/ppo.py`` key=value arguments for setting ``s``."""
    return [
        f"init_from={assets / 'policy'}", f"tokenizer={assets / 'policy'}", f"reward_model={assets / 'rm'}",
        f"prompts={prompt_file(assets, s.rollouts)}", "prompt_template=plain",
        f"max_prompt_length={PROMPT_LEN}", "reward_level=sequence", "critic_from=auto",
        f"rollout_batch_size={s.rollouts}", f"forward_batch_size={s.rollouts}",
        f"num_minibatches={NUM_MINIBATCHES}", f"micro_batch_size={s.micro}", "ppo_epochs=1",
        f"max_new_tokens={s.response}", "temperature=1.0", "top_p=1.0", f"kl_coef={KL_COEF}",
        "kl_estimator=k1", "kl_controller=fixed", "whiten_advantages=true", "entropy_coef=0",
        "reward_norm=false", "missing_eos_penalty=0", f"gamma={GAMMA}", f"lam={LAM}", f"clip_eps={CLIP}",
        f"value_clip_eps={VALUE_CLIP}", f"vf_coef={VF_COEF}", "max_grad_norm=0", "weight_decay=0",
        "deterministic=false", f"num_threads={threads}", "device=cpu", "param_dtype=float32",
        "activation_checkpointing=false", "attn_implementation=sdpa", f"iterations={iterations}",
        "checkpoint_every=0", "save_final=false", "plots=false", "report=false", "progress=false",
        "save_rollouts_every=0", "report_to=[]", "resume=false", "seed=0", f"output_dir={out}",
    ]  # fmt: skip


def tag_ours(models) -> None:
    """Name the four models of ``trainer.ppo.build_models`` for the counting hooks."""
    for role, m in (("policy", models.actor), ("ref", models.ref), ("value", models.critic)):
        tag(m, role)
    tag(models.reward.model, "reward")


def ours_worker(spec: dict) -> None:
    """Run ``trainer/ppo.py``'s ``main`` in this process, each metrics record stamped with
    ``bench_wall_s`` (``time.perf_counter()`` at the write); ``--count``: hooks count the work.
    Prints ``bench-backends: op=backend ...``, what fgkernels dispatches CPU calls to here."""
    import torch

    import fgkernels._dispatch as dispatch
    import trainer.ppo as ppo
    from trainer.infra import metrics
    from trainer.infra.dist import exit_process

    cpu = torch.device("cpu")
    print(
        "bench-backends: " + " ".join(f"{op}={dispatch.resolve_backend(op, None, cpu)}" for op in FUSED_OPS)
    )
    write = metrics.MetricsLog.write
    metrics.MetricsLog.write = lambda self, rec: write(self, {**rec, "bench_wall_s": time.perf_counter()})
    counts = None
    if spec.get("count_out"):
        counts = install_counters()
        build = ppo.build_models

        def tagged_build(*args, **kwargs):
            models = build(*args, **kwargs)
            tag_ours(models)
            return models

        ppo.build_models = tagged_build
    rc = ppo.main(spec["args"])
    if counts is not None:
        Path(spec["count_out"]).write_text(json.dumps(counts))
    exit_process(rc)


# --------------------------------------------------------------------------------------------
# TRL's side: trl.experimental.ppo.PPOTrainer
# --------------------------------------------------------------------------------------------
def trl_config(s: Setting, out: Path, iterations: int, optim: str):
    from trl.experimental.ppo import PPOConfig

    return PPOConfig(
        output_dir=str(out), per_device_train_batch_size=s.micro,
        # TRL 0.29.1: the rollout batch is per_device_train_batch_size x gradient_accumulation_steps
        gradient_accumulation_steps=s.rollouts // s.micro, num_mini_batches=NUM_MINIBATCHES,
        num_ppo_epochs=1, response_length=s.response, temperature=1.0, stop_token=None,
        stop_token_id=None, missing_eos_penalty=None, local_rollout_forward_batch_size=s.rollouts,
        total_episodes=s.rollouts * iterations, kl_coef=KL_COEF, kl_estimator="k1", vf_coef=VF_COEF,
        cliprange=CLIP, cliprange_value=VALUE_CLIP, gamma=GAMMA, lam=LAM, whiten_rewards=False,
        learning_rate=1e-3, lr_scheduler_type="constant", adam_beta1=0.9, adam_beta2=0.95, weight_decay=0.0,
        optim=optim, max_grad_norm=0.0, use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        report_to="none", num_sample_generations=0, save_strategy="no", eval_strategy="no",
        logging_steps=10**6, disable_tqdm=True, seed=0, dataloader_num_workers=0,
    )  # fmt: skip


def trl_worker(spec: dict) -> None:
    """Build TRL's PPOTrainer on the shared models and prompts and train; each ``on_step_end``
    appends ``time.perf_counter()`` and the update's seconds in TRL's ``batch_generation`` to
    ``spec['times_out']`` (one JSON line per PPO update)."""
    import torch

    torch.set_num_threads(spec["threads"])
    from datasets import Dataset
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForSequenceClassification, TrainerCallback
    from trl.experimental.ppo import PPOTrainer, ppo_trainer

    s, assets, out = Setting(**spec["setting"]), Path(spec["assets"]), Path(spec["out"])
    counts = install_counters() if spec.get("count_out") else None
    tok = AutoTokenizer.from_pretrained(assets / "policy")
    tok.eos_token = TRL_EOS  # only for TRL's EOS metrics: stop_token=None, nothing stops on it
    kw = {"dtype": torch.float32, "attn_implementation": "sdpa"}
    policy = LlamaForCausalLM.from_pretrained(assets / "policy", **kw)
    ref = LlamaForCausalLM.from_pretrained(assets / "policy", **kw)
    value = LlamaForSequenceClassification.from_pretrained(assets / "rm", num_labels=1, **kw)
    reward = LlamaForSequenceClassification.from_pretrained(assets / "rm", num_labels=1, **kw)
    for m in (policy, ref):
        m.generation_config.eos_token_id = None
    for role, m in (("policy", policy), ("ref", ref), ("value", value), ("reward", reward)):
        tag(m, role)
    ids = json.loads((assets / "prompt_ids.json").read_text())[: s.rollouts]
    times_out = Path(spec["times_out"])
    gen_s = [0.0]  # seconds in TRL's batch_generation since the last update ended
    batch_generation = ppo_trainer.batch_generation

    def timed_generation(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return batch_generation(*args, **kwargs)
        finally:
            gen_s[0] += time.perf_counter() - t0

    ppo_trainer.batch_generation = timed_generation  # (a timer only: the call is unchanged)

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            rec = {"step": state.global_step, "bench_wall_s": time.perf_counter(), "generate_s": gen_s[0]}
            gen_s[0] = 0.0
            with times_out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")

    trainer = PPOTrainer(
        args=trl_config(s, out, spec["iterations"], spec["optim"]), processing_class=tok, model=policy,
        ref_model=ref, reward_model=reward, value_model=value,
        train_dataset=Dataset.from_dict({"input_ids": ids}), callbacks=[Stamp()],
    )  # fmt: skip
    trainer.train()
    if counts is not None:
        Path(spec["count_out"]).write_text(json.dumps(counts))


# --------------------------------------------------------------------------------------------
# Counting hooks (--count): forwards, backwards and optimizer steps per model
# --------------------------------------------------------------------------------------------
def tag(model, role: str) -> None:
    """Mark a causal LM / scalar-head model's backbone and head for :func:`install_counters`."""
    model.model._bench_role = role
    head = model.lm_head if hasattr(model, "lm_head") else model.score
    head._bench_role = f"{role} head"


def install_counters() -> dict:
    """Global hooks filling ``{"forward": {"role|grad|BxT": calls}, "backward": {role: n},
    "optimizer": [params per step]}``: every forward of a tagged backbone or head with its
    ``[B, T]`` (the head: positions the head is computed at), the backward passes through each
    backbone, and every optimizer step."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    counts: dict = {"forward": {}, "backward": {}, "optimizer": []}

    def on_backward(role):
        def hook(_grad):
            counts["backward"][role] = counts["backward"].get(role, 0) + 1

        return hook

    def forward_hook(module, args, kwargs, output):
        role = getattr(module, "_bench_role", None)
        if role is None:
            return
        x = kwargs.get("input_ids")
        x = kwargs.get("inputs_embeds") if x is None else x
        x = args[0] if x is None and args else x
        grad = torch.is_grad_enabled()
        key = f"{role}|{'grad' if grad else 'no grad'}|{x.shape[0]}x{x.shape[1]}"
        counts["forward"][key] = counts["forward"].get(key, 0) + 1
        hidden = getattr(output, "last_hidden_state", None)
        if grad and hidden is not None and hidden.requires_grad:
            hidden.register_hook(on_backward(role))

    def step_hook(opt, _args, _kwargs):
        counts["optimizer"].append(sum(p.numel() for g in opt.param_groups for p in g["params"]))

    torch.nn.modules.module.register_module_forward_hook(forward_hook, with_kwargs=True)
    register_optimizer_step_post_hook(step_hook)
    return counts


def count_rows(side: str, counts: dict) -> list[list[str]]:
    """Table rows (side, model, mode, forwards as ``calls x [B x T]``, backwards) of one side."""
    rows, by = [], {}
    for key, n in counts["forward"].items():
        role, mode, shape = key.split("|")
        by.setdefault((role, mode), []).append(f"{n} x [{shape}]")
    for (role, mode), shapes in sorted(by.items()):
        bwd = counts["backward"].get(role, 0) if mode == "grad" and "head" not in role else ""
        rows.append([side, role, mode, " + ".join(shapes), str(bwd)])
    steps = counts["optimizer"]
    rows.append([side, "optimizer", "", f"{len(steps)} steps", f"params per step {steps}"])
    return rows


# --------------------------------------------------------------------------------------------
# Runs and the table
# --------------------------------------------------------------------------------------------
def worker_env(threads: int, extra: dict | None = None) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.update({"TRL_EXPERIMENTAL_SILENCE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env.pop("FGKERNELS_BACKEND", None)
    env.update(extra or {})
    return env


def spawn(kind: str, spec: dict, env: dict) -> str:
    """Run this script's ``kind`` worker in a fresh process; returns its stdout."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, json.dumps(spec)]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(
            f"{kind} worker failed (exit {p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
        )
    return p.stdout


def intervals(stamps: list[float], warmup: int) -> list[float]:
    """Seconds of each iteration after the first ``warmup`` (end-to-end stamps)."""
    return [b - a for a, b in zip(stamps, stamps[1:])][max(warmup - 1, 0) :]


def run_ours(s: Setting, assets: Path, out: Path, a: argparse.Namespace, kernels: str) -> dict:
    """One run of ``trainer/ppo.py``: ``{"wall": [s/it], phase: [s], "backends": str}``."""
    n = a.warmup + a.iterations
    extra = {"FGKERNELS_BACKEND": "reference"} if kernels == "reference" else {}
    stdout = spawn("ours", {"args": ours_args(s, assets, out, n, a.threads)}, worker_env(a.threads, extra))
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    if len(recs) != n:
        raise SystemExit(f"{out}: {len(recs)} metrics records, expected {n}")
    if any(abs(r["response_length"] - s.response) > 1e-9 for r in recs):
        raise SystemExit(f"{out}: responses shorter than {s.response} tokens: not the same work")
    body = recs[a.warmup :]
    res = {"wall": intervals([r["bench_wall_s"] for r in recs], a.warmup)}
    res.update({ph: [r[f"time_{ph}_s"] for r in body] for ph in PHASES})
    res["backends"] = next((x.split(": ", 1)[1] for x in stdout.splitlines() if x.startswith("bench-")), "?")
    return res


def run_trl(s: Setting, assets: Path, out: Path, a: argparse.Namespace) -> dict:
    n = a.warmup + a.iterations
    times = out / "times.jsonl"
    spec = {"setting": asdict(s), "assets": str(assets), "out": str(out), "iterations": n}
    spec.update({"threads": a.threads, "optim": a.trl_optim, "times_out": str(times)})
    spawn("trl", spec, worker_env(a.threads))
    recs = [json.loads(x) for x in times.read_text().splitlines()]
    if len(recs) != n:
        raise SystemExit(f"{out}: {len(recs)} TRL updates, expected {n}")
    return {"wall": intervals([r["bench_wall_s"] for r in recs], a.warmup)} | {
        "generate": [r["generate_s"] for r in recs[a.warmup :]]
    }


def count_work(s: Setting, assets: Path, work: Path, a: argparse.Namespace) -> list[list[str]]:
    """One iteration per side with the counting hooks (no timing)."""
    out = work / "count_ours"
    spec = {"args": ours_args(s, assets, out, 1, a.threads), "count_out": str(work / "count_ours.json")}
    spawn("ours", spec, worker_env(a.threads))
    spec = {"setting": asdict(s), "assets": str(assets), "out": str(work / "count_trl"), "iterations": 1}
    spec.update({"threads": a.threads, "optim": a.trl_optim, "times_out": str(work / "count_trl.jsonl")})
    spec["count_out"] = str(work / "count_trl.json")
    spawn("trl", spec, worker_env(a.threads))
    trl = json.loads((work / "count_trl.json").read_text())
    ours = json.loads((work / "count_ours.json").read_text())
    if len(trl["optimizer"]) != NUM_MINIBATCHES or len(ours["optimizer"]) != 2 * NUM_MINIBATCHES:
        print(f"warning: optimizer steps differ: ours {ours['optimizer']}, TRL {trl['optimizer']}")
    return count_rows("ours", ours) + count_rows("TRL", trl)


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):.3f}" if xs else "-"


def bench_setting(name: str, assets: Path, work: Path, a: argparse.Namespace) -> tuple[list[list[str]], str]:
    """Every repeat of every side of one setting (order alternating per repeat); table rows."""
    s = SETTINGS[name]
    kernels = ["fused", "reference"] if a.kernels == "both" else [a.kernels]
    sides = [("ours", k) for k in kernels] + [("trl", "")]
    pooled: dict = {}
    lines: dict = {}
    for rep in range(a.repeats):
        for side, k in sides if rep % 2 == 0 else sides[::-1]:
            out = work / f"{name}_{side}{'_' + k if k else ''}_r{rep}"
            t0 = time.perf_counter()
            res = run_ours(s, assets, out, a, k) if side == "ours" else run_trl(s, assets, out, a)
            if "backends" in res:
                lines[k] = res.pop("backends")
            print(
                f"  {name} {side} {k or '':9s} repeat {rep}: {med(res['wall'])} s/it "
                f"(run {time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            for key, xs in res.items():
                pooled.setdefault((side, k), {}).setdefault(key, []).extend(xs)
    trl = statistics.median(pooled[("trl", "")]["wall"])
    rows = []
    for k in kernels:
        p = pooled[("ours", k)]
        ours = statistics.median(p["wall"])
        label = f"{name} ({s.rollouts}x{s.response}, mb {s.micro})"
        rows.append(
            [label, k, f"{ours:.3f}", f"{trl:.3f}", f"{ours / trl:.2f}", *(med(p[ph]) for ph in PHASES)]
            + [med(pooled[("trl", "")]["generate"])]
        )
    return rows, "; ".join(f"{k}: {v}" for k, v in lines.items() if k)


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":  # a subprocess of this script
        (ours_worker if sys.argv[2] == "ours" else trl_worker)(json.loads(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    ap.add_argument("--kernels", choices=("both", "fused", "reference"), default="both")
    ap.add_argument("--iterations", type=int, default=6, help="measured iterations per run")
    ap.add_argument("--warmup", type=int, default=2, help="iterations dropped at the start (>= 1)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per side, order alternating")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch/OMP threads, both sides")
    ap.add_argument(
        "--trl-optim", default="adamw_torch_fused", help="TRL's optim (its own default; ours is fused too)"
    )
    ap.add_argument("--count", action="store_true", help="also count the work of one iteration per side")
    ap.add_argument("--workdir", default="", help="where runs go (default: a new temporary directory)")
    ap.add_argument("--record", action="store_true", help="append the table to bench/RESULTS.md")
    a = ap.parse_args()
    if a.warmup < 1 or a.iterations < 1:
        ap.error("--warmup and --iterations must be >= 1 (the first interval needs a previous iteration)")
    work = Path(a.workdir or tempfile.mkdtemp(prefix="ppo_vs_trl_"))
    work.mkdir(parents=True, exist_ok=True)
    assets = make_assets(work, max(SETTINGS[n].rollouts for n in a.settings))
    print(f"work directory {work}", flush=True)
    header = ["setting", "kernels", "ours s/it (median)", "TRL s/it (median)", "ours/TRL"]
    header += ["generate s", "score s", "rewards+GAE s", "train s", "TRL generate s"]
    rows, lines = [], []
    for name in a.settings:
        if a.count:
            crow = count_work(SETTINGS[name], assets, work / f"count_{name}", a)
            print(f"\nwork of one iteration, {name}:\n")
            print("| side | model | mode | forwards (calls x [B x T]) | backwards |\n|---|---|---|---|---|")
            print("\n".join("| " + " | ".join(r) + " |" for r in crow) + "\n", flush=True)
        r, line = bench_setting(name, assets, work, a)
        rows += r
        lines.append(line)
    notes = (
        f"tiny random LLaMA (vocab {VOCAB}, h {HIDDEN}, {LAYERS} layers) x 4 models per side, "
        f"{PROMPT_LEN}-token prompts, temperature 1, 1 PPO epoch x {NUM_MINIBATCHES} minibatches, every "
        f"response full length; one process per side, {a.threads} threads each; median over "
        f"{a.iterations} iterations after {a.warmup} warm-up x {a.repeats} repeat(s) (order alternating); "
        "s/it = wall clock between iteration ends (perf_counter in each process); phases = our "
        f"metrics.jsonl time_*_s; trl 0.29.1 PPOTrainer, optim {a.trl_optim}; the remaining differences "
        "in work: the docstring of bench/ppo_vs_trl.py; TRL generate = its batch_generation; fgkernels "
        f"dispatch ({lines[-1]})"
    )
    if a.record:
        print(record("PPO loop vs TRL PPOTrainer (CPU, one process)", header, rows, notes))
    else:
        print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
        print("\n".join("| " + " | ".join(r) + " |" for r in rows))
        print(f"\nnotes: {notes}")


if __name__ == "__main__":
    main()
