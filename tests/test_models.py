"""Reward-model pieces: AUROC, reward helpers, config loading, save/load with plain transformers."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.data.synthetic import SyntheticConfig
from trainer.infra.config import ConfigError, field_docs, load_config
from trainer.models import (
    RewardModel,
    per_token_scores,
    read_reward_meta,
    save_pretrained,
    scalar_head_config,
    sequence_reward,
    tiny_llama_config,
)
from trainer.reward import RewardConfig
from trainer.rm_metrics import auroc, pair_stats


def test_auroc_hand_worked():
    # pos {0.35, 0.8} vs neg {0.1, 0.4}: 0.35>0.1, 0.8>0.1, 0.8>0.4 -> 3 of 4 pairs = 0.75
    assert auroc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]).bool()) == pytest.approx(
        0.75
    )
    # a tie between a positive and a negative counts 1/2: (1 + 0.5) / 2
    assert auroc(torch.tensor([0.2, 0.5, 0.5]), torch.tensor([0, 0, 1]).bool()) == pytest.approx(0.75)
    assert math.isnan(auroc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1]).bool()))
    # against the O(n^2) definition on random data with ties
    s, y = torch.randint(0, 5, (60,)).float(), torch.rand(60) < 0.4
    pos, neg = s[y], s[~y]
    brute = ((pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()).mean().item()
    assert auroc(s, y) == pytest.approx(brute)


def test_pair_stats_and_reward_helpers():
    st = pair_stats(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0]))
    assert st["accuracy"] == pytest.approx(2 / 3) and st["margin"] == pytest.approx(1 / 3)
    scores = torch.tensor([[9.0, 1.0, 2.0, 3.0, 9.0], [9.0, 9.0, 4.0, 9.0, 9.0], [5.0, 5.0, 5.0, 5.0, 5.0]])
    m = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 0, 0, 0, 0]]).bool()
    assert sequence_reward(scores, m, "token").tolist() == [2.0, 4.0, 0.0]  # mean; empty -> 0
    assert sequence_reward(scores, m, "sequence").tolist() == [3.0, 4.0, 0.0]  # last token; empty -> 0


@pytest.mark.slow
def test_every_config_field_documented_and_yaml_configs_load(tmp_path):
    from trainer.ppo import PPOConfig
    from trainer.sft import SFTConfig

    for cls in (RewardConfig, SyntheticConfig, PPOConfig, SFTConfig):
        import dataclasses

        missing = [f.name for f in dataclasses.fields(cls) if f.name not in field_docs(cls)]
        assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
    cfg = load_config(
        RewardConfig, ["--config", "configs/tiny_cpu/reward.yaml", "lr=0.5", "synthetic.n_pairs=7"]
    )
    assert cfg.lr == 0.5 and cfg.synthetic.n_pairs == 7 and cfg.rm_level == "token"
    big = load_config(
        RewardConfig, ["--config", "configs/llama7b_8xa100/reward.yaml", "data=e.jsonl", "init_from=/m"]
    )
    assert big.param_dtype == "bfloat16" and big.activation_checkpointing and big.init_from == "/m"
    with pytest.raises(ConfigError, match="'init_from' is required"):
        load_config(RewardConfig, ["--config", "configs/llama7b_8xa100/reward.yaml", "data=e.jsonl"])
    for name in ("tiny_cpu/sft.yaml", "llama7b_8xa100/sft.yaml"):
        extra = ["data=e.jsonl", "init_from=/m"] if "7b" in name else []
        sft = load_config(SFTConfig, ["--config", f"configs/{name}", *extra])
        assert sft.objective in ("sft", "figa") and sft.figa_removed_weight == -0.5
    with pytest.raises(ConfigError, match="unknown config key 'lrr'.*'lr'"):
        load_config(RewardConfig, ["lrr=1"])
    with pytest.raises(ConfigError, match="unknown config key 'synthetic.nope'"):
        load_config(RewardConfig, ["synthetic.nope=1"])
    bad_yaml = tmp_path / "bad.yaml"
    bad_yaml.write_text("rm_level: token\nwarmup_step: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'warmup_step'"):
        load_config(RewardConfig, ["--config", str(bad_yaml)])
    with pytest.raises(ConfigError, match="bad value for key 'max_steps'"):
        load_config(RewardConfig, ["max_steps=many"])
    with pytest.raises(ConfigError, match="not key=value"):
        load_config(RewardConfig, ["token"])


class _Tok:
    """The three things a config needs of a tokenizer."""

    def __init__(self, vocab: int):
        self.vocab, self.pad_token_id, self.bos_token_id, self.eos_token_id = vocab, 0, 1, 2

    def __len__(self) -> int:
        return self.vocab


def _tiny_model(vocab: int = 40, seed: int = 0):
    from transformers import AutoModelForTokenClassification

    torch.manual_seed(seed)
    sizes = RewardConfig(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)
    cfg = scalar_head_config(tiny_llama_config(sizes, _Tok(vocab)), pad_id=0)
    return cfg, AutoModelForTokenClassification.from_config(cfg).eval()


def test_save_load_plain_transformers_scores_identically(tmp_path):
    from transformers import AutoModelForTokenClassification

    cfg, model = _tiny_model()
    save_pretrained(
        model.state_dict(), cfg, "scalar_head", tmp_path / "rm", reward_meta={"level": "sequence"}
    )
    assert read_reward_meta(tmp_path / "rm")["level"] == "sequence"
    assert (tmp_path / "rm" / "model.safetensors").exists()
    ids = torch.randint(1, 40, (3, 9))
    att = torch.ones(3, 9, dtype=torch.bool)
    att[1, 6:] = False
    resp = att.clone()
    resp[:, :3] = False
    with torch.no_grad():
        want = per_token_scores(model, ids, att)
        plain = AutoModelForTokenClassification.from_pretrained(tmp_path / "rm").eval()
        got = plain(input_ids=ids, attention_mask=att.long()).logits[..., 0]
        rm = RewardModel.from_pretrained(tmp_path / "rm").eval()
        assert rm.level == "sequence"
        r, R = rm.score(ids, att, resp)
    torch.testing.assert_close(got[att], want[att], rtol=0, atol=1e-6)
    torch.testing.assert_close(r, torch.where(resp, want, 0.0), rtol=0, atol=1e-6)
    assert R.tolist() == pytest.approx([want[0, 8].item(), want[1, 5].item(), want[2, 8].item()], abs=1e-6)


def test_left_padding_scores_like_right_padding():
    """PPO batches are left-padded: position ids come from the attention mask."""
    _, model = _tiny_model()
    seq = torch.randint(1, 40, (5,))
    right = torch.cat([seq, torch.zeros(3, dtype=torch.long)])[None]
    left = torch.cat([torch.zeros(3, dtype=torch.long), seq])[None]
    m_right = torch.tensor([[1] * 5 + [0] * 3]).bool()
    m_left = m_right.flip(-1)
    with torch.no_grad():
        a = per_token_scores(model, right, m_right)[m_right]
        b = per_token_scores(model, left, m_left)[m_left]
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny causal LM, a tiny reward model (with its metadata) and a run root holding final/,
    all over the synthetic world's vocabulary."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    from trainer.data.synthetic import build_tokenizer

    root = tmp_path_factory.mktemp("models")
    tok = build_tokenizer(SyntheticConfig())
    base = tiny_llama_config(
        RewardConfig(hidden_size=32, num_layers=1, num_heads=4, intermediate_size=64), tok
    )
    lm = AutoModelForCausalLM.from_config(base)
    save_pretrained(lm.state_dict(), base, "causal_lm", root / "lm", tok)
    head = scalar_head_config(base, 0)
    rm = AutoModelForTokenClassification.from_config(head)
    save_pretrained(rm.state_dict(), head, "scalar_head", root / "run" / "final", tok, {"level": "token"})
    meta = {"level": "token", "prompt_template": "alpaca"}
    save_pretrained(rm.state_dict(), head, "scalar_head", root / "rm_alpaca", tok, meta)
    return root


def test_wrong_model_paths_are_one_line_errors(model_dirs, tmp_path, capsys):
    """A reward model that is not one, a run's root instead of final/, weights that do not fit:
    each stops before training with an error naming the key (no traceback, exit 2)."""
    from trainer.ppo import main

    out = f"output_dir={tmp_path}/o"
    assert main([f"reward_model={model_dirs / 'run'}", out]) == 2
    err = capsys.readouterr().err
    assert "'reward_model'" in err and "is a run directory; did you mean" in err and "final" in err
    assert main([f"reward_model={model_dirs / 'lm'}", out]) == 2  # a causal LM: no reward metadata
    assert "no fgrlhf_reward.json, so not a reward model" in capsys.readouterr().err
    assert main([f"init_from={model_dirs / 'run' / 'final'}", "reward_source=gold", out]) == 2
    err = capsys.readouterr().err
    assert "config key 'init_from'" in err and "do not fit a causal_lm model" in err and "lm_head" in err
    assert main([f"init_from={tmp_path}", "reward_source=gold", out]) == 2
    assert "has no config.json: not a transformers model directory" in capsys.readouterr().err
    # a token-level RM as a sequence reward: only as the explicit variant
    assert main([f"reward_model={model_dirs / 'run' / 'final'}", "reward_level=sequence", out]) == 2
    assert "sequence_reward_from_token_rm=true" in capsys.readouterr().err
    # a reward model trained on Alpaca-rendered prompts, PPO rendering them plainly
    assert main([f"reward_model={model_dirs / 'rm_alpaca'}", out]) == 2
    err = capsys.readouterr().err
    assert "renders prompts as 'plain'" in err and "trained on 'alpaca' prompts" in err
