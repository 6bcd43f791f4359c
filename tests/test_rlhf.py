"""trainer.rlhf on 3-element tensors, expected numbers worked out by hand in the comments."""

import math

import pytest
import torch

from trainer import rlhf

ALL = torch.tensor([[True, True, True]])
TWO = torch.tensor([[True, True, False]])


def test_kl_estimators():
    logp = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -0.5]])
    # k1 = logp - ref
    torch.testing.assert_close(rlhf.kl_penalty(logp, ref, "k1"), torch.tensor([[0.5, -1.0, 0.0]]))
    # k3 = exp(-lr) - 1 + lr: e^-0.5 - 0.5 = 0.106531, e^1 - 2 = 0.718282, 0
    torch.testing.assert_close(
        rlhf.kl_penalty(logp, ref, "k3"), torch.tensor([[math.exp(-0.5) - 0.5, math.e - 2.0, 0.0]])
    )
    with pytest.raises(ValueError, match="estimator"):
        rlhf.kl_penalty(logp, ref, "k2")


def test_sequence_rewards_put_R_on_the_last_valid_token():
    kl = torch.tensor([[0.5, -1.0, 7.0]])  # 7.0 is padding: never read
    # beta = 0.1: [-0.05, +0.1 + R(2.0), 0]
    out = rlhf.compute_rewards(kl, TWO, 0.1, "sequence", sequence_reward=torch.tensor([2.0]))
    torch.testing.assert_close(out, torch.tensor([[-0.05, 2.1, 0.0]]))


def test_token_rewards_add_the_per_token_kl_penalty():
    kl = torch.tensor([[0.5, -1.0, 7.0]])
    r = torch.tensor([[1.0, 2.0, float("nan")]])  # NaN in padding is selected away
    # [1 - 0.05, 2 + 0.1, 0]
    out = rlhf.compute_rewards(kl, TWO, 0.1, "token", token_reward=r)
    torch.testing.assert_close(out, torch.tensor([[0.95, 2.1, 0.0]]))
    # beta = 0: the reward model's rewards alone
    torch.testing.assert_close(rlhf.compute_rewards(kl, TWO, 0.0, "token", token_reward=r)[0, :2], r[0, :2])


def test_rewards_bad_arguments():
    kl = torch.zeros(1, 3)
    with pytest.raises(ValueError, match="sequence_reward"):
        rlhf.compute_rewards(kl, ALL, 0.1, "sequence")
    with pytest.raises(ValueError, match="token_reward"):
        rlhf.compute_rewards(kl, ALL, 0.1, "token")
    with pytest.raises(ValueError, match="kl_coef"):
        rlhf.compute_rewards(kl, ALL, -1.0, "token", token_reward=kl)
    with pytest.raises(ValueError, match="level"):
        rlhf.compute_rewards(kl, ALL, 0.1, "dense", token_reward=kl)


def test_empty_row_gets_no_sequence_reward():
    mask = torch.tensor([[False, False, False], [True, False, False]])
    out = rlhf.compute_rewards(
        torch.zeros(2, 3), mask, 0.1, "sequence", sequence_reward=torch.tensor([5.0, 3.0])
    )
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0]]))


def test_ppo_policy_loss_by_hand():
    # ratios [1, 1.5, 0.5], A = [1, 1, -1], eps = 0.2:
    #   t0: -min(1, 1) = -1;  t1: -min(1.5, 1.2) = -1.2;  t2: -min(-0.5, -0.8) = 0.8
    #   loss = (-1 - 1.2 + 0.8) / 3 = -0.466667
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.0, 1.5, 0.5]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0]])
    loss, stats = rlhf.ppo_policy_loss(logp, old, adv, ALL, 0.2, num_tokens=3)
    torch.testing.assert_close(loss, torch.tensor(-1.4 / 3))
    # clipped tokens: t1, t2; approx_kl = (0.5 - ln 1.5) + (-0.5 + ln 2)
    assert stats.clipfrac_sum.item() == 2.0
    torch.testing.assert_close(stats.approx_kl_sum, torch.tensor(0.5 - math.log(1.5) - 0.5 + math.log(2.0)))
    # gradient flows only through the unclipped term of t0: d/dlogp (-A rho) / 3 = -1/3
    (grad,) = torch.autograd.grad(loss, logp)
    torch.testing.assert_close(grad, torch.tensor([[-1 / 3, 0.0, 0.0]]))


