"""trainer/eval/report.py: colours by hand, token text, escaping, size caps, the RM page against
``fgrlhf eval-rm`` on a real tiny RM, PPO's saved rollouts, CLI errors, and both pages in a real
headless browser (Debian's chromium through selenium + chromedriver; `make browser` installs them,
and CI does; skipped, saying so, where they are missing): no console errors, token spans with the right
colours for known rewards, a ``<script>`` in a response that does not run, a screenshot."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
import unicodedata
from pathlib import Path

import pytest
from _tiny_runs import tiny_ppo_run

from trainer.data.formats import DataError
from trainer.eval.report import (
    add_arguments,
    colour,
    escape,
    ppo_report,
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


# --- untrusted fields: validated or escaped, bidi controls visible, -o checked ------------------
META = '<meta http-equiv="refresh" content="0;url=http://127.0.0.1:9/">'
# Every kind of markup an injected field could carry: a redirect, a style sheet, a link, a form, a
# way out of a double- or single-quoted attribute (an element, or an attribute of its own).
PAYLOAD = (
    META
    + "<style>body{display:none}</style>"
    + '<a href="http://127.0.0.1:9/">link</a>'
    + '<form action="http://127.0.0.1:9/"><input name="q"></form>'
    + '"><b>INJ</b>'
    + "'><b>INJ</b>"
    + '" data-inj="1'
    + "' data-inj='1"
)
VALUE_LISTS = ("reward", "kl", "total", "advantage", "value")


def _rollout(**over) -> dict:
    """A valid rollouts.jsonl record (two tokens), with ``over`` replacing fields."""
    rec = {
        "iteration": 1, "sample": 0, "prompt": "p", "pieces": [" a", " b"], "ids": [5, 6],
        "reward": [0.5, -0.5], "kl": [0.0, 0.1], "total": [0.5, -0.6], "advantage": [0.2, -0.2],
        "value": [0.1, 0.1], "sequence_reward": 0.25, "truncated": False,
    }  # fmt: skip
    rec.update(over)
    return rec


# Each field of a rollout record injected in turn: as the field's value, and as a list's entry.
ROLLOUT_INJECTIONS = (
    [(k, PAYLOAD) for k in ("iteration", "sample", "prompt", "pieces", "ids", "sequence_reward", "truncated")]
    + [("pieces", [PAYLOAD, " b"]), ("ids", [PAYLOAD, 6])]
    + [(k, PAYLOAD) for k in VALUE_LISTS]
    + [(k, [PAYLOAD, 0.0]) for k in VALUE_LISTS]
)
ROLLOUT_IDS = [f"{k}-{'entry' if isinstance(v, list) else 'value'}" for k, v in ROLLOUT_INJECTIONS]
ACCEPTED = {"prompt-value", "pieces-entry"}  # text fields: shown, escaped; every other one is refused


def _rollout_outcome(tmp_path: Path, field: str, value) -> str | DataError:
    """A rollouts.jsonl (a good line, then the record with ``field`` = ``value``) through
    ``read_rollouts`` and ``ppo_report``: the page, or the DataError that refused the file."""
    f = tmp_path / "rollouts.jsonl"
    f.write_text(json.dumps(_rollout()) + "\n" + json.dumps(_rollout(**{field: value})) + "\n")
    try:
        read_rollouts(f)
    except DataError as e:
        return e
    return ppo_report(f, tmp_path / "page.html").read_text(encoding="utf-8")


# The RM page's fields injected in turn (a pair's, a side's list entry, the summary's).
RM_INJECTIONS = [
    ("index", PAYLOAD), ("prompt", PAYLOAD), ("margin", PAYLOAD), ("R", PAYLOAD),
    ("pieces", [" a", PAYLOAD, " c"]), ("ids", [10, PAYLOAD, 12]), ("reward", [-1.0, PAYLOAD, 0.5]),
    ("changed", [False, PAYLOAD, False]), ("rm_dir", PAYLOAD), ("pairs_file", PAYLOAD),
    ("level", PAYLOAD), ("n_pairs", PAYLOAD), ("accuracy", PAYLOAD), ("mean_margin", PAYLOAD),
]  # fmt: skip
SUMMARY_KEYS = ("rm_dir", "pairs_file", "level", "n_pairs", "accuracy", "mean_margin")


def _rm_page(field: str, value) -> str:
    pairs = _known_pairs()
    summary = {"rm_dir": "rm", "pairs_file": "p.jsonl", "level": "token", "n_pairs": 2, "accuracy": 0.5}
    if field in SUMMARY_KEYS:
        summary[field] = value
    elif field in ("index", "prompt", "margin"):
        pairs[0][field] = value
    else:
        pairs[0]["original"][field] = value
    return rm_report_html(pairs, summary)


def _assert_inert(page: str) -> None:
    """No markup of :data:`PAYLOAD` in the HTML: only the page's own 3 metas (charset, the CSP,
    viewport), style, script and no link, form or input; no quote that leaves an attribute."""
    low = page.lower()
    assert low.count("<meta") == 3 and 'http-equiv="refresh' not in low
    assert low.count("<style") == 1 and low.count("<script") == 1
    assert "<a " not in low and "<form" not in low and "<input" not in low
    assert "<b>inj" not in low and 'data-inj="1' not in low and "data-inj='1" not in low


@pytest.mark.parametrize(("field", "value"), ROLLOUT_INJECTIONS, ids=ROLLOUT_IDS)
def test_a_rollout_field_with_markup_is_refused_or_shown_as_text(field, value, tmp_path):
    case = f"{field}-{'entry' if isinstance(value, list) else 'value'}"
    out = _rollout_outcome(tmp_path, field, value)
    if case in ACCEPTED:
        assert isinstance(out, str), out
        _assert_inert(out)
        assert "&lt;b&gt;INJ&lt;/b&gt;" in out  # shown, as text
    else:
        assert isinstance(out, DataError), f"{field} = markup was accepted"
        assert out.where == "line 2" and out.field.split("[")[0] == field, str(out)
        assert "\n" not in str(out)
    # the renderer escapes anyway: the same record given to it directly, unvalidated
    _assert_inert(ppo_report_html([_rollout(**{field: value})], PAYLOAD))


@pytest.mark.parametrize(("field", "value"), RM_INJECTIONS, ids=[k for k, _ in RM_INJECTIONS])
def test_an_rm_page_field_with_markup_is_shown_as_text(field, value):
    _assert_inert(_rm_page(field, value))


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("iteration", True, "iteration"), ("iteration", -1, "iteration"), ("iteration", 1.5, "iteration"),
        ("iteration", "1", "iteration"), ("iteration", None, "iteration"), ("sample", "0", "sample"),
        ("sample", -2, "sample"), ("ids", [5, 6.5], "ids[1]"), ("ids", [5, True], "ids[1]"),
        ("ids", [5, float("nan")], "ids[1]"), ("ids", {"0": 5}, "ids"), ("pieces", [" a", 7], "pieces[1]"),
        ("pieces", [" a"], "pieces"), ("reward", [0.1, "0.2"], "reward[1]"),
        ("reward", [0.1, False], "reward[1]"),
        ("kl", [0.0], "kl"), ("total", [0.1, [0.2]], "total[1]"), ("advantage", "0.1", "advantage"),
        ("value", [0.1, {}], "value[1]"), ("sequence_reward", "0.25", "sequence_reward"),
        ("sequence_reward", True, "sequence_reward"), ("truncated", "false", "truncated"),
        ("truncated", 0, "truncated"), ("prompt", ["p"], "prompt"), ("prompt", None, "prompt"),
    ],
)  # fmt: skip
def test_read_rollouts_refuses_a_bad_field(field, value, named, tmp_path):
    f = tmp_path / "rollouts.jsonl"
    f.write_text(json.dumps(_rollout()) + "\n" + json.dumps(_rollout(**{field: value})) + "\n")
    with pytest.raises(DataError) as e:
        read_rollouts(f)
    assert str(e.value).startswith(f"{f}: line 2: field {named!r}: "), str(e.value)


def test_read_rollouts_takes_non_finite_values_and_normalises(tmp_path):
    """NaN / ±inf / null values (shaded white, printed nan) and 2.0 for an int are fine."""
    f = tmp_path / "rollouts.jsonl"
    rec = _rollout(iteration=2.0, reward=[float("nan"), None], kl=[float("inf"), 1e400], sequence_reward=None)
    f.write_text(json.dumps(rec) + "\n")
    (r,) = read_rollouts(f)
    assert r["iteration"] == 2 and isinstance(r["iteration"], int)
    assert all(math.isnan(v) for v in r["reward"]) and r["kl"] == [math.inf, math.inf]
    assert math.isnan(r["sequence_reward"])
    page = ppo_report_html([r], "s")
    assert "R(τ) <b>nan</b>" in page and 'data-reward="nan"' in page


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("fgrlhf report: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_bad_types_are_one_line_errors(tmp_path, capsys):
    """A mixed int / str iteration used to be a traceback (sorting mixed types), a string reward too."""
    f = tmp_path / "rollouts.jsonl"
    for bad, named in (({"iteration": "2"}, "iteration"), ({"reward": ["0.1", 0.2]}, "reward[0]")):
        f.write_text(json.dumps(_rollout()) + "\n" + json.dumps(_rollout(**bad)) + "\n")
        assert _cli(["--rollouts", str(f), "-o", str(tmp_path / "r.html")]) == 2
        assert f"rollouts.jsonl: line 2: field {named!r}" in _one_line_error(capsys)
    assert not (tmp_path / "r.html").exists()
    # the renderer itself does not sort mixed types either
    page = ppo_report_html([_rollout(iteration=3), _rollout(iteration="x"), _rollout(iteration=1)], "s")
    assert "from 3 iterations (1, 3, x)" in page


BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
HIDDEN = BIDI + "\u200b\u200c\u200d\u2060\ufeff\u2028\u2029\u00ad\x00\x1b\x7f\x85\ud800\U000e0041"


def _raw_hidden(text: str) -> list[str]:
    """The characters of ``text`` a reader cannot see (format, separators, surrogates, controls
    other than tab / newline / CR)."""
    return [
        f"U+{ord(c):04X}"
        for c in text
        if unicodedata.category(c) in ("Cf", "Zl", "Zp", "Cs")
        or (unicodedata.category(c) == "Cc" and c not in "\t\n\r")
    ]


def test_escape_makes_bidi_and_invisible_characters_visible():
    for ch in HIDDEN:
        code = f"U+{ord(ch):04X}"
        got = escape(f"a{ch}b")
        assert (
            ch not in got
            and got.startswith(f'a<span class="bidi" title="{code} ')
            and got.endswith(f">\u27e8{code}\u27e9</span>b")
        ), (code, got)
        assert escape(f"a{ch}b", attr=True) == f"a\u27e8{code}\u27e9b"  # plain text in an attribute
    assert escape("\u202e") == '<span class="bidi" title="U+202E RIGHT-TO-LEFT OVERRIDE">⟨U+202E⟩</span>'
    ordinary = "tab\tnew\nline\r שלום مرحبا 👋 ü"
    assert (
        escape(ordinary) == ordinary
    )  # visible text, tab, newline, CR and right-to-left letters as they are
    assert escape("<a href='x'>&\"") == "&lt;a href=&#x27;x&#x27;&gt;&amp;&quot;"


def test_pages_show_bidi_controls_as_markers(tmp_path, capsys):
    """A prompt ``"\\u202egnp.exe"`` displayed as ``exe.png``: no raw control character reaches
    either page, each shows as ⟨U+....⟩ (in text and in the token titles)."""
    f = tmp_path / "rollouts.jsonl"
    rec = _rollout(prompt="\u202egnp.exe", pieces=[" a" + HIDDEN, "\u2067b"], iteration=7)
    f.write_text(json.dumps(rec) + "\n")
    assert _cli(["--rollouts", str(f), "-o", str(tmp_path / "r.html")]) == 0  # a lone surrogate included
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert _raw_hidden(page) == []
    assert (
        '<div class="prompt"><span class="bidi" title="U+202E RIGHT-TO-LEFT OVERRIDE">⟨U+202E⟩</span>gnp.exe'
        in page
    )
    assert 'title="&quot;⟨U+2067⟩b&quot; · id 6' in page  # the token's title: the plain marker
    pairs = _known_pairs()
    pairs[0]["prompt"] = "\u202egnp.exe"
    pairs[0]["edited"]["pieces"][1] = "\u2066x\u2069"
    page = rm_report_html(pairs, {"rm_dir": "rm\u202e", "n_pairs": 2, "accuracy": 0.5})
    assert _raw_hidden(page) == [] and page.count("⟨U+202E⟩") == 2 and "⟨U+2066⟩x" in page


def _leftovers(d: Path) -> list[str]:
    return [p.name for p in d.rglob("*tmp-*")]


def test_cli_output_must_be_a_file_and_not_an_input(tiny_run, tmp_path, capsys):
    """``-o DIR`` was a traceback leaving ``.DIR.tmp-PID``; ``-o`` = the input replaced the input."""
    run = tmp_path / "run"
    run.mkdir()
    rollouts = run / "rollouts.jsonl"
    rollouts.write_text(json.dumps(_rollout()) + "\n")
    before = rollouts.read_bytes()
    assert _cli(["--rollouts", str(run), "-o", str(tmp_path)]) == 2
    assert "is a directory" in _one_line_error(capsys)
    assert _cli(["--rollouts", str(run), "-o", str(tmp_path / "new") + "/"]) == 2
    assert "is a directory" in _one_line_error(capsys)
    for src, o in (
        (run, rollouts),  # a run directory: its rollouts.jsonl is the input
        (rollouts, rollouts),
        (rollouts, run / ".." / "run" / "rollouts.jsonl"),
    ):
        assert _cli(["--rollouts", str(src), "-o", str(o)]) == 2
        assert "would destroy the input" in _one_line_error(capsys)
    assert rollouts.read_bytes() == before and _leftovers(tmp_path) == []
    # --rm: refused before the model is loaded (the RM directory does not even exist)
    out, _ = tiny_run
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes((out / "synthetic" / "pairs.jsonl").read_bytes())
    before = pairs.read_bytes()
    assert _cli(["--rm", str(tmp_path / "no-rm"), "--pairs", str(pairs), "-o", str(pairs)]) == 2
    err = _one_line_error(capsys)
    assert "would destroy the input" in err and "no-rm" not in err
    assert pairs.read_bytes() == before and _leftovers(tmp_path) == []


def test_cli_unwritable_output_exit_1(tmp_path, capsys):
    f = tmp_path / "rollouts.jsonl"
    f.write_text(json.dumps(_rollout()) + "\n")
    (tmp_path / "a-file").write_text("x")
    assert _cli(["--rollouts", str(f), "-o", str(tmp_path / "a-file" / "r.html")]) == 1
    assert "cannot write the page" in _one_line_error(capsys)
    assert _leftovers(tmp_path) == []


def test_write_atomic_removes_its_temp_file_on_failure(tmp_path, monkeypatch):
    d = tmp_path / "d"
    d.mkdir()
    with pytest.raises(OSError):
        write_atomic(d, "x")  # the rename onto a directory fails
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]
    page = write_atomic(tmp_path / "p.html", "old")

    def boom(*a):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_atomic(page, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "p.html"] and page.read_text() == "old"


# --- in a real browser -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless chromium driven by selenium, logging the console (``goog:loggingPrefs``)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[dev]')")
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        pytest.skip("chromium / chromedriver not found: `make browser` installs them (Debian, as root)")
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


# The DOM after loading a page: the elements an injection would add, and where the browser is.
_DOM = """return {
  metas: Array.from(document.querySelectorAll('meta')).map(m =>
    m.getAttribute('http-equiv') || m.getAttribute('name') || (m.hasAttribute('charset') ? 'charset' : '?')),
  styles: document.querySelectorAll('style').length,
  scripts: document.querySelectorAll('script').length,
  foreign: Array.from(document.querySelectorAll('a, form, input, img, iframe, base, link, object, embed'))
    .map(e => e.tagName),
  injected_b: Array.from(document.querySelectorAll('b')).filter(b => b.textContent === 'INJ').length,
  injected_attr: document.querySelectorAll('[data-inj], [href], [action]').length,
  title: document.title,
}"""


def _assert_inert_in_browser(browser, page: Path) -> None:
    """``page`` in the browser: no injected element or attribute, and it stays where it is (a
    meta refresh of 0 s would have navigated by the end of the wait)."""
    uri = page.as_uri()
    browser.get(uri)
    dom = browser.execute_script(_DOM)
    assert dom["metas"] == ["charset", "Content-Security-Policy", "viewport"], dom
    assert (dom["styles"], dom["scripts"], dom["foreign"]) == (1, 1, []), dom
    assert dom["injected_b"] == dom["injected_attr"] == 0, dom
    assert dom["title"].startswith("token rewards"), dom
    time.sleep(0.4)
    assert browser.current_url == uri
    assert _errors(browser) == []


def test_the_navigation_check_catches_a_meta_refresh(browser, tmp_path):
    """The check the injection tests rely on: a raw meta refresh in the body navigates away."""
    page = write_atomic(tmp_path / "nav.html", f"<html><body><p>x</p>{META}</body></html>")
    browser.get(page.as_uri())
    for _ in range(50):
        if browser.current_url != page.as_uri():
            break
        time.sleep(0.1)
    assert browser.current_url != page.as_uri()
    browser.get_log("browser")  # the failed load's errors, not the next test's


@pytest.mark.parametrize(("field", "value"), ROLLOUT_INJECTIONS, ids=ROLLOUT_IDS)
def test_a_rollout_field_with_markup_in_a_browser(browser, field, value, tmp_path):
    """Each field injected in turn: refused by read_rollouts, or a page that shows it as text
    (both the page of the file and the page of the record given to the renderer unvalidated)."""
    out = _rollout_outcome(tmp_path, field, value)
    if isinstance(out, str):
        _assert_inert_in_browser(browser, tmp_path / "page.html")
        text = browser.execute_script("return document.body.innerText")
        assert '"><b>INJ</b>' in text  # shown, as text
    else:
        assert out.field.split("[")[0] == field
    raw = write_atomic(tmp_path / "raw.html", ppo_report_html([_rollout(**{field: value})], PAYLOAD))
    _assert_inert_in_browser(browser, raw)


@pytest.mark.parametrize(("field", "value"), RM_INJECTIONS, ids=[k for k, _ in RM_INJECTIONS])
def test_an_rm_page_field_with_markup_in_a_browser(browser, field, value, tmp_path):
    _assert_inert_in_browser(browser, write_atomic(tmp_path / "rm.html", _rm_page(field, value)))


def test_bidi_markers_in_a_browser(browser, tmp_path):
    f = tmp_path / "rollouts.jsonl"
    f.write_text(json.dumps(_rollout(prompt="\u202egnp.exe", pieces=["\u2067a", " b"])) + "\n")
    page = ppo_report(f, tmp_path / "bidi.html")
    browser.get(page.as_uri())
    assert browser.execute_script("return document.querySelector('.prompt').innerText") == "⟨U+202E⟩gnp.exe"
    got = browser.execute_script(
        "var s = document.querySelector('span.t'); return [s.innerText, s.getAttribute('title')]"
    )
    assert got[0] == "⟨U+2067⟩a" and got[1].startswith('"⟨U+2067⟩a" · id 5')
    assert _errors(browser) == []
