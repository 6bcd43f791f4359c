"""trainer/sft.py: FIGA's weighted loss by hand, the penalty that switches itself off, FIGA's
weights on a tiny pair, and on the synthetic world FIGA raising the gold reward of greedy samples
over the SFT model it starts from. (Run safety — SIGTERM, exact 2-process resume, the output
lock — of SFT and FIGA: test_run_safety.)"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny_runs import TINY_SUPERVISED
from _utils import clean_env, launch

from trainer.sft import SFTConfig, figa_weights, weighted_token_loss

ROOT = Path(__file__).resolve().parent.parent
TINY = TINY_SUPERVISED


def test_weighted_loss_by_hand():
    # p = [0.5, 0.8, 0.5], w = [1, 0, -0.5], band [0.6, 1.0], N = 2 (the docstring's example):
    # l = [0.693, 0.223, 0.693]: (0.693 - 0.5 * 0.693) / 2 = 0.1733
    logp = torch.log(torch.tensor([[0.5, 0.8, 0.5]]))
    w = torch.tensor([[1.0, 0.0, -0.5]])
    loss, nll = weighted_token_loss(logp, w, 0.6, 1.0, 2)
    assert loss.item() == pytest.approx(0.5 * math.log(2) / 2)
    assert nll.item() == pytest.approx(math.log(2))  # only the positively weighted token
    # the penalised token at p = 0.3 (l = 1.204, past the band): off -> 0.693 / 2
    loss, _ = weighted_token_loss(torch.log(torch.tensor([[0.5, 0.8, 0.3]])), w, 0.6, 1.0, 2)
    assert loss.item() == pytest.approx(math.log(2) / 2)
    # ... and at p = 0.9 (l = 0.105, under the band): off too (the code's band)
    loss, _ = weighted_token_loss(torch.log(torch.tensor([[0.5, 0.8, 0.9]])), w, 0.6, 1.0, 2)
    assert loss.item() == pytest.approx(math.log(2) / 2)


def test_penalty_stops_at_its_threshold():
    """Gradient descent on the penalty alone cannot push a token's probability to 0: it stops
    just past p = e^-1 (loss 1.0)."""
    logits = torch.tensor([[1.2, 0.0, 0.0, 0.0]], requires_grad=True)  # p(token 0) ~ 0.5
    opt = torch.optim.SGD([logits], lr=0.5)
    w = torch.tensor([[-0.5]])
    for _ in range(500):
        logp = torch.log_softmax(logits, -1)[:, :1]
        loss, _ = weighted_token_loss(logp, w, 0.6, 1.0, 1)
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = torch.softmax(logits, -1)[0, 0].item()
    assert math.exp(-1.0) - 0.05 < p < math.exp(-1.0), p  # pushed down, then the term is off


def test_figa_weights_on_a_tiny_pair():
    # rows: edited [<s> p a X </s>], original [<s> p a Y </s>]; response = a X </s> / a Y </s>
    eos = 2
    batch = {
        "input_ids": torch.tensor([[1, 7, 5, 9, eos], [1, 7, 5, 8, eos]]),
        "response_mask": torch.tensor([[0, 0, 1, 1, 1], [0, 0, 1, 1, 1]]).bool(),
        "changed_mask": torch.tensor([[0, 0, 0, 1, 0], [0, 0, 0, 1, 0]]).bool(),
    }
    w = figa_weights(batch, 1, eos, SFTConfig())
    assert w.tolist() == [[0, 0, 0, 1, 1], [0, 0, 0, -0.5, 0]]
    w = figa_weights(batch, 1, eos, SFTConfig(figa_unchanged_weight=0.25, figa_eos_weight=2.0))
    assert w.tolist()[0] == [0, 0, 0.25, 1, 2]


def _run(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    return launch("trainer/sft.py", args, nproc=nproc, threads=1 if nproc > 1 else 2)


@pytest.mark.slow
@pytest.mark.slow
def test_figa_raises_the_gold_reward_over_its_sft_start(tmp_path):
    """SFT on the world's responses, then FIGA on its edited pairs from that model: greedy
    samples on held-out prompts carry more gold reward (the world's known per-token utility)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data.examples import build_prompt, collate
    from trainer.data.synthetic import SyntheticConfig, generate
    from trainer.models import GoldReward
    from trainer.rollout import generate as sample

    sft, figa = tmp_path / "sft", tmp_path / "figa"
    _run([f"output_dir={sft}", "max_steps=250", "eval_every=0", "progress=false"])
    _run([f"output_dir={figa}", "objective=figa", f"init_from={sft / 'final'}", "max_steps=80", "lr=1e-3",
          "eval_every=0", "progress=false"])  # fmt: skip
    recs = generate(SyntheticConfig())[-150:]  # prompts of the held-out end of the world

    def gold(model_dir: Path) -> float:
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        b = collate([build_prompt(tok, r["prompt"], 32) for r in recs], tok.pad_token_id, "left")
        r, m = sample(
            model, b["input_ids"], b["attention_mask"], 40, tok.eos_token_id, tok.pad_token_id, greedy=True
        )
        ids = torch.cat([b["input_ids"], r], 1)
        resp = torch.cat([torch.zeros_like(b["attention_mask"]), m], 1)
        return GoldReward(tok, SyntheticConfig()).score(ids, None, resp).sequence.mean().item()

    g_sft, g_figa = gold(sft / "final"), gold(figa / "final")
    assert g_figa > g_sft + 0.3, (g_sft, g_figa)
    # the final model is what PPO starts from
    ppo = subprocess.run(
        [sys.executable, "trainer/ppo.py", f"init_from={figa / 'final'}", "reward_source=gold",
         "iterations=1", "rollout_batch_size=8", "micro_batch_size=4", "progress=false",
         f"output_dir={tmp_path / 'ppo'}"],
        cwd=ROOT, env={**clean_env(), "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    assert (tmp_path / "ppo" / "final" / "actor" / "model.safetensors").exists()
