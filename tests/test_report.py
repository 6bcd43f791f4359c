"""trainer/eval/report.py: colours by hand, token text, escaping, size caps, the RM page against
``fgrlhf eval-rm`` on a real tiny RM, PPO's saved rollouts, CLI errors, and both pages in a real
headless browser (Debian's chromium through selenium + chromedriver; installed with apt when
absent and possible, else skipped saying why): no console errors, token spans with the right
colours for known rewards, a ``<script>`` in a response that does not run, a screenshot."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from _tiny_runs import tiny_ppo_run

from trainer.eval.report import (
    add_arguments,
    colour,
    ppo_report_html,
    read_rollouts,
    rm_report_html,
    run_cli,
    token_pieces,
    write_atomic,
)

EVIL = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, str]:
    return tiny_ppo_run(tmp_path_factory.getbasetemp())


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))


def _side(pieces, rewards, changed, R) -> dict:
    return {
        "pieces": pieces,
        "ids": list(range(10, 10 + len(pieces))),
        "reward": rewards,
        "changed": changed,
        "R": R,
    }


def _known_pairs() -> list[dict]:
    """Two pairs with known per-token rewards (page scale: the largest |r| = 1)."""
    return [
        {"index": 0, "prompt": "say <b>hi</b> & bye", "margin": -0.25,
         "original": _side([" a", EVIL, " c"], [-1.0, 0.0, 0.5], [False, True, False], 0.1),
         "edited": _side([" a", " d", " c"], [1.0, 0.25, -0.5], [False, True, False], -0.15)},
        {"index": 1, "prompt": "p", "margin": 0.75,
         "original": _side([" x"], [-0.75], [True], -0.5), "edited": _side([" y"], [0.75], [True], 0.25)},
    ]  # fmt: skip


# --- colours, token text, escaping, caps --------------------------------------------------------
def test_colour_by_hand():
    assert colour(0.0, 1.0) == "rgb(255, 255, 255)"
    assert colour(1.0, 1.0) == colour(5.0, 1.0) == "rgb(33, 102, 172)"  # clamped beyond the scale
    assert colour(-2.0, 2.0) == "rgb(215, 48, 39)"
    # halfway to blue: 255 − 222/2 = 144, 255 − 153/2 = 178.5 → 178 (half to even), 255 − 83/2 = 213.5 → 214
    assert colour(0.5, 1.0) == "rgb(144, 178, 214)"
    assert colour(float("nan"), 1.0) == colour(1.0, 0.0) == "rgb(255, 255, 255)"


def test_token_pieces_rebuild_the_decoded_text(tiny_run):
    from trainer.models import load_tokenizer

    out, _ = tiny_run
    tok = load_tokenizer(str(out / "rm" / "final"), "rm_dir")
    ids = tok("g1 n3 b2 p4", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    pieces = token_pieces(tok, ids)
    assert pieces[0] == "g1" and pieces[1] == " n3"  # the space a lone decode([id]) drops
    assert "".join(pieces) == tok.decode(ids)


def test_page_escapes_untrusted_text():
    page = rm_report_html(
        _known_pairs(), {"rm_dir": "rm<x>", "pairs_file": "p.jsonl", "n_pairs": 2, "accuracy": 0.5}
    )
    body = page[page.index("<body") :]
    assert "<script>window" not in body and "<img" not in body and "<b>hi" not in body
    assert "&lt;script&gt;window.__pwned = 1&lt;/script&gt;" in body and "rm&lt;x&gt;" in body
    assert body.count("<script>") == 1  # the page's own


def test_size_caps_leave_a_note():
    big = _known_pairs() * 3
    page = rm_report_html(
        big, {"n_pairs": 6, "accuracy": 0.5}, max_bytes=len(rm_report_html(big[:1], {})) // 3
    )
    assert "Showing 1 of 6 edited pairs (page size cap)." in page
    page = rm_report_html(_known_pairs(), {"n_pairs": 2, "accuracy": 0.5}, max_tokens=2)
    assert page.count("1 more tokens not shown") == 2  # both 3-token sides of pair 0
    samples = [{"iteration": i, "pieces": [" a"], "ids": [5], "reward": [0.1 * i]} for i in range(10)]
    page = ppo_report_html(samples, "s", max_items=3)
    assert "Showing 3 of 10 rollout samples (max_items cap)." in page
    # evenly spaced, first and last kept: round(i · 9 / 2) for i = 0, 1, 2 -> 0, 4 (4.5 half to even), 9
    shown = [i for i in range(10) if f"<b>iteration {i}</b>" in page]
    assert shown == [0, 4, 9]


# --- the real pages ----------------------------------------------------------------------------
def test_rm_page_of_a_real_rm_agrees_with_eval_rm(tiny_run, tmp_path, capsys):
    from trainer.data.pairs import load_pair_data
    from trainer.eval.rm_accuracy import evaluate_reward_model
    from trainer.models import load_tokenizer
    from trainer.reward import RewardConfig

    out, _ = tiny_run
    rm, pairs = out / "rm" / "final", out / "synthetic" / "pairs.jsonl"
    page = tmp_path / "rm.html"
    assert _cli(["--rm", str(rm), "--pairs", str(pairs), "-o", str(page), "--max-items", "10000"]) == 0
    m = evaluate_reward_model(str(rm), str(pairs))
    text = page.read_text()
    assert f"<b>{m['edited_accuracy']:.1%}</b> of {m['edited_pairs']} scored" in text
    assert (
        f"{m['edited_accuracy']:.1%} of {m['edited_pairs']} edited pairs ranked right"
        in capsys.readouterr().out
    )
    assert text.count('class="item pair') == m["edited_pairs"]
    # the marks are the examples' changed masks: removed on the original side, added on the edited side
    tok = load_tokenizer(str(rm), "rm_dir")
    data = load_pair_data(str(pairs), tok, RewardConfig(eval_fraction=0.0, max_length=1024), split=None)
    assert text.count('class="t added"') == sum(sum(e.changed_mask) for e, _ in data.edited)
    assert text.count('class="t removed"') == sum(sum(o.changed_mask) for _, o in data.edited)
    assert (out / "rm" / "report.html").exists()  # the reward trainer wrote its own page


def test_ppo_saves_rollout_samples_with_per_token_values(tiny_run):
    out, _ = tiny_run
    recs = read_rollouts(out)
    assert [(r["iteration"], r["sample"]) for r in recs] == [(1, 0), (1, 1), (2, 0), (2, 1)]
    for r in recs:
        n = len(r["ids"])
        assert n >= 1 and all(
            len(r[k]) == n for k in ("pieces", "reward", "kl", "total", "advantage", "value")
        )
        # the actor is the reference at iteration 1: KL 0 up to the ~1e-6 by which the decoding's
        # log-probs (old_logprobs=generate) differ from the reference's full forward
        assert r["iteration"] > 1 or all(abs(x) <= 1e-5 for x in r["kl"])
    assert (out / "report.html").read_text().count('class="item rollout"') == 4


def test_cli_bad_input_exit_2_with_the_reason(tiny_run, tmp_path, capsys):
    out, _ = tiny_run
    assert _cli([]) == 2
    assert "give either --rm" in capsys.readouterr().err
    assert _cli(["--rm", str(out / "rm" / "final")]) == 2
    assert "--rm needs --pairs" in capsys.readouterr().err
    assert (
        _cli(["--rm", str(out / "final" / "actor"), "--pairs", str(out / "synthetic" / "pairs.jsonl")]) == 2
    )
    assert "fgrlhf_reward.json" in capsys.readouterr().err  # a causal LM, not a reward model
    bad = tmp_path / "rollouts.jsonl"
    bad.write_text(json.dumps({"iteration": 1, "pieces": ["a"], "ids": [1], "reward": [0.0]}) + "\n")
    bad.write_text(bad.read_text() + json.dumps({"iteration": 2, "pieces": ["a"], "ids": [1]}) + "\n")
    assert _cli(["--rollouts", str(tmp_path), "-o", str(tmp_path / "r.html")]) == 2
    assert "rollouts.jsonl: line 2: field 'reward': missing" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


# --- in a real browser -------------------------------------------------------------------------
def _install_chromium(marker: Path) -> str:
    """Try ``apt-get install chromium chromium-driver`` once per session (root only); the reason
    it cannot be done, or ''."""
    if shutil.which("chromium") and shutil.which("chromedriver"):
        return ""
    if marker.exists():
        return marker.read_text()
    reason = ""
    if not shutil.which("apt-get") or os.geteuid() != 0:
        reason = "chromium / chromedriver not found, and apt-get is not available as root to install them"
    else:
        cmd = "apt-get update -qq && apt-get install -y -qq chromium chromium-driver"
        try:
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            p = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=900, env=env)
            if p.returncode != 0:
                reason = f"apt-get install chromium chromium-driver failed: {p.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired:
            reason = "apt-get install chromium chromium-driver timed out"
    if not reason and not (shutil.which("chromium") and shutil.which("chromedriver")):
        reason = "apt-get installed chromium but chromium / chromedriver are still not on PATH"
    marker.write_text(reason)
    return reason


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless chromium driven by selenium, logging the console (``goog:loggingPrefs``)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    reason = _install_chromium(tmp_path_factory.getbasetemp() / "chromium-install-tried")
    if reason:
        pytest.skip(reason)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for a in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
    ):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    yield driver
    driver.quit()


def _errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_the_console_check_catches_errors(browser, tmp_path):
    """The check the page tests rely on: a console.error and an exception are reported."""
    page = write_atomic(tmp_path / "err.html", "<html><body><script>console.error('boom'); nope();</script>")
    browser.get(page.as_uri())
    errs = [e["message"] for e in _errors(browser)]
    assert any('"boom"' in m for m in errs) and any("nope is not defined" in m for m in errs), errs


def test_rm_page_in_a_browser(browser, tmp_path):
    pairs = _known_pairs()
    page = write_atomic(tmp_path / "rm.html", rm_report_html(pairs, {"n_pairs": 2, "accuracy": 0.5}))
    browser.get(page.as_uri())
    assert _errors(browser) == []  # nothing failed, nothing blocked by the CSP
    assert browser.execute_script("return window.__pwned === undefined")  # the <script> did not run
    spans = browser.execute_script(
        "return Array.from(document.querySelectorAll('span.t')).map(s => [s.textContent, "
        "getComputedStyle(s).backgroundColor, s.getAttribute('title'), s.className])"
    )
    assert len(spans) == 8
    # the first pair's original side: rewards −1, 0, 0.5 on the page's scale 1
    assert spans[0][1] == "rgb(215, 48, 39)" and spans[1][1] == "rgb(255, 255, 255)"
    assert spans[2][1] == "rgb(144, 178, 214)" and spans[3][1] == "rgb(33, 102, 172)"
    assert spans[1][0] == EVIL and spans[1][3] == "t removed"  # shown as text, marked removed
    assert spans[4][3] == "t added" and "id 11" in spans[4][2] and "reward +0.2500" in spans[4][2]
    heads = "return Array.from(document.querySelectorAll('.pair')).map(p => p.dataset.index)"
    assert browser.execute_script(heads) == ["0", "1"]
    browser.execute_script(
        "var s = document.getElementById('sort'); s.value = 'desc'; s.dispatchEvent(new Event('change'))"
    )
    assert browser.execute_script(heads) == ["1", "0"]  # margin 0.75 first
    shot = tmp_path / "rm.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert _errors(browser) == []


def test_ppo_page_of_the_tiny_run_in_a_browser(browser, tiny_run, tmp_path):
    out, _ = tiny_run
    samples = read_rollouts(out)
    browser.get((out / "report.html").as_uri())
    assert _errors(browser) == []
    n = browser.execute_script("return document.querySelectorAll('span.t').length")
    assert n == sum(len(s["ids"]) for s in samples)
    browser.execute_script(
        "var s = document.getElementById('value'); s.value = 'advantage'; "
        "s.dispatchEvent(new Event('change'))"
    )
    got = browser.execute_script(
        "return Array.from(document.querySelectorAll('span.t')).map(s => getComputedStyle(s).backgroundColor)"
    )
    adv = [v for s in samples for v in s["advantage"]]
    scale = max(abs(v) for v in adv)
    assert got == [colour(v, scale) for v in adv]  # the script recolours by the rule of colour()
    shot = tmp_path / "ppo.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    assert _errors(browser) == []
