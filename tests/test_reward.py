"""trainer/reward.py: the training step against the reference composition, 2-process torchrun
runs (token and sequence mode), the saved model, bad input. (Run safety, shared with the other
trainers — SIGTERM, exact 2-process resume, the output lock, resume's config checks:
test_run_safety.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _tiny_runs import TINY_REWARD
from _utils import clean_env, launch

from fgkernels.token_bt_loss import token_bt_loss_reference
from trainer.data.pairs import collate_pairs, load_pair_data
from trainer.data.synthetic import SyntheticConfig, build_tokenizer, write_synthetic
from trainer.infra.config import load_config
from trainer.models import per_token_scores, scalar_head_config, tiny_llama_config
from trainer.reward import RewardConfig, evaluate, main, pair_loss

ROOT = Path(__file__).resolve().parent.parent
TINY = TINY_REWARD


def torchrun(args: list[str], nproc: int = 2, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node=nproc trainer/reward.py args`` (gloo, CPU)."""
    return launch("trainer/reward.py", args, nproc=nproc, timeout=timeout)


def records(out_dir: Path, split: str) -> list[dict]:
    lines = (out_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["split"] == split]


# --- 1. the training step vs the reference composition ------------------------------------
def _tiny_batch(tmp_path, mode: str):
    syn = SyntheticConfig(n_pairs=40, seed=3)
    pairs_path, _ = write_synthetic(tmp_path / "syn", syn)
    tok = build_tokenizer(syn)
    cfg = RewardConfig(rm_level=mode, max_length=64, eval_fraction=0.0)
    data = load_pair_data(str(pairs_path), tok, cfg, split=None)
    pairs = (data.edited if mode == "token" else data.original)[:6]
    return tok, collate_pairs(pairs, tok.pad_token_id)


@pytest.mark.parametrize("mode,variant", [("token", "exact"), ("token", "changed"), ("sequence", "exact")])
def test_training_step_matches_reference_composition(tmp_path, mode, variant):
    from transformers import AutoModelForTokenClassification

    tok, batch = _tiny_batch(tmp_path, mode)
    sizes = RewardConfig(hidden_size=32, num_layers=2, num_heads=4)
    hf = scalar_head_config(tiny_llama_config(sizes, tok), tok.pad_token_id)
    model = AutoModelForTokenClassification.from_config(hf)
    B = batch["input_ids"].shape[0] // 2

    # the trainer's path: per-token head -> pair_loss (fgkernels) -> Σ / N
    scores = per_token_scores(model, batch["input_ids"], batch["attention_mask"])
    loss_b, _ = pair_loss(scores, batch, mode, variant)
    loss = loss_b.sum() / B
    grads = torch.autograd.grad(loss, list(model.parameters()))

    # the reference composition, written independently: HF logits -> reference BT loss
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"].long()).logits[..., 0]
    m, c = batch["response_mask"], batch["changed_mask"]
    if mode == "token":
        ref = token_bt_loss_reference(logits[:B], logits[B:], m[:B], m[B:], c[:B], c[B:], variant).loss
    else:
        last = [int(row.nonzero().max()) for row in m]
        r = torch.stack([logits[i, t] for i, t in enumerate(last)])
        ref = -F.logsigmoid(r[:B] - r[B:]).mean()
    ref_grads = torch.autograd.grad(ref, list(model.parameters()))

    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-6)
    assert ref.item() > 0.1  # a real loss, not a degenerate zero
    for (name, _), g, rg in zip(model.named_parameters(), grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-6, msg=lambda s, n=name: f"grad of {n}: {s}")
    assert any(g.abs().sum() > 0 for g in grads)


# --- 2. 2-process torchrun runs --------------------------------------------------------------
@pytest.fixture(scope="module")
def token_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rm_token")
    torchrun([f"output_dir={out}", "max_steps=40", "eval_every=40", "log_every=10", *TINY])
    return out


