"""trainer/ppo.py and trainer/rollout.py: KV-cache generation against ``transformers``' greedy
decoding, FSDP2 generation against the unsharded model (2 processes), 2-process PPO runs in
each reward mode with exact resume, the learning test on a known per-token reward, the memory
estimate and its refusal. (SIGTERM -> checkpoint -> exit 75 and the resume after it, like the
other trainers': test_run_safety.)

Run as a script under torchrun (``torchrun --nproc_per_node=2 tests/test_ppo.py gen OUT``), this
file is also the 2-process worker of the FSDP2 generation test.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pytest
import torch
from _tiny_runs import TINY_PPO
from _utils import clean_env, launch

from trainer.infra.checkpoint import Checkpointer

ROOT = Path(__file__).resolve().parent.parent
TINY = TINY_PPO


def torchrun(script: str, args: list[str], nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc script args`` (gloo, CPU)."""
    return launch(script, args, nproc=nproc, timeout=timeout)


def metrics(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _tiny_lm(vocab: int = 50, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=64, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        tie_word_embeddings=False,
    )  # fmt: skip
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # sharper logits than the 0.02 init, so greedy choices are not near-ties
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.3)
    return model


def _prompts(vocab: int = 50):
    from trainer.data.examples import TokenizedExample, collate

    g = torch.Generator().manual_seed(1)
    prompts = [[1] + torch.randint(3, vocab, (n,), generator=g).tolist() for n in (3, 7, 1, 5)]
    examples = [TokenizedExample(p, [False] * len(p), [False] * len(p), len(p)) for p in prompts]
    batch = collate(examples, 0, padding_side="left")
    return batch["input_ids"], batch["attention_mask"]


# --- 1. generation ---------------------------------------------------------------------------
def test_kv_cache_generation_matches_transformers_greedy():
    """Our KV-cache loop over left-padded prompts == HF ``generate`` (greedy), row by row."""
    from trainer.rollout import generate

    model = _tiny_lm()
    ids, mask = _prompts()
    resp, rmask = generate(model, ids, mask, 12, eos_token_id=None, pad_token_id=0, greedy=True)
    for b in range(ids.shape[0]):  # each prompt alone, unpadded: no padding effects at all
        p = ids[b, mask[b]][None]
        ref = model.generate(p, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=0)[
            0, p.shape[1] :
        ]
        assert resp[b].tolist() == ref.tolist(), f"row {b}"
    assert rmask.all()


def test_generation_stops_at_eos_and_masks_after():
    from trainer.rollout import generate

    model = _tiny_lm()
    ids, mask = _prompts()
    free, _ = generate(model, ids, mask, 10, eos_token_id=None, pad_token_id=0, greedy=True)
    eos = int(free[0, 2])  # make row 0's third greedy token the EOS
    resp, rmask = generate(model, ids, mask, 10, eos_token_id=eos, pad_token_id=0, greedy=True)
    assert rmask[0].tolist()[:3] == [True] * 3 and not rmask[0, 3:].any()
    assert (resp[0, 3:] == 0).all()
    for b in range(resp.shape[0]):  # a row ends at its first EOS, included
        hits = (resp[b] == eos).nonzero()
        n = int(hits[0]) + 1 if len(hits) else resp.shape[1]
        assert int(rmask[b].sum()) == n


def test_top_p_keeps_only_the_nucleus():
    from trainer.rollout import sample_next

    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]])).expand(2000, 4)
    tok = sample_next(logits, top_p=0.7)
    assert set(tok.tolist()) <= {0, 1}  # 0.5 < 0.7 ≤ 0.8: tokens 0 and 1 only
    assert set(sample_next(logits, top_p=1.0).tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 1.0), (1.3, 0.8)])
