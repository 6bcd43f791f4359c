"""``fgrlhf generate``: what a rerun may reuse (the model's contents, the generator, dtype, device,
batches), which models and outputs are refused before anything is written, and that nothing
ever reaches the Hugging Face Hub. Tiny LLaMA models over the synthetic world's vocabulary."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from trainer.cli import main as cli  # noqa: E402
from trainer.eval import generate as G  # noqa: E402
from trainer.infra.config import ConfigError  # noqa: E402

SIZES = SimpleNamespace(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    """A guard: no test here may reach the Hub (and none finds a real cache)."""
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from trainer.data.synthetic import SyntheticConfig, write_synthetic

    _, tok_dir = write_synthetic(tmp_path_factory.mktemp("syn") / "syn", SyntheticConfig(n_pairs=40))
    return Path(tok_dir)


def make_policy(tokenizer_dir: Path, out: Path, seed: int = 0, kind: str = "causal_lm", **meta) -> Path:
    """A random tiny LLaMA saved as the trainers save one (``fgrlhf_policy.json`` unless ``meta``)."""
    from transformers import AutoTokenizer, LlamaForCausalLM, LlamaForTokenClassification

    from trainer.models import save_pretrained, scalar_head_config, tiny_llama_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = tiny_llama_config(SIZES, tok)
    if kind == "scalar_head":
        model = LlamaForTokenClassification(scalar_head_config(config))
    else:
        model = LlamaForCausalLM(config)
    meta = meta or {"policy_meta": {"prompt_template": "plain"}}
    return save_pretrained(model.state_dict(), model.config, kind, out, tok, **meta)


@pytest.fixture(scope="module")
def policy(tokenizer_dir, tmp_path_factory) -> Path:
    return make_policy(tokenizer_dir, tmp_path_factory.mktemp("policy") / "actor")


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> Path:
    rows = [{"instruction": " ".join(f"p{(i * 5 + j) % 32}" for j in range(2 + i % 3))} for i in range(5)]
    rows[1]["instruction"] += " é"  # kept as is in the output (ensure_ascii=False)
    path = tmp_path_factory.mktemp("instr") / "instructions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def gen(model, instructions: Path, out: Path, *extra: str) -> int:
    return cli(["generate", str(model), str(instructions), "-o", str(out), "--no-progress",
                "--max-new-tokens", "8", "--batch-size", "2", *extra])  # fmt: skip


def partial(out: Path) -> Path:
    return out.with_name(out.name + ".partial.jsonl")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(G._SIDECAR))
    return dst


def flip_byte_keeping_stamp(path: Path, offset: int) -> None:
    """Change the byte at ``offset`` in place: same size, same mtime (what ``name + size + mtime``
    would call the same file). Slept first so the kernel's ctime tick moves on."""
    st = path.stat()
    time.sleep(0.05)
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size and path.stat().st_mtime_ns == st.st_mtime_ns


# --- 2. the resume key is the model's contents -----------------------------------------------
def test_weights_sha256_sees_a_late_byte_behind_an_unchanged_stamp(tmp_path, monkeypatch):
    """The full content is hashed (a byte past the first MiB counts), the sidecar cache is used,
    and a write that keeps size and mtime does not get the cached hash (ctime moved)."""
    d = tmp_path / "m"
    d.mkdir()
    w = d / "model.safetensors"
    w.write_bytes(os.urandom(3 << 20))
    fresh = G.weights_sha256(d)
    assert not (d / G._SIDECAR).exists()  # changed < 2 s ago: hashed, not cached
    monkeypatch.setattr(G, "_RACY_NS", 0)
    assert G.weights_sha256(d) == fresh
    cache = json.loads((d / G._SIDECAR).read_text())["files"]
    assert set(cache) == {"model.safetensors"}
    # the cache is what is read while the stamp holds (a planted digest shows through)
    planted = {"files": {"model.safetensors": {**cache["model.safetensors"], "sha256": "0" * 64}}}
    (d / G._SIDECAR).write_text(json.dumps(planted))
    assert G.weights_sha256(d) != fresh
    (d / G._SIDECAR).write_text(json.dumps({"files": cache}))
    assert G.weights_sha256(d) == fresh
    flip_byte_keeping_stamp(w, (3 << 20) - 7)  # late: past anything a first-MiB hash reads
    changed = G.weights_sha256(d)
    assert changed != fresh
    assert G.weights_sha256(d) == changed
    # every weight file counts, and their names
    (d / "extra.bin").write_bytes(b"x")
    assert G.weights_sha256(d) != changed
    with pytest.raises(ConfigError, match="no weight files"):
        G.weights_sha256(tmp_path)