@pytest.mark.slow
def test_torchrun_token_mode_learns(token_run):
    ev = records(token_run, "eval")
    first, last = ev[0], ev[-1]
    assert first["step"] == 0 and last["step"] == 40
    assert last["accuracy"] >= 0.85, last  # held-out (edited ≻ original) pairs; chance is 0.5
    assert last["accuracy"] > first["accuracy"] + 0.1
    assert last["auroc_removed"] > 0.7  # per-token rewards single out the tokens the edit removed
    assert last["reward_changed_original"] < last["reward_unchanged_original"]
    assert (token_run / "final" / "model.safetensors").exists()
    assert (token_run / "best" / "config.json").exists()


@pytest.mark.slow
def test_torchrun_sequence_mode_runs(tmp_path):
    torchrun(
        [f"output_dir={tmp_path}", "rm_level=sequence", "max_steps=10", "eval_every=0", "log_every=5", *TINY]
    )
    tr, ev = records(tmp_path, "train"), records(tmp_path, "eval")
    assert [r["step"] for r in tr] == [5, 10] and all(r["loss"] > 0 for r in tr)
    assert ev[-1]["step"] == 10 and 0 <= ev[-1]["original_accuracy"] <= 1
    meta = json.loads((tmp_path / "final" / "fgrlhf_reward.json").read_text())
    assert meta["level"] == "sequence"


# --- 3. the saved model scores like the trained one ------------------------------------------
def test_saved_model_reproduces_final_eval(token_run):
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    final = token_run / "final"
    model = AutoModelForTokenClassification.from_pretrained(final).eval()  # plain transformers
    tok = AutoTokenizer.from_pretrained(final)
    cfg = load_config(RewardConfig, [f"output_dir={token_run}", *TINY])
    data = load_pair_data(str(token_run / "synthetic" / "pairs.jsonl"), tok, cfg, split="eval")
    got = evaluate(model, data, cfg, tok.pad_token_id, torch.device("cpu"))
    want = records(token_run, "eval")[-1]
    for key in ("accuracy", "margin", "loss", "original_accuracy", "auroc_added", "reward_changed_edited"):
        assert got[key] == pytest.approx(want[key], abs=1e-5), key


