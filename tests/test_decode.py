"""trainer/decode.py: the written-out LLaMA decoding step against the model's own forward.

Each model family and option the step reads (GQA, biases, tied embeddings, a scaled RoPE,
Mistral) is decoded both ways — ``generate(decoder="auto")`` (the written-out step) and
``generate(decoder="transformers")`` (the model's forward, the implementation before it) —
from left-padded prompts with EOS: greedy tokens and masks must be identical, the per-token
log-probs and entropies equal to float rounding, and sampling with the same seed must draw the
same tokens (the same distribution, token for token). The FSDP2 case (unsharded weights) is
``tests/test_ppo.py::test_fsdp2_generation_equals_unsharded_greedy``, which runs this step.
"""

from __future__ import annotations

import pytest
import torch

from trainer.decode import decode_step, llama_decoder
from trainer.rollout import generate


def _prompts(vocab: int):
    g = torch.Generator().manual_seed(1)
    lengths = (3, 7, 1, 5, 6)
    P = max(lengths)
    ids = torch.zeros(len(lengths), P, dtype=torch.long)
    mask = torch.zeros(len(lengths), P, dtype=torch.bool)
    for b, n in enumerate(lengths):  # left-padded: BOS + n-1 random tokens at the right end
        ids[b, P - n :] = torch.cat([torch.tensor([1]), torch.randint(3, vocab, (n - 1,), generator=g)])
        mask[b, P - n :] = True
    return ids, mask


def _model(kind: str = "llama", dtype=torch.float32, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    base = dict(
        vocab_size=61, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=80, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    base.update(overrides)
    if kind == "mistral":
        model = MistralForCausalLM(MistralConfig(**base, sliding_window=None))
    else:
        model = LlamaForCausalLM(LlamaConfig(**base))
    with torch.no_grad():  # sharper logits than the 0.02 init: greedy choices are not near-ties
        for p in model.parameters():
            p.normal_(0.0, 0.3) if p.dim() == 2 else p.normal_(1.0, 0.1)
    return model.to(dtype).eval()


VARIANTS = {
    "mha": {},
    "gqa": {"num_key_value_heads": 2},
    "mqa_bias": {"num_key_value_heads": 1, "attention_bias": True, "mlp_bias": True},
    "tied": {"tie_word_embeddings": True},
    "head_dim": {"head_dim": 16},  # head_dim x heads != hidden
    "yarn_rope": {
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },  # fmt: skip
    "llama3_rope": {
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        },
    },  # fmt: skip
}


def _both(model, ids, mask, n=24, eos=None, **kw):
    out = {}
    for decoder in ("auto", "transformers"):
        torch.manual_seed(7)
        out[decoder] = generate(model, ids, mask, n, eos, 0, return_logprobs=True, decoder=decoder, **kw)
    return out["auto"], out["transformers"]


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_written_out_step_equals_the_model_forward(variant):
    model = _model(**VARIANTS[variant])
    ids, mask = _prompts(model.config.vocab_size)
    assert llama_decoder(model, mask, ids.shape[1] + 24) is not None
    free = generate(model, ids, mask, 24, None, 0, greedy=True, decoder="transformers")[0]
    eos = int(free[0, 4])  # row 0 ends at its fifth token: EOS and the masked tail are covered
    got, want = _both(model, ids, mask, eos=eos, greedy=True)
    assert (~want[1]).any()
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    for a, b in zip(got[2:], want[2:]):  # log-probs, entropies
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature,top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_sampling_draws_the_same_tokens_as_the_model_forward(temperature, top_p):
    """Same seed, same draws: the step's logits equal the forward's, so every sampled token is
    the one the implementation before it samples (on-policy, token for token)."""
    model = _model(num_key_value_heads=2)
    ids, mask = _prompts(model.config.vocab_size)
    got, want = _both(model, ids, mask, n=40, eos=2, temperature=temperature, top_p=top_p)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    torch.testing.assert_close(got[2], want[2], atol=2e-5, rtol=1e-5)


def test_mistral_and_bf16():
    model = _model("mistral", num_key_value_heads=2)
    ids, mask = _prompts(model.config.vocab_size)
    got, want = _both(model, ids, mask, greedy=True)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[2], want[2], atol=2e-5, rtol=1e-5)
    model = _model(dtype=torch.bfloat16, num_key_value_heads=2)  # the same ops in the same order
    got, want = _both(model, ids, mask, greedy=True)
    assert torch.equal(got[0], want[0])
    torch.testing.assert_close(got[2], want[2], atol=1e-2, rtol=0)