def test_sampler_draws_the_same_distribution_as_multinomial(temperature, top_p):
    """The inverse-CDF sampler vs torch.multinomial (the sampler before it) on one distribution
    with a long tail and exact zeros after top-p: both empirical frequencies agree with the
    target probabilities within 4.5 binomial standard errors, and zero-probability tokens are
    never drawn."""
    from trainer.rollout import sample_next

    torch.manual_seed(0)
    logits = torch.randn(1, 37) * 2.0
    n = 40_000
    tok = sample_next(logits.expand(n, 37), temperature, top_p)
    p = torch.softmax(logits[0] / temperature, -1)
    if top_p < 1:
        sp, order = p.sort(descending=True)
        sp = sp.masked_fill((sp.cumsum(-1) - sp) >= top_p, 0.0)
        p = torch.zeros_like(p).scatter(0, order, sp / sp.sum())
    freq = torch.bincount(tok, minlength=37).double() / n
    ref = torch.bincount(torch.multinomial(p.expand(n, 37), 1)[:, 0], minlength=37).double() / n
    se = (p.double() * (1 - p.double()) / n).sqrt().clamp_min(1e-12)
    assert ((freq - p).abs() <= 4.5 * se + 1e-9).all(), (freq - p).abs().max()
    assert ((ref - p).abs() <= 4.5 * se + 1e-9).all()
    assert (freq[p == 0] == 0).all()


def test_generation_logprobs_equal_a_scoring_forward():
    """old_logprobs=generate: the log-probs and entropy taken from the sampling logits equal the
    scoring forward's (old_logprobs=recompute) at every valid token, with EOS and padding."""
    from trainer.ppo import policy_logprobs
    from trainer.rollout import Rollout, generate

    model = _tiny_lm()
    ids, mask = _prompts()
    torch.manual_seed(3)
    free, _ = generate(model, ids, mask, 10, eos_token_id=None, pad_token_id=0, temperature=0.8)
    torch.manual_seed(3)  # the same draws again, now with row 0's third token as EOS
    r_ids, r_mask, logp, ent = generate(
        model, ids, mask, 10, eos_token_id=int(free[0, 2]), pad_token_id=0, temperature=0.8,
        return_logprobs=True,
    )  # fmt: skip
    assert (~r_mask).any()  # some row ended early: the masked tail is covered
    want, want_ent = policy_logprobs(model, Rollout(ids, mask, r_ids, r_mask), 0.8, entropy=True)
    torch.testing.assert_close(torch.where(r_mask, logp, 0), torch.where(r_mask, want, 0), atol=2e-5, rtol=0)
    torch.testing.assert_close(
        torch.where(r_mask, ent, 0), torch.where(r_mask, want_ent, 0), atol=2e-5, rtol=0
    )


def test_sampling_refuses_non_finite_logits():
    from trainer.rollout import generate

    model = _tiny_lm()
    with torch.no_grad():
        model.lm_head.weight[3] = float("nan")
    ids, mask = _prompts()
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        generate(model, ids, mask, 4, eos_token_id=None, pad_token_id=0)


def test_fused_adamw_matches_the_reference_update():
    """build_optimizer's AdamW (fused, or foreach on older torch) takes the same steps as torch's
    plain single-tensor AdamW."""
    from trainer.infra.runtime import build_optimizer
    from trainer.ppo import PPOConfig

    a, b = _tiny_lm(seed=1), _tiny_lm(seed=1)
    opt_a = build_optimizer(a, 1e-2, PPOConfig(weight_decay=0.1))
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2, betas=tuple(PPOConfig().betas), weight_decay=0.1,
                              foreach=False)  # fmt: skip
    ids, mask = _prompts()
    for _ in range(3):
        for m, o in ((a, opt_a), (b, opt_b)):
            m(input_ids=ids, labels=ids).loss.backward()
            o.step()
            o.zero_grad()
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=n)


def _gen_worker(out: str) -> None:
    """2-process worker: greedy tokens of the FSDP2 actor == the unsharded model's; parameters
    stay gathered for the whole rollout and are sharded again after."""
    from torch.distributed.tensor import DTensor

    from trainer.infra.dist import init_distributed, shutdown
    from trainer.models import build_sharded
    from trainer.ppo import PPOConfig
    from trainer.rollout import generate, unsharded

    di = init_distributed("cpu")
    plain = _tiny_lm(seed=0)
    sd = {k: v.clone() for k, v in plain.state_dict().items()}
    sharded = build_sharded(
        "causal_lm", plain.config, sd if di.is_main else None, di, PPOConfig(), train=False
    )
    ids, mask = _prompts()
    ids, mask = ids[di.rank :: 2], mask[di.rank :: 2]
    want, _ = generate(plain, ids, mask, 12, None, 0, greedy=True)
    with unsharded(sharded):
        got, _ = generate(sharded, ids, mask, 12, None, 0, greedy=True)
        gathered_during = not any(isinstance(p, DTensor) for p in sharded.parameters())
    sharded_after = all(isinstance(p, DTensor) for p in sharded.parameters())
    res = {
        "equal": got.tolist() == want.tolist(),
        "gathered_during": gathered_during,
        "sharded_after": sharded_after,
    }
    Path(out, f"rank{di.rank}.json").write_text(json.dumps(res))
    shutdown()