def test_generate_refuses_the_answers_of_a_replaced_model(policy, tokenizer_dir, instructions, tmp_path,
                                                           monkeypatch, caplog):  # fmt: skip
    """A model directory replaced in place, or one late weight byte changed (size and mtime
    kept), or its tokenizer changed: the stored answers are refused, nothing is written. The
    same model moved elsewhere reuses them."""
    monkeypatch.setattr(G, "_RACY_NS", 0)  # let the sidecar cache hash the weights (fresh files)
    model = copy_model(policy, tmp_path / "models" / "m")
    out = tmp_path / "out.json"
    assert gen(model, instructions, out) == 0
    assert (model / G._SIDECAR).exists()
    first = out.read_text(encoding="utf-8")
    log_bytes = partial(out).read_bytes()
    # one late byte of the weights, size and mtime kept
    w = model / "model.safetensors"
    flip_byte_keeping_stamp(w, w.stat().st_size - 1)
    caplog.clear()
    assert gen(model, instructions, out) == 2
    assert "generated by another model (weights differ" in caplog.text
    assert partial(out).read_bytes() == log_bytes and out.read_text(encoding="utf-8") == first
    flip_byte_keeping_stamp(w, w.stat().st_size - 1)  # back: the same model again
    assert gen(model, instructions, out) == 0
    # the directory replaced by another model
    make_policy(tokenizer_dir, model, seed=1)
    caplog.clear()
    assert gen(model, instructions, out) == 2
    assert "weights differ" in caplog.text
    assert partial(out).read_bytes() == log_bytes
    # the tokenizer changed (weights the same)
    shutil.rmtree(model)
    copy_model(policy, model)
    tc = model / "tokenizer_config.json"
    tc.write_text(json.dumps({**json.loads(tc.read_text()), "model_max_length": 77}))
    caplog.clear()
    assert gen(model, instructions, out) == 2
    assert "config.json or tokenizer files differ" in caplog.text
    # moved (same contents, same generator name): nothing generated again
    moved = copy_model(policy, tmp_path / "elsewhere" / "m")
    cfg = G.GenerateConfig(str(moved), str(instructions), str(out), generator="m", max_new_tokens=8,
                           batch_size=2, progress=False)  # fmt: skip
    s = G.run_generate(cfg)
    assert (s["generated"], s["already_done"]) == (0, 5)
    assert out.read_text(encoding="utf-8") == first


def test_old_partial_files_without_a_model_identity_are_refused(policy, instructions, tmp_path, caplog):
    out = tmp_path / "out.json"
    assert gen(policy, instructions, out) == 0
    recs = read_jsonl(partial(out))
    for r in recs:
        r["settings"]["model"] = str(policy)  # what the old version stored: the path
    partial(out).write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert gen(policy, instructions, out) == 2
    assert "do not record which model made them" in caplog.text