def test_step_logits_equal_the_forward_logits_at_every_position():
    """decode_step fed the forward's own tokens reproduces the forward's logits position by
    position (padding in the prompts, positions counted over real tokens)."""
    from trainer.models import position_ids
    from trainer.rollout import cache_argument, preallocated_cache

    model = _model(num_key_value_heads=2, attention_bias=True)
    ids, mask = _prompts(model.config.vocab_size)
    B, P = ids.shape
    R = 9
    resp = torch.randint(3, model.config.vocab_size, (B, R), generator=torch.Generator().manual_seed(2))
    full = torch.cat([ids, resp], 1)
    attn = torch.cat([mask, torch.ones(B, R, dtype=torch.bool)], 1).long()
    with torch.no_grad():
        want = model(input_ids=full, attention_mask=attn, position_ids=position_ids(attn)).logits
        cache = preallocated_cache(model.config.num_hidden_layers, P + R)
        model(input_ids=ids, attention_mask=attn[:, :P], position_ids=position_ids(attn[:, :P]),
              use_cache=True, **{cache_argument(model): cache})  # fmt: skip
        dec = llama_decoder(model, mask, P + R)
        keys, values = [la.keys for la in cache.layers], [la.values for la in cache.layers]
        pos = mask.sum(-1)
        for t in range(R):
            logits = decode_step(dec, resp[:, t], pos + t, P + t, keys, values)
            torch.testing.assert_close(logits, want[:, P + t], atol=1e-5, rtol=1e-5, msg=f"step {t}")


def test_other_models_decode_through_their_own_forward():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(
        Qwen2Config(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128, pad_token_id=0)
    ).eval()  # fmt: skip
    ids, mask = _prompts(61)
    assert llama_decoder(qwen, mask, 20) is None
    got, want = _both(qwen, ids, mask, n=6, greedy=True)
    assert torch.equal(got[0], want[0])
    dyn = _model(rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0})
    assert llama_decoder(dyn, mask, 20) is None  # a RoPE that changes with the length
    with pytest.raises(ValueError, match="decoder must be"):
        generate(dyn, ids, mask, 2, None, 0, decoder="hf")


@pytest.mark.parametrize(
    "value,greedy,logprobs", [("nan", True, False), ("inf", False, False), ("-inf", False, True)]
)
def test_non_finite_logits_are_refused(monkeypatch, value, greedy, logprobs):
    """A NaN / +inf logit (every path) or a −inf one (when log-probs and entropies are taken:
    they would be NaN) stops generation, as the full [B, V] check before it did."""
    import trainer.decode as decode

    head = decode.lm_logits  # the written-out step's logits get token 5's logit set to `value`
    bad = torch.tensor([5])
    monkeypatch.setattr(decode, "lm_logits", lambda *a: head(*a).index_fill(-1, bad, float(value)))
    model = _model()
    ids, mask = _prompts(model.config.vocab_size)
    with pytest.raises(FloatingPointError, match="non-finite logits"):
        generate(model, ids, mask, 4, None, 0, greedy=greedy, return_logprobs=logprobs)
    generate(model, ids, mask, 4, None, 0, greedy=greedy, decoder="transformers")  # (the step's logits only)