@pytest.mark.slow
def test_fsdp2_generation_equals_unsharded_greedy(tmp_path):
    torchrun("tests/test_ppo.py", ["gen", str(tmp_path)])
    for r in range(2):
        res = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert res == {"equal": True, "gathered_during": True, "sharded_after": True}, (r, res)


# --- 2. 2-process PPO runs ---------------------------------------------------------------------
def _initial_actor_weights(out_dir: Path) -> dict:
    """The actor's initial weights, rebuilt the way build_models does (seed 0, random init)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.models import no_dropout, tiny_llama_config
    from trainer.ppo import PPOConfig

    tok = AutoTokenizer.from_pretrained(out_dir / "synthetic" / "tokenizer")
    torch.manual_seed(0)
    config = no_dropout(tiny_llama_config(PPOConfig(), tok))
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).state_dict()


def _check_run(out_dir: Path, n: int) -> list[dict]:
    from safetensors.torch import load_file

    recs = metrics(out_dir)
    assert [r["iteration"] for r in recs] == list(range(1, n + 1))
    for r in recs:
        bad = {k: v for k, v in r.items() if k != "explained_variance" and not math.isfinite(v)}
        assert not bad, f"non-finite metrics {bad}"
    # actor == reference before any update (old log-probs from the KV-cache decoding, reference
    # log-probs from a full forward: equal to ~1e-6 per token in fp32)
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert all(0.0 <= r["truncated_fraction"] <= 1.0 for r in recs)
    assert recs[-1]["kl"] != 0.0 and recs[-1]["approx_kl"] > 0
    for r in recs:  # the iteration's wall clock holds its phases
        phases = sum(r[f"time_{k}_s"] for k in ("generate", "score", "rewards", "train"))
        assert 0 < phases <= r["iteration_s"], r
    init, final = (
        _initial_actor_weights(out_dir),
        load_file(out_dir / "final" / "actor" / "model.safetensors"),
    )
    changed = [k for k in init if not torch.equal(init[k], final[k])]
    assert len(changed) >= len(init) // 2, f"only {len(changed)}/{len(init)} actor tensors changed"
    assert Checkpointer.damage(out_dir / "checkpoints" / f"step_{n:08d}") is None  # actor + critic, intact
    return recs


@pytest.mark.slow
def test_ppo_token_mode_learned_rm_and_exact_resume(tmp_path):
    """Token mode with a token-level RM trained on the fly; then the same run stopped after 2
    iterations and resumed continues with identical losses."""
    full, split = tmp_path / "full", tmp_path / "split"
    args = [*TINY, "reward_level=token", "iterations=4", "checkpoint_every=2"]
    torchrun("trainer/ppo.py", [*args, f"output_dir={full}"])
    recs = _check_run(full, 4)
    rm = full / "rm" / "final"
    assert rm.exists()
    split_args = [*args, f"output_dir={split}", f"reward_model={rm}"]
    torchrun("trainer/ppo.py", [*split_args, "stop_after_iterations=2"])
    assert [r["iteration"] for r in metrics(split)] == [1, 2]
    p = torchrun("trainer/ppo.py", split_args)
    assert "resumed from iteration 2" in p.stdout + p.stderr
    resumed = metrics(split)
    for a, b in zip(recs, resumed, strict=True):
        for k in ("policy_loss", "value_loss", "reward", "kl", "approx_kl", "clipfrac"):
            assert a[k] == b[k], (a["iteration"], k, a[k], b[k])


@pytest.mark.slow
def test_ppo_sequence_mode_adaptive_kl_k3(tmp_path):
    out = tmp_path / "seq"
    torchrun(
        "trainer/ppo.py",
        [*TINY, "reward_level=sequence", "reward_source=gold", "kl_controller=adaptive", "kl_estimator=k3",
         "entropy_coef=0.01", "reward_norm=true", "iterations=3", f"output_dir={out}"],
    )  # fmt: skip
    recs = _check_run(out, 3)
    assert recs[-1]["kl_coef"] != recs[0]["kl_coef"]  # the adaptive controller moved β


@pytest.mark.slow
def test_critic_warmup_freezes_the_actor(tmp_path):
    """critic_warmup=2: in iterations 1-2 only the critic trains, so iteration 3 still samples from
    the reference policy (KL exactly 0 with old_logprobs=recompute: the same forward as the
    reference's; no policy loss logged before it); iteration 4 has moved."""
    out = tmp_path / "warm"
    torchrun(
        "trainer/ppo.py",
        [*TINY, "reward_source=gold", "critic_warmup=2", "old_logprobs=recompute", "iterations=4",
         f"output_dir={out}"],
    )  # fmt: skip
    recs = _check_run(out, 4)
    assert [r["kl"] for r in recs[:3]] == [0.0, 0.0, 0.0]
    assert recs[0]["policy_loss"] == recs[1]["policy_loss"] == 0.0 and recs[0]["value_loss"] > 0
    assert recs[3]["kl"] != 0.0 and recs[2]["policy_loss"] != 0.0


# --- 3. the learning test ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.slow
def test_ppo_learns_a_known_per_token_reward(tmp_path):
    """Gold per-token reward (+1 good word, −1.5 bad word, 0 otherwise), used raw (the table has a
    fixed level, 0 for neutral words): a few hundred PPO steps must raise the mean per-token
    reward far beyond its noise."""
    out = tmp_path / "learn"
    n = 50
    torchrun(
        "trainer/ppo.py",
        ["progress=false", "reward_source=gold", "reward_level=token", "token_reward_scale=raw",
         f"iterations={n}", "checkpoint_every=0", "save_final=false", f"output_dir={out}"],
    )  # fmt: skip
    recs = metrics(out)
    first = sum(r["reward_per_token"] for r in recs[:5]) / 5
    last = sum(r["reward_per_token"] for r in recs[-5:]) / 5
    assert first < 0.1, first  # a random policy: 24 good, 24 bad of ~150 tokens
    assert last > first + 0.5, (first, last)


@pytest.mark.slow
@pytest.mark.slow
def test_token_rewards_keep_the_length_of_an_sft_start(tmp_path):
    """The length claim of ``token_reward_scale=running_mean``: from the tiny SFT model
    (which ends its responses after ~15 tokens) token-level PPO with a learned token RM raises the
    gold reward (a per-token mean: no length preference) and keeps ending its responses, while
    ``mean`` (r_t / T), the same RM and seed, drifts to ``max_new_tokens``. The full table (2
    seeds, 60 iterations, raw / reward_norm / gold-reward controls) is bench/token_reward_scale.py."""
    sft = tmp_path / "sft"
    torchrun("trainer/sft.py", ["progress=false", "sft_response=chosen", f"output_dir={sft}"])
    base = [
        "progress=false", "iterations=30", "max_new_tokens=40", "checkpoint_every=0", "save_final=false",
        "plots=false", "report=false", f"init_from={sft / 'final'}",
    ]  # fmt: skip
    ours = tmp_path / "running_mean"
    torchrun("trainer/ppo.py", [*base, "token_reward_scale=running_mean", f"output_dir={ours}"])
    rm = ours / "rm" / "final"  # trained on the fly by the first run, shared by the second
    drift = tmp_path / "mean"
    args = [*base, "token_reward_scale=mean", f"reward_model={rm}", f"output_dir={drift}"]
    torchrun("trainer/ppo.py", args)

    def ends(recs, key):
        return sum(r[key] for r in recs[:5]) / 5, sum(r[key] for r in recs[-5:]) / 5

    a, b = metrics(ours), metrics(drift)
    len0, len1 = ends(a, "response_length")
    assert len0 < 24, len0  # the SFT start ends its responses (~15-18 measured; cap 40)
    assert len1 < len0 + 8, (len0, len1)  # ~15 -> ~18 measured
    assert ends(a, "truncated_fraction")[1] < 0.1, ends(a, "truncated_fraction")
    gold0, gold1 = ends(a, "gold_reward_per_token")
    assert gold1 > gold0 + 0.1, (gold0, gold1)  # ~0.0 -> ~0.28 measured
    # the same RM with r_t / T: the responses run to the cap (~15 -> ~39 measured)
    assert ends(b, "response_length")[1] > 32, ends(b, "response_length")


# --- 4. iteration statistics -------------------------------------------------------------------
def test_iteration_stats_sum_then_ratio_by_hand():
    """Two micro-batches' sums -> one vector -> the logged means (worked by hand)."""
    from trainer.ppo import IterationStats, iteration_metrics

    st = IterationStats()
    # 2 rollouts of 3 and 1 valid tokens: RM sequence rewards 1 and 3, per-token rewards sum 2
    st.add(n_seq=2.0, n_tok=torch.tensor(4.0, dtype=torch.float64), seq_reward=torch.tensor(4.0).double())
    st.add(tok_reward=2.0, kl=torch.tensor(0.5).double(), entropy=8.0, gen_tokens=4.0)
    # two optimizer steps with losses 0.25 and 0.75; 10 trained tokens, 2 clipped
    st.add(policy_loss=0.25, value_loss=1.0, n_train_tok=5.0, clipfrac=1.0, n_steps=1.0)
    st.add(policy_loss=0.75, value_loss=3.0, n_train_tok=5.0, clipfrac=1.0, n_steps=1.0)
    # G = [1, 2, 3], V = [1, 2, 2]: EV = 2/3 (see test_rlhf)
    st.add(ev=torch.tensor([3.0, 6.0, 14.0, 1.0, 1.0], dtype=torch.float64))
    t = st.all_reduce(torch.device("cpu"))  # no process group: the local sums
    m = iteration_metrics(t, kl_coef=0.05, gold=False)
    assert m["reward"] == 2.0 and m["reward_per_token"] == 0.5 and m["kl"] == 0.25
    assert m["entropy"] == 2.0 and m["response_length"] == 2.0 and m["kl_coef"] == 0.05
    assert m["policy_loss"] == 0.5 and m["value_loss"] == 2.0 and m["clipfrac"] == 0.2
    assert m["explained_variance"] == pytest.approx(2 / 3)
    assert "gold_reward_per_token" not in m


# --- 5. memory estimate -----------------------------------------------------------------------------
def test_memory_estimate_7b_fits_8xa100_and_refusal(tmp_path):
    from transformers import LlamaConfig

    from trainer.infra.config import ConfigError, load_config
    from trainer.ppo import PPOConfig, check_memory, estimate_memory

    cfg = load_config(
        PPOConfig,
        [
            "--config",
            str(ROOT / "configs/llama7b_8xa100/ppo.yaml"),
            "init_from=/x",
            "reward_model=/y",
            "prompts=/z",
        ],
    )
    llama7b = LlamaConfig(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        intermediate_size=11008,
        vocab_size=32000,
    )
    est = estimate_memory(cfg, llama7b, world=8, prompt_len=cfg.max_prompt_length)
    gib = 1024**3
    assert 6.5e9 < est["generation"] / 2 < 7.0e9  # the bf16 actor, all-gathered: 2 bytes × 6.7B
    n = est["generation"] / 2  # actor and reference: with the LM head; critic and RM: without (V × h)
    n_head = n - 32000 * 4096
    assert est["params"] == pytest.approx(4 * (2 * n + 2 * n_head) / 8)  # 4 fp32 models / 8 ranks
    assert 20 * gib < est["total"] < 80 * gib
    check_memory(cfg, est, torch.device("cpu"))  # 80 GiB limit in the YAML: fits
    cfg.memory_limit_gb = 10.0
    with pytest.raises(ConfigError, match="GiB per device but 10.00 GiB"):
        check_memory(cfg, est, torch.device("cpu"))


def test_unknown_key_and_bad_split_rejected(capsys):
    from trainer.ppo import main

    assert main(["no_such_key=1"]) == 2
    assert "unknown config key" in capsys.readouterr().err
    assert main(["rollout_batch_size=10", "num_minibatches=3"]) == 2
    assert "equal minibatches" in capsys.readouterr().err


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "gen":
    _gen_worker(sys.argv[2])


def test_no_dropout_zeroes_every_dropout_probability():
    from transformers import GPT2Config

    from trainer.models import no_dropout

    cfg = no_dropout(GPT2Config(resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1, summary_first_dropout=0.1))
    assert (cfg.resid_pdrop, cfg.embd_pdrop, cfg.attn_pdrop, cfg.summary_first_dropout) == (0.0,) * 4
    from transformers import LlamaConfig

    assert no_dropout(LlamaConfig(attention_dropout=0.3)).attention_dropout == 0.0


@pytest.mark.slow
def test_sft_start_heldout_evaluation_and_best_actor(tmp_path):
    """The main job's default path at tiny size (1 process): a tiny SFT model trained first is
    the actor's start; held-out evaluation every 2 iterations logs a gold score (held-out prompts,
    sampled answers); ``best/actor`` holds the best-scoring iteration; evaluation leaves training
    untouched (same losses as a run without it: its random stream is saved and restored); a resume
    keeps the best score."""
    base = ["progress=false", "synthetic.n_pairs=300", "rm_epochs=1", "rollout_batch_size=8",
            "micro_batch_size=4", "sft_epochs=1", "iterations=4", "checkpoint_every=2", "eval_size=8",
            "plots=false", "report=false"]  # fmt: skip
    env = {**clean_env(), "OMP_NUM_THREADS": "2"}

    def ppo(*args: str) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "trainer/ppo.py", *base, *args], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=600)  # fmt: skip
        assert p.returncode == 0, p.stderr[-4000:]
        return p

    on, off = tmp_path / "eval", tmp_path / "noeval"
    p = ppo(f"output_dir={on}", "eval_every=2")
    assert (on / "sft" / "final" / "config.json").exists() and "fine-tuning the tiny LLaMA first" in p.stdout
    recs = metrics(on)
    scored = {r["iteration"]: r["heldout_score"] for r in recs if "heldout_score" in r}
    assert sorted(scored) == [2, 4] and all(math.isfinite(v) for v in scored.values())
    assert all(0 <= r["heldout_finished"] <= 1 for r in recs if "heldout_finished" in r)
    best_it = max(scored, key=scored.get)
    meta = json.loads((on / "best" / "actor" / "fgrlhf_policy.json").read_text())
    assert meta["iteration"] == best_it and meta["heldout_score"] == pytest.approx(scored[best_it])
    assert "held-out gold reward" in p.stdout
    ppo(f"output_dir={off}", "eval_every=0", f"reward_model={on / 'rm' / 'final'}")
    for a, b in zip(recs, metrics(off), strict=True):
        for k in ("policy_loss", "value_loss", "reward", "kl"):
            assert a[k] == b[k], (a["iteration"], k)
    # stopped at 3 and resumed: evaluated at 2 and 4 only (not at the stop point), the best kept
    split = tmp_path / "split"
    args = [f"output_dir={split}", "eval_every=2", f"reward_model={on / 'rm' / 'final'}"]
    ppo(*args, "stop_after_iterations=3")
    ppo(*args)
    assert [r["iteration"] for r in metrics(split) if "heldout_score" in r] == [2, 4]
    resumed = json.loads((split / "best" / "actor" / "fgrlhf_policy.json").read_text())
    assert resumed["iteration"] == best_it
    # a fresh start (resume=false) with another seed: the SFT start trained on the fly with seed 0
    # is not reused silently
    p = subprocess.run([sys.executable, "trainer/ppo.py", *base, f"output_dir={on}", "eval_every=2",
                        "resume=false", "seed=1"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=600)  # fmt: skip
    assert p.returncode == 2 and "trained on the fly with other settings (seed: 0 -> 1)" in p.stderr, (
        p.stderr[-2000:]
    )


def test_heldout_note_names_the_peak_and_the_fall():
    """The summary's over-optimisation line: a held-out score that peaked and fell while the
    training reward rose is named with its iteration; one that kept rising is not."""
    from trainer.infra.summary import heldout_note

    fell = [{"iteration": i, "reward": 1.0 + i / 10, "heldout_score": s} for i, s in
            [(10, 0.2), (20, 0.55), (30, 0.4), (40, 0.32)]]  # fmt: skip
    note = heldout_note(fell, "gold reward")
    assert "best 0.550 at 20" in note and "peaked at iteration 20 and fell by 0.230" in note
    assert "training reward went 3.000 → 5.000" in note and "best/actor holds iteration 20" in note
    rose = [{"iteration": i, "reward": 1.0, "heldout_score": i / 100} for i in (10, 20, 30)]
    assert "warning" not in heldout_note(rose) and "best 0.300 at 30" in heldout_note(rose)
    assert heldout_note([{"iteration": 1, "reward": 1.0}]) == ""