def test_ppo_loss_is_normalised_by_the_global_token_count():
    old = torch.zeros(1, 3)
    logp = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, 2.0, 100.0]])
    # two valid tokens, 8 in the whole step: -(1 + 2) / 8
    loss, _ = rlhf.ppo_policy_loss(logp, old, adv, TWO, 0.2, num_tokens=8)
    torch.testing.assert_close(loss, torch.tensor(-3.0 / 8))


def test_value_loss_by_hand():
    # V = [1, 2, 3], V_old = [1, 1.5, 4], G = 2, eps = 0.2:
    #   t0: V_clip = 1   -> max(1, 1) = 1
    #   t1: V_clip = 1.7 -> max(0, 0.09) = 0.09
    #   t2: V_clip = 3.8 -> max(1, 3.24) = 3.24
    #   loss = 0.5 * 4.33 / 3 = 0.721667; clipped term larger at t1, t2
    loss, clipfrac = rlhf.value_loss(
        torch.tensor([[1.0, 2.0, 3.0]]),
        torch.tensor([[1.0, 1.5, 4.0]]),
        torch.full((1, 3), 2.0),
        ALL,
        0.2,
        num_tokens=3,
    )
    torch.testing.assert_close(loss, torch.tensor(0.5 * 4.33 / 3))
    assert clipfrac.item() == 2.0


def test_entropy_bonus_and_explained_variance():
    torch.testing.assert_close(
        rlhf.entropy_bonus(torch.tensor([[1.0, 2.0, 9.0]]), TWO, 0.01, num_tokens=2), torch.tensor(-0.015)
    )
    g = torch.tensor([[1.0, 2.0, 3.0]])
    assert rlhf.explained_variance(g, g, ALL) == pytest.approx(1.0)
    assert rlhf.explained_variance(torch.zeros(1, 3), g, ALL) == pytest.approx(0.0)
    # by hand: G = [1, 2, 3] (Var 2/3), V = [1, 1, 1] -> G - V = [0, 1, 2] (Var 2/3): EV = 0;
    # V = [1, 2, 2] -> G - V = [0, 0, 1] (Var 2/9): EV = 1 - (2/9)/(2/3) = 2/3
    assert rlhf.explained_variance(torch.tensor([[1.0, 2.0, 2.0]]), g, ALL) == pytest.approx(2 / 3)
    # masked tokens are ignored, and sums over two halves (two ranks) give the same number
    v = torch.tensor([[1.0, 2.0, 2.0, 50.0]])
    g4 = torch.tensor([[1.0, 2.0, 3.0, -7.0]])
    m4 = torch.tensor([[True, True, True, False]])
    assert rlhf.explained_variance(v, g4, m4) == pytest.approx(2 / 3)
    halves = rlhf.explained_variance_sums(v[:, :1], g4[:, :1], m4[:, :1]) + rlhf.explained_variance_sums(
        v[:, 1:], g4[:, 1:], m4[:, 1:]
    )
    assert rlhf.explained_variance_from_sums(halves) == pytest.approx(2 / 3)
    assert math.isnan(rlhf.explained_variance_from_sums([3, 6.0, 12.0, 0.0, 0.0]))  # constant G


def test_last_token_index_one_contract():
    """Last True per row, any padding; -1 for an empty row (by hand)."""
    m = torch.tensor([[True, True, False], [False, True, True], [False, False, False]])
    assert rlhf.last_token_index(m).tolist() == [1, 2, -1]