# --- 10. every setting that changes what is written is part of the key -----------------------
def test_generate_refuses_another_generator_dtype_device_or_batch_plan(
    policy, instructions, tmp_path, caplog
):
    out = tmp_path / "out.json"
    assert gen(policy, instructions, out, "--generator", "A", "--seed", "1") == 0
    full = json.loads(out.read_text(encoding="utf-8"))
    log = partial(out)
    lines = log.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:2]))  # killed after 2 answers
    out.unlink()
    before = log.read_bytes()
    for extra, what in (
        (("--generator", "B"), "'generator': \"'A' -> 'B'\""),
        (("--generator", "A", "--dtype", "bfloat16"), "'dtype': \"'float32' -> 'bfloat16'\""),
    ):
        caplog.clear()
        assert gen(policy, instructions, out, "--seed", "1", *extra) == 2, extra
        assert what in caplog.text, (extra, caplog.text)
        assert log.read_bytes() == before and not out.exists()
    # --dtype float32 is what "auto" means for this fp32 checkpoint: resumed
    assert gen(policy, instructions, out, "--seed", "1", "--generator", "A", "--dtype", "float32") == 0
    assert json.loads(out.read_text(encoding="utf-8")) == full
    assert {r["generator"] for r in full} == {"A"}
    # answers sampled on another device type
    recs = read_jsonl(log)
    recs[0]["settings"]["device"] = "cuda"
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    caplog.clear()
    assert gen(policy, instructions, out, "--seed", "1", "--generator", "A") == 2
    assert "'device': \"'cuda' -> 'cpu'\"" in caplog.text
    # --limit 3, then all: other batches (batch 1 was [0], is [4, 0]): refused
    lim = tmp_path / "lim.json"
    assert gen(policy, instructions, lim, "--generator", "A", "--seed", "1", "--limit", "3") == 0
    before = partial(lim).read_bytes()
    caplog.clear()
    assert gen(policy, instructions, lim, "--generator", "A", "--seed", "1") == 2
    assert "was sampled in another batch" in caplog.text
    assert partial(lim).read_bytes() == before
    # ... and the refusal is not vacuous: those batches really sample other answers
    assert json.loads(lim.read_text(encoding="utf-8")) != full[:3]


# --- 3. only a causal LM with all its weights ------------------------------------------------
def test_generate_refuses_a_reward_model_and_a_missing_lm_head(tokenizer_dir, instructions, tmp_path, caplog):
    rm = make_policy(tokenizer_dir, tmp_path / "rm", kind="scalar_head", reward_meta={"level": "token"})
    out_dir = tmp_path / "outs"
    out_dir.mkdir()
    assert gen(rm, instructions, out_dir / "o.json") == 2
    assert "is a reward model (fgrlhf_reward.json), not a policy" in caplog.text
    (rm / "fgrlhf_reward.json").unlink()  # a scalar-head model without its metadata
    caplog.clear()
    assert gen(rm, instructions, out_dir / "o.json") == 2
    assert "do not fit a causal LM (missing ['lm_head.weight'], unexpected ['score." in caplog.text
    assert str(rm) in caplog.text
    assert list(out_dir.iterdir()) == []  # refused before anything was written


def test_generate_loads_tied_embeddings(tokenizer_dir, instructions, tmp_path):
    """An LM head tied to embed_tokens is stored once: not a missing weight."""
    from safetensors import safe_open
    from transformers import AutoTokenizer, LlamaForCausalLM

    from trainer.models import tiny_llama_config

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = tiny_llama_config(SIZES, tok)
    config.tie_word_embeddings = True
    d = tmp_path / "tied"
    LlamaForCausalLM(config).save_pretrained(d)
    tok.save_pretrained(d)
    with safe_open(str(d / "model.safetensors"), "pt") as f:
        assert "lm_head.weight" not in set(f.keys())
    assert gen(d, instructions, tmp_path / "o.json", "--prompt-template", "plain") == 0
    assert len(json.loads((tmp_path / "o.json").read_text(encoding="utf-8"))) == 5