@pytest.mark.slow
def test_fgrlhf_eval_rm_scores_a_saved_model_like_the_trainer(token_run, tmp_path):
    """`fgrlhf eval-rm` on the held-out file: the trainer's metrics of the saved model."""
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    pairs = token_run / "synthetic" / "pairs.jsonl"
    cmd = [sys.executable, "-m", "trainer.cli", "eval-rm", str(token_run / "final"), str(pairs),
           "--max-length", "128", "--json", str(tmp_path / "m.json")]  # fmt: skip
    p = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    got = json.loads((tmp_path / "m.json").read_text())
    tok = AutoTokenizer.from_pretrained(token_run / "final")
    model = AutoModelForTokenClassification.from_pretrained(token_run / "final").eval()
    cfg = RewardConfig(max_length=128, eval_fraction=0.0)
    want = evaluate(
        model, load_pair_data(str(pairs), tok, cfg, split=None), cfg, tok.pad_token_id, torch.device("cpu")
    )
    assert got["level"] == "token" and got["edited_pairs"] == want["edited_pairs"] > 100
    for key in ("accuracy", "edited_accuracy", "original_accuracy", "auroc_removed"):
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert "accuracy " in p.stdout
    bad = subprocess.run([*cmd[:4], str(token_run), str(pairs)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "is a run directory; did you mean" in bad.stderr


# --- 4. bad input ----------------------------------------------------------------------------
def test_missing_dataset_file_is_a_clear_error(tmp_path, capsys):
    assert main([f"data={tmp_path}/nope.jsonl", f"output_dir={tmp_path}/o"]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_malformed_config_key_is_a_clear_error(capsys):
    assert main(["micro_batch=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'micro_batch'" in err and "micro_batch_size" in err
    assert main(["rm_level=tokens"]) == 2
    assert "'rm_level': 'tokens' is not one of" in capsys.readouterr().err
    assert main(["keep_checkpoints=0"]) == 2  # a declared lower bound
    assert "'keep_checkpoints': must be >= 1, got 0" in capsys.readouterr().err


def test_bad_records_are_counted_or_named(tmp_path):
    syn = SyntheticConfig(n_pairs=4, seed=5)
    tok = build_tokenizer(syn)
    good = {"id": "a", "prompt": "p1 p2", "original": "n1 b2 n3", "edited": "n1 g2 n3", "chosen": "n4 n5"}
    long = " ".join(["n1"] * 200)
    rows = [
        good,
        {**good, "id": "b", "edited": ""},  # empty edit -> no edited pair, original pair kept
        {**good, "id": "c", "original": "  "},  # empty original -> skipped entirely
        {**good, "id": "d", "chosen": ""},  # empty chosen -> no original pair
        {**good, "id": "e", "original": long},  # response longer than max_length
        {**good, "id": "f", "status": "not_minimal"},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = RewardConfig(max_length=64, eval_fraction=0.0)
    data = load_pair_data(str(path), tok, cfg, split=None)
    assert len(data.edited) == 2 and len(data.original) == 3  # a, d | a, b, f
    assert dict(data.skipped) == {
        "empty_edited": 1,
        "empty_original": 1,
        "empty_chosen": 1,
        "edited_too_long": 1,
        "original_too_long": 1,
        "edit_status_not_minimal": 1,
    }
    from trainer.data.formats import DataError

    with pytest.raises(DataError, match="line 5: response longer than max_length=64"):
        load_pair_data(
            str(path), tok, RewardConfig(max_length=64, eval_fraction=0.0, on_too_long="error"), None
        )
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "x", "original": "n1"}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"line 2: field 'prompt': missing"):
        load_pair_data(str(path), tok, cfg, split=None)
    lenient = load_pair_data(
        str(path), tok, RewardConfig(max_length=64, eval_fraction=0.0, skip_invalid=True), None
    )
    assert lenient.skipped["invalid_record"] == 2 and len(lenient.edited) == 1
    # the last record of an id counts (fgrlhf edit appends a re-gated record after the first)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "status": "not_minimal"}) + "\n")
    later = load_pair_data(str(path), tok, cfg, split=None)
    assert (
        len(later.edited) == 0 and later.skipped["edit_status_not_minimal"] == 1 and len(later.original) == 1
    )
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "x", "original": "n1"}) + "\n{oops\n")
    # with a held-out split, a bad line is counted once over both passes, not twice
    split_cfg = RewardConfig(max_length=64, eval_fraction=0.5, skip_invalid=True)
    halves = [
        load_pair_data(str(path), tok, split_cfg, split=s).skipped["invalid_record"]
        for s in ("train", "eval")
    ]
    assert sum(halves) == 2, halves


def test_out_of_range_values_and_a_file_as_output_dir_are_refused(tmp_path, capsys):
    """Ranges come from the config declaration (one mechanism): each bad value names its key."""
    for bad, msg in (
        ("checkpoint_every=-1", "'checkpoint_every': must be >= 0, got -1"),
        ("keep_checkpoints=-1", "'keep_checkpoints': must be >= 1, got -1"),
        ("eval_every=-5", "'eval_every': must be >= 0, got -5"),
    ):
        assert main([bad, f"output_dir={tmp_path}/o"]) == 2, bad
        assert msg in capsys.readouterr().err, bad
    from trainer.ppo import main as ppo_main  # memory_limit_gb is PPO's

    assert ppo_main(["memory_limit_gb=-1", f"output_dir={tmp_path}/p"]) == 2
    assert "'memory_limit_gb': must be >= 0, got -1" in capsys.readouterr().err
    afile = tmp_path / "a_file"
    afile.write_text("x")
    assert main([f"output_dir={afile}"]) == 2
    assert "exists and is not a directory" in capsys.readouterr().err


def test_too_few_pairs_stops_before_training(tmp_path, capsys):
    syn = tmp_path / "d"
    pairs_path, tok_dir = write_synthetic(syn, SyntheticConfig(n_pairs=10))
    rc = main(
        [f"data={pairs_path}", f"tokenizer={tok_dir}", f"output_dir={tmp_path}/o", "micro_batch_size=64"]
    )
    assert rc == 2 and "fewer than one global batch" in capsys.readouterr().err