def test_adaptive_kl_controller():
    # KL 9 vs target 6: error clipped to +0.2; beta *= 1 + 0.2 * 256 / 10000
    ctl = rlhf.AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.1 * 1.00512)
    ctl.update(current_kl=3.0, n_steps=10000)  # error -0.5 -> -0.2: beta *= 0.8
    assert ctl.value == pytest.approx(0.1 * 1.00512 * 0.8)
    # a batch larger than the horizon moves beta by at most 20% and never below 0
    ctl = rlhf.AdaptiveKLController(value=0.05, target=6.0, horizon=100)
    ctl.update(current_kl=0.0, n_steps=512)
    assert ctl.value == pytest.approx(0.05 * 0.8)
    fixed = rlhf.FixedKLController(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05


def test_running_moments_merge():
    # 10 values with mean 2, var 4, then 10 values all 4: mean 3, E[x^2] = (80 + 160) / 20 = 12, var 3
    m = rlhf.RunningMoments()
    m.update(2.0, 4.0, 10)
    m.update(4.0, 0.0, 10)
    assert m.mean == pytest.approx(3.0)
    assert m.var == pytest.approx(3.0)
    assert m.std == pytest.approx(math.sqrt(3.0))


def test_token_reward_scale_by_hand():
    r = torch.tensor([[2.0, 4.0, 7.0]])
    assert rlhf.scale_token_rewards(r, TWO, "raw").tolist() == [[2.0, 4.0, 0.0]]
    assert rlhf.scale_token_rewards(r, TWO, "mean").tolist() == [[1.0, 2.0, 0.0]]  # Σ = R(τ) = 3
    # a level shift c adds c·T to the raw return but the same c to every mean-scaled return
    short, long = torch.tensor([[True, False, False]]), ALL
    for c in (0.0, 5.0):
        raw_gap = (
            rlhf.scale_token_rewards(r + c, long, "raw").sum()
            - rlhf.scale_token_rewards(r + c, short, "raw").sum()
        )
        mean_gap = (
            rlhf.scale_token_rewards(r + c, long, "mean").sum()
            - rlhf.scale_token_rewards(r + c, short, "mean").sum()
        )
        assert mean_gap.item() == pytest.approx(13 / 3 - 2)  # unchanged by c
        assert raw_gap.item() == pytest.approx(11 + 2 * c)  # grows with c: a length incentive
    with pytest.raises(ValueError, match="scale"):
        rlhf.scale_token_rewards(r, TWO, "sum")


def test_running_mean_scale_by_hand():
    # content scores 2, 4, then EOS (score 1, left out) and padding: m = 2, 3, 3 -> [2, 1, 0, 0]
    r = torch.tensor([[2.0, 4.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True, False]])
    eos = torch.tensor([[False, False, True, False]])
    assert rlhf.scale_token_rewards(r, mask, "running_mean", eos).tolist() == [[2.0, 1.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match="eos"):
        rlhf.scale_token_rewards(r, mask, "running_mean")


def test_running_mean_sums_to_the_content_mean_and_is_causal():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(6, 11, generator=g)
    lengths = torch.tensor([11, 1, 5, 8, 3, 10])
    mask = torch.arange(11)[None, :] < lengths[:, None]
    eos = torch.zeros_like(mask)
    eos[[0, 1, 2, 3], lengths[[0, 1, 2, 3]] - 1] = True  # rows 0-3 end with EOS (row 1: EOS alone)
    out = rlhf.scale_token_rewards(r, mask, "running_mean", eos)
    content = mask & ~eos
    want = torch.where(content, r, 0.0).sum(-1) / content.sum(-1).clamp_min(1)
    want[1] = r[1, 0]  # an EOS-only response: its EOS score stands for it
    torch.testing.assert_close(out.sum(-1), want)  # Σ r̃ = R(τ) over content tokens
    assert (out[~mask] == 0).all() and (out[eos][[0, 2, 3]] == 0).all()
    # causal: changing the scores from position 4 on leaves the rewards before 4 unchanged
    r2 = r.clone()
    r2[:, 4:] += 10.0
    torch.testing.assert_close(rlhf.scale_token_rewards(r2, mask, "running_mean", eos)[:, :4], out[:, :4])
    # a level shift c adds the same c to every response's sum, whatever its length
    shifted = rlhf.scale_token_rewards(r + 3.0, mask, "running_mean", eos).sum(-1)
    torch.testing.assert_close(shifted - out.sum(-1), torch.full((6,), 3.0))


def test_stopping_is_judged_by_its_effect_only_under_running_mean():
    """Every content token scores +1 (the level the BT loss cannot see). Whether the response stops
    after 2 tokens or goes on to 4, R(τ) = 1: length should not pay. With gamma = lam = 1 and no
    critic, the return-to-go at the EOS decision (position 2) is what the policy gradient weighs
    that decision by: 'stop' vs 'continue' must tie."""
    stop = torch.tensor([[1.0, 1.0, 0.0, 0.0, 0.0]])  # 2 words, EOS
    go = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])  # 4 words, EOS
    m_stop = torch.tensor([[True, True, True, False, False]])
    m_go = torch.ones(1, 5, dtype=torch.bool)
    e_stop = torch.tensor([[False, False, True, False, False]])
    e_go = torch.tensor([[False, False, False, False, True]])

    def to_go(scale):
        a = rlhf.scale_token_rewards(stop, m_stop, scale, e_stop)
        b = rlhf.scale_token_rewards(go, m_go, scale, e_go)
        return a[0, 2:].sum().item(), b[0, 2:].sum().item(), a.sum().item(), b.sum().item()

    s, c, total_s, total_c = to_go("running_mean")
    assert total_s == pytest.approx(1.0) and total_c == pytest.approx(1.0)
    assert s == pytest.approx(0.0) and c == pytest.approx(0.0)  # tie: no length incentive
    s, c, *_ = to_go("mean")  # stopping: "0 from here"; continuing: 2 more tokens of 1/5
    assert s == pytest.approx(0.0) and c == pytest.approx(2 / 5)  # continuing looks better
    s, c, *_ = to_go("raw")
    assert s == pytest.approx(0.0) and c == pytest.approx(2.0)  # and by far, raw