# --- 5. where -o may write ------------------------------------------------------------------
def test_generate_refuses_an_output_that_is_an_input(policy, instructions, tmp_path, caplog):
    instr = tmp_path / "instructions.jsonl"
    shutil.copy(instructions, instr)
    model = copy_model(policy, tmp_path / "m")
    weights = (model / "model.safetensors").read_bytes()
    for out, what in (
        (instr, "is the input"),
        (tmp_path, "is a directory"),
        (model, "is a directory"),
        (model / "model.safetensors", "is the input"),
        (model / "config.json", "is the input"),
    ):
        caplog.clear()
        assert gen(model, instr, out) == 2, out
        assert what in caplog.text
    assert instr.read_bytes() == instructions.read_bytes()
    assert (model / "model.safetensors").read_bytes() == weights
    assert not list(tmp_path.glob("*.partial*"))
    # the output: AlpacaEval's list, indent 2, UTF-8 as is
    out = tmp_path / "ok.json"
    assert gen(model, instr, out) == 0
    text = out.read_text(encoding="utf-8")
    assert text.startswith("[\n  {\n") and " é" in text and not list(tmp_path.glob(".ok.json.tmp-*"))


# --- 14. no Hub round trip for a local path ----------------------------------------------------
@pytest.mark.parametrize("name", ["runs/nope", "./nope", "nope/", "a/b/c", "~/fgrlhf-no-such-model-dir"])
def test_resolve_model_refuses_a_missing_local_path_at_once(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="no such model directory$"):
        G.resolve_model(name)
    assert time.perf_counter() - t0 < 0.5


def test_generate_missing_model_fails_fast(instructions, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    t0 = time.perf_counter()
    assert gen("runs/nope", instructions, tmp_path / "o.json") == 2
    assert time.perf_counter() - t0 < 1.0
    assert "model runs/nope: no such model directory" in caplog.text
    # a Hub id is only looked up in the cache (offline): refused as fast
    caplog.clear()
    t0 = time.perf_counter()
    assert gen("org/name", instructions, tmp_path / "o.json") == 2
    assert time.perf_counter() - t0 < 1.0
    assert "not a model in the Hugging Face cache" in caplog.text
    assert not list(tmp_path.glob("o.json*"))


def test_generate_a_hub_id_from_the_cache(policy, instructions, tmp_path):
    """``org/name`` in the Hugging Face cache loads without the network (the guard is on)."""
    import huggingface_hub.constants as hc

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(hc.HF_HUB_CACHE) / "models--org--name"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    copy_model(policy, repo / "snapshots" / commit)
    out = tmp_path / "hub.json"
    assert G.resolve_model("org/name") == repo / "snapshots" / commit
    assert gen("org/name", instructions, out) == 0
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert len(rows) == 5 and {r["generator"] for r in rows} == {"name"}
    assert G.GenerateConfig("m", "i", "o").allow_download is False


# --- other ranks' files ----------------------------------------------------------------------
def test_stored_skips_lines_that_are_not_records(tmp_path):
    """Another rank's file may hold damage of any kind: a number too long for int(), nesting
    too deep for the parser, bad UTF-8, JSON that is not a record."""
    out = tmp_path / "o.json"
    bad = [
        b'{"id": 1' + b"1" * 5000 + b"}",  # ValueError: exceeds the integer string limit
        b"[" * 100_000,  # RecursionError
        b"\xff\xfe",
        b'"text"',
        b"[]",
        b"{}",
        b'{"id": "7", "output": "x"}',
    ]
    (tmp_path / "o.json.partial.rank1.jsonl").write_bytes(b"\n".join(bad) + b"\n")
    assert list(G._stored(out)) == ["7"]


def test_hub_downloads_only_when_allowed(tmp_path, monkeypatch):
    """Without ``allow_download`` the cache alone is asked; with it, the config, tokenizer and
    one weight format are fetched (``*.bin`` only when the repo has no safetensors)."""
    import huggingface_hub

    calls = []

    def snapshot_download(name, local_files_only=False, allow_patterns=None):
        calls.append((name, local_files_only, allow_patterns))
        return str(tmp_path)  # a snapshot with no safetensors

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert G.resolve_model("org/name") == tmp_path
    assert calls == [("org/name", True, None)]
    calls.clear()
    assert G.resolve_model("org/name", allow_download=True) == tmp_path
    assert [c[1] for c in calls] == [False, False]
    assert "*.safetensors*" in calls[0][2] and "*.bin" in calls[1][2] and "config.json" in calls[1][2]
    assert G.GenerateConfig("m", "i", "o", allow_download=True).allow_download is True
