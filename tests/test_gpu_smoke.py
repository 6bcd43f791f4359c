"""bench/gpu_smoke.py, the script GPU time depends on: it must be right the first time it runs on
a GPU, so CI runs it here. Without CUDA the plain call says so and exits 0; the CPU rehearsal
(``--rehearse-on-cpu``) runs every check through the same functions at tiny sizes and must pass
(~1-1.5 min on 2 cores); the pieces that only decide on a GPU (the memory ratio, parity
accounting, the SDPA backend verdict, recording) are tested here on made-up inputs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _utils import clean_env

from bench import gpu_smoke as gs

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = [sys.executable, "bench/gpu_smoke.py"]


def table_rows(stdout: str) -> dict[str, list[str]]:
    """``{check: [result, value, limit]}`` from the final table (the last row of a check label wins)."""
    rows = {}
    for line in stdout.split("gpu_smoke on ")[-1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 4 and cells[0] != "check":
            rows[cells[0]] = cells[1:]
    return rows


# --- the two ways it is run here -------------------------------------------------------------
def test_without_cuda_it_says_so_and_exits_0():
    env = {**clean_env(), "CUDA_VISIBLE_DEVICES": ""}
    p = subprocess.run(SCRIPT, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "no CUDA device" in p.stdout and "nothing checked" in p.stdout
    refused = subprocess.run(
        [*SCRIPT, "--record", "--rehearse-on-cpu"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "--record appends GPU results" in refused.stderr


@pytest.mark.slow
def test_cpu_rehearsal_runs_every_check_and_passes():
    """Every check's code runs (tiny sizes, CPU); the table names each one and nothing FAILs.
    The row "2. bf16 ckpt → sharded params" is the master-weights check: it fails when a
    bf16-saved checkpoint builds bf16 shards (fixed in trainer.models.build_sharded)."""
    env = clean_env()
    p = subprocess.run(
        [*SCRIPT, "--rehearse-on-cpu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    out = p.stdout + p.stderr
    rows = table_rows(p.stdout)
    assert p.returncode == 0, f"exit {p.returncode}; rows {rows}\n{out[-6000:]}"
    must_pass = [
        "1. kernel parity",
        "2. bf16 ckpt → sharded params",
        "2. one AdamW step",
        "3. decode vs forward, float32",
        "3. decode vs forward, bfloat16",
        "4. PPO: 2 of 3 iterations",
        "4. PPO: rerun resumes to 3",
        "5. CPU dry run (fake tensors)",
        "5. real run used the plan",
        "6. wall time",
    ]
    for check in must_pass:
        assert rows.get(check, ["missing"])[0] == "PASS", (check, rows.get(check))
    info = ["3. SDPA backend (bf16)", "4. PPO: last iteration", *(f"5. memory: {ph}" for ph in gs.PHASES)]
    for check in info:
        assert rows.get(check, ["missing"])[0] == "INFO", (check, rows.get(check))
    assert rows["3. decode tokens/s (bf16)"][0] in ("INFO", "WARN")  # a speed on 2 busy cores
    assert not any(r[0] == "FAIL" for r in rows.values())
    assert "8/8 passed" in rows["1. kernel parity"][1]  # one odd shape per op, fp32, interpreter
    assert "resumed: True; iterations [1, 2, 3]" in rows["4. PPO: rerun resumes to 3"][1]
    assert "every check passed" in p.stdout


# --- what only decides on a GPU, on made-up inputs ----------------------------------------------
def test_parity_accounting_fails_on_anything_but_a_pass():
    ids = ["tests/a.py::t[1]", "tests/a.py::t[2]", "tests/b.py::u"]
    out = "\n".join(f"{i} PASSED [ 50%]" for i in ids)
    assert gs.parity_verdict(ids, gs.parse_pytest(out)) == ("PASS", "3/3 passed")
    out = f"{ids[0]} PASSED [ 33%]\n{ids[1]} FAILED [ 66%]\n{ids[2]} SKIPPED (no triton) [100%]"
    result, value = gs.parity_verdict(ids, gs.parse_pytest(out))
    assert result == "FAIL" and "1 failed (first tests/a.py::t[2])" in value and "1 skipped" in value
    result, value = gs.parity_verdict(ids, gs.parse_pytest(f"{ids[0]} PASSED"))  # killed at the budget
    assert result == "FAIL" and "2 not run (first tests/a.py::t[2])" in value


def test_ppo_metrics_iterations_once_each_and_finite():
    good = [{"iteration": i, "kl": 0.1, "reward": -0.5} for i in (1, 2, 3)]
    assert gs.ppo_problems(good, 3) == []
    assert gs.ppo_problems(good[:2] + good[1:], 3) == ["iterations [1, 2, 2, 3] != 1..3"]
    nan = [*good[:2], {"iteration": 3, "kl": math.nan, "reward": math.inf}]
    assert gs.ppo_problems(nan, 3) == ["non-finite kl, reward"]


def test_memory_rows_ratio_limit_on_cuda_info_on_cpu(tmp_path):
    gib = 2.0**30
    dry = {ph: 2 * gib for ph in gs.PHASES}
    # the first run also trained the SFT model and the RM in its process; the second (resumed) is
    # PPO alone: it is judged (1.15 x: over the 1.10 limit), the first only warns
    first = {ph: 1.5 * gib for ph in gs.PHASES} | {"score": 2.4 * gib}
    real = {ph: 1.9 * gib for ph in gs.PHASES} | {"train": 2.3 * gib}
    real["eval"] = 1.0 * gib  # a phase the dry run does not run: shown, not judged
    note = "measured by the dry run of 2026-12-06 (/x/memory_plan.json)"
    rows = {r[0]: r[1:] for r in gs.memory_rows(dry, [first, real, None], note, on_cuda=True)}
    assert rows["5. memory: generate"][:2] == [
        "PASS",
        "real 1.90 GiB (runs 1.50 GiB / 1.90 GiB), dry run 2.00 GiB, ratio 0.95",
    ]
    assert rows["5. memory: train"][0] == "FAIL" and "ratio 1.15" in rows["5. memory: train"][1]
    assert rows["5. memory: score"][0] == "WARN" and "ratio 0.95" in rows["5. memory: score"][1]
    assert rows["5. memory: eval"] == [
        "INFO",
        "real 1.00 GiB; not a phase of the dry run",
        "real ≤ 1.10 x dry run",
    ]
    assert rows["5. real run used the plan"][0] == "PASS"
    cpu = gs.memory_rows(dry, [dict.fromkeys(gs.PHASES)], "no dry-run measurement (...)", on_cuda=False)
    assert [r[1] for r in cpu] == ["INFO"] * len(gs.PHASES) + ["FAIL"]  # the plan was not used
    assert gs.memory_rows(None, [real], note, True)[0][1] == "FAIL"
    assert gs.memory_rows(dry, [None, None], note, True)[0][1] == "FAIL"  # PPO never ran
    missing = {k: v for k, v in real.items() if k != "checkpoint"}
    assert {r[0]: r[1] for r in gs.memory_rows(dry, [missing], note, True)}["5. memory: checkpoint"] == "FAIL"
    # a real run's phase log: the highest peak of each of PPO's phases (the reward model and SFT
    # trained on the fly log theirs too), None on the CPU
    log = tmp_path / "phases.jsonl"
    recs = [
        ("trainer.reward", "train", 9.0),
        ("trainer.ppo", "generate", 5.0),
        ("trainer.ppo", "train", 7.0),
        ("trainer.ppo", "generate", 6.0),
        ("trainer.ppo", "train", 3.0),
        ("trainer.ppo", "rewards", None),
    ]
    log.write_text(
        "".join(json.dumps({"trainer": t, "phase": ph, "peak_bytes": b}) + "\n" for t, ph, b in recs)
    )
    assert gs.read_phase_peaks(log) == {"generate": 6.0, "train": 7.0, "rewards": None}


def test_sdpa_backend_names_and_verdict():
    counts = {
        "aten::_scaled_dot_product_efficient_attention": 8,
        "aten::_efficient_attention_forward": 8,  # the kernel under the backend op: not counted again
        "aten::_scaled_dot_product_attention_math": 2,
        "flash_attn::_flash_attn_varlen_forward": 4,
        "aten::linear": 40,
    }
    assert gs.classify_attention_ops(counts) == {"efficient": 8, "math": 2, "flash_attn package": 4}
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert gs.sdpa_verdict({"decode step": "math x24"}, cuda) == "WARN"
    assert gs.sdpa_verdict({"decode step": "efficient x24"}, cuda) == "INFO"
    assert gs.sdpa_verdict({"decode step": "math x24"}, cpu) == "INFO"


def test_record_appends_the_table_with_command_and_machine(tmp_path, monkeypatch):
    from bench import common

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    monkeypatch.setattr(common, "RESULTS", results)
    monkeypatch.setattr(sys, "argv", [str(ROOT / "bench" / "gpu_smoke.py"), "--record"])
    rows = [["1. kernel parity", "PASS", "147/147 passed", "every collected test passes"]]
    gs.record_table(rows, gs.Mode(False, tmp_path), 250.0)
    text = results.read_text()
    assert text.startswith("# Benchmark results\n\n## gpu_smoke: the first checks on a CUDA device")
    assert "- command: `python bench/gpu_smoke.py --record`" in text and "- machine: " in text
    assert "| 1. kernel parity | PASS | 147/147 passed | every collected test passes |" in text


def test_a_check_over_its_budget_is_killed_and_reported(tmp_path, monkeypatch):
    """The orchestrator kills a check at its budget (its whole process group) and goes on."""
    monkeypatch.setitem(gs.BUDGET_S, "masters", 2)
    monkeypatch.setattr(gs.Mode, "env", lambda self: {**clean_env(), "CUDA_VISIBLE_DEVICES": ""})
    child = gs.Child("masters", gs.Mode(True, tmp_path))
    rows = child.wait()
    assert child.proc.returncode == -9 and child.seconds < 10
    assert rows[-1] == ["2. bf16 ckpt → fp32 masters", "FAIL", "killed at its budget (2 s)", "≤ 2 s"]
    assert "killed at its budget" in gs.format_table(rows)