def test_missing_eos_and_last_token_bonus_by_hand():
    ids = torch.tensor([[5, 2, 0], [5, 6, 7], [0, 0, 0]])  # EOS = 2
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert rlhf.missing_eos(ids, mask, 2).tolist() == [False, True, True]
    assert rlhf.missing_eos(ids, mask, None).tolist() == [False, False, False]
    out = rlhf.add_on_last_token(torch.zeros(3, 3), mask, torch.tensor([1.0, -2.0, 9.0]))
    assert out.tolist() == [[0.0, 1.0, 0.0], [0.0, 0.0, -2.0], [0.0, 0.0, 0.0]]


def test_prompt_order_is_one_pass_per_epoch_and_pure():
    n, rows = 10, 4
    seen = torch.cat([rlhf.prompt_order(i, rows, n, seed=3) for i in range(5)])  # 20 draws = 2 epochs
    assert sorted(seen[:10].tolist()) == list(range(10)) and sorted(seen[10:].tolist()) == list(range(10))
    assert torch.equal(rlhf.prompt_order(3, rows, n, seed=3), seen[12:16])  # resumable: pure in i
    assert not torch.equal(seen[:10], seen[10:])  # a fresh permutation each epoch
    assert (
        rlhf.prompt_order(0, 3, 4, 0).tolist()
        == torch.randperm(4, generator=torch.Generator().manual_seed(0))[:3].tolist()
    )
