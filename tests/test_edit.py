"""The minimal-edit collector (trainer.data.edit, `fgrlhf edit`): the real `anthropic` SDK against a
local Messages API server (tests/fake_anthropic.py) with scripted failures, the quality gates,
crash safety (SIGKILL mid-run, then resume) and the API key never leaking."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("anthropic")

from fake_anthropic import FakeMessagesServer  # noqa: E402

from trainer.data.edit import (  # noqa: E402
    ClaudeEditor,
    ClaudeSettings,
    EditConfig,
    EditLog,
    EditResult,
    PromptTemplate,
    extract_edit,
    judge_edit,
    price_for,
    run_edit,
)

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-ant-api03-FAKE-SECRET-5f3c9e1d"


def write_pairs(path: Path, n: int, start: int = 0) -> list[dict]:
    recs = [
        {
            "prompt": f"Question {i}?",
            "chosen": f"Good answer {i}.",
            "rejected": f"The answer to {i} is wrong here.",
        }
        for i in range(start, start + n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return recs


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def server(monkeypatch):
    with FakeMessagesServer(slow_seconds=1.0) as srv:
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", srv.url)
        yield srv


def make_editor(model="claude-test", template=None, **kw) -> ClaudeEditor:
    settings = dict(max_tokens=256, timeout=5.0, max_retries=2, concurrency=2, extra_attempts=0, backoff=0.0)
    return ClaudeEditor(model, ClaudeSettings(**{**settings, **kw}), template)


def edit_once(editor: ClaudeEditor, prompt="Say hi.", response="Hello there, my friend!") -> EditResult:
    async def go():
        try:
            return await editor.edit(prompt, response)
        finally:
            await editor.aclose()

    return asyncio.run(go())


# 1. prompt and parsing
def test_prompt_template_builtin_and_file(tmp_path):
    t = PromptTemplate.load()
    assert t.version == "minimal-edit-v1"
    msg = t.render("P {response} {x}", "R {prompt}")
    assert "<prompt>\nP {response} {x}\n</prompt>" in msg and "<response>\nR {prompt}\n</response>" in msg
    f = tmp_path / "mine.txt"
    f.write_text("Fix: {response} (for {prompt})")
    custom = PromptTemplate.load(f)
    assert custom.render("p", "r") == "Fix: r (for p)"
    assert custom.version.startswith("file:mine.txt:") and len(custom.version) == len("file:mine.txt:") + 12
    f.write_text("no placeholders")
    with pytest.raises(ValueError, match=r"lacks \{prompt\}, \{response\}"):
        PromptTemplate.load(f)
    with pytest.raises(ValueError, match="cannot read"):
        PromptTemplate.load(tmp_path / "absent.txt")


def test_extract_edit():
    assert extract_edit("<edited>\nabc\n</edited>") == "abc"
    assert extract_edit("Sure! <edited>a\n\nb</edited> done") == "a\n\nb"
    assert extract_edit("<edited>\n\n  x  \n\n</edited>") == "\n  x  \n"  # only one newline stripped
    assert extract_edit("no tags") is None


# 2. quality gates
ORIG = "The capital of France is Berlin. It is a large city with many museums."


@pytest.mark.parametrize(
    "result,status",
    [
        (EditResult("The capital of France is Paris. It is a large city with many museums."), "ok"),
        (EditResult(ORIG), "unchanged"),
        (EditResult("  " + ORIG + "\n"), "unchanged"),
        (EditResult("   "), "empty"),
        (EditResult(None, raw="I'm sorry, but I can't help with that."), "refusal"),
        (EditResult(None, raw="The response is fine as it is."), "commentary"),
        (EditResult("", stop_reason="refusal"), "refusal"),
        (EditResult("The capital of France", stop_reason="max_tokens"), "truncated"),
        (EditResult("I cannot edit this response. " + ORIG), "refusal"),
        (EditResult("Here is the edited response: The capital of France is Paris."), "commentary"),
        (EditResult("Paris is France's capital; see the Louvre and Orsay."), "not_minimal"),
    ],
)
def test_judge_edit(result, status):
    assert judge_edit(ORIG, result)[0] == status


def test_judge_edit_original_may_itself_apologise():
    orig = "I'm sorry, I don't know. Try asking someone."
    assert judge_edit(orig, EditResult("I'm sorry, I don't know. Try asking a librarian."))[0] == "ok"


def test_judge_edit_threshold_and_similarity():
    edit = EditResult("The capital of France is Paris. It is a large city.")
    status, sim = judge_edit(ORIG, edit, min_similarity=0.5)
    assert status == "ok" and 0.5 < sim < 1
    assert judge_edit(ORIG, edit, min_similarity=sim + 1e-6)[0] == "not_minimal"


def test_price_table():
    assert price_for("claude-sonnet-4-5-20250929") == (3.0, 15.0)
    assert price_for("claude-opus-4-5") == (5.0, 25.0) and price_for("claude-opus-4-1-x") == (15.0, 75.0)
    assert price_for("mystery") is None and price_for("mystery", 1.0, 2.0) == (1.0, 2.0)


# 3. the real SDK against the local server
def test_sdk_success_and_request_shape(server):
    editor = make_editor()
    res = edit_once(editor)
    assert res.error is None and res.text == "Hello there, my EDITED" and res.stop_reason == "end_turn"
    assert res.model == "claude-test" and res.input_tokens > 0 and res.output_tokens > 0
    ((headers, body),) = server.requests
    assert body["model"] == "claude-test" and body["max_tokens"] == 256
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert "<response>\nHello there, my friend!\n</response>" in body["messages"][0]["content"]
    # temperature 0 where the SDK/API version takes sampling parameters; never sent otherwise
    import anthropic

    takes_temperature = (
        "temperature" in inspect.signature(anthropic.AsyncAnthropic().messages.create).parameters
    )
    assert body.get("temperature", None) == (0.0 if takes_temperature else None)
    assert SECRET in (headers.get("X-Api-Key", "") + headers.get("Authorization", ""))  # the key went out


@pytest.mark.parametrize("failure", ["429", "529", "500"])
def test_sdk_retries_transient_errors(server, failure):
    server.script.extend([failure, failure, "ok"])
    res = edit_once(make_editor(max_retries=2))
    assert res.error is None and res.text == "Hello there, my EDITED"
    assert len(server.requests) == 3


def test_sdk_gives_up_after_retries(server):
    server.script.extend(["529"] * 4)
    res = edit_once(make_editor(max_retries=1, extra_attempts=1))
    assert res.text is None and res.error.startswith("OverloadedError") and "overloaded" in res.error.lower()
    assert len(server.requests) == 4  # (1 + 1 SDK retry) x (1 + 1 extra attempt)
    assert SECRET not in res.error


def test_malformed_json(server):
    server.script.append("malformed")
    res = edit_once(make_editor())
    assert res.text is None and "JSONDecodeError" in res.error
    server.script.append("malformed")
    res = edit_once(make_editor(extra_attempts=1))  # our own retry covers it
    assert res.error is None and res.text == "Hello there, my EDITED"


def test_timeout(server):
    server.script.append("slow")
    t0 = time.monotonic()
    res = edit_once(make_editor(timeout=0.3, max_retries=0))
    assert res.text is None and res.error.startswith("APITimeoutError")
    assert time.monotonic() - t0 < 0.9  # did not wait for the slow answer
    server.script.append("slow")
    res = edit_once(make_editor(timeout=0.3, max_retries=1))  # the SDK's retry gets the fast answer
    assert res.error is None and res.text == "Hello there, my EDITED"


@pytest.mark.parametrize("action", ["refusal", "refusal_stop"])
def test_refusal(server, action):
    server.script.append(action)
    res = edit_once(make_editor())
    assert res.error is None and not res.text
    assert judge_edit("Hello there, my friend!", res)[0] == "refusal"


def test_non_retryable_error_is_not_retried(server, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url + "/nowhere")  # -> 404
    res = edit_once(make_editor(max_retries=3, extra_attempts=2))
    assert res.error.startswith("NotFoundError") and len(server.requests) == 1


# 4. the collector end to end (in process)
def test_run_edit_statuses_resume_and_schema(server, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    recs = write_pairs(inp, 8)
    server.script.extend(["ok", "unchanged", "rewrite", "empty", "commentary", "refusal", "truncated"])
    cfg = EditConfig(
        str(inp),
        str(out),
        model="claude-test",
        concurrency=1,
        max_retries=0,
        extra_attempts=0,
        progress=False,
        price_in=3.0,
        price_out=15.0,
    )
    buf = io.StringIO()
    summary = run_edit(cfg, out=buf)
    rows = read_jsonl(out)
    assert [r["status"] for r in rows] == [
        "ok",
        "unchanged",
        "not_minimal",
        "empty",
        "commentary",
        "refusal",
        "truncated",
        "ok",
    ]
    assert summary.statuses["ok"] == 2 and summary.failed == 0 and summary.attempted == 8
    assert summary.estimated_cost_usd == pytest.approx(
        (summary.input_tokens * 3 + summary.output_tokens * 15) / 1e6
    )
    assert "done            2" in buf.getvalue() and "not_minimal" in buf.getvalue()
    r0 = rows[0]
    assert r0["original"] == recs[0]["rejected"] and r0["chosen"] == recs[0]["chosen"]
    assert r0["prompt"] == recs[0]["prompt"] and r0["edited"] == "The answer to 0 is wrong EDITED"
    assert r0["model"] == "claude-test" and r0["prompt_version"] == "minimal-edit-v1"
    assert r0["usage"]["input_tokens"] > 0 and r0["source"].endswith("in.jsonl:line 1")
    assert set(r0) == {
        "id",
        "prompt",
        "original",
        "edited",
        "chosen",
        "status",
        "similarity",
        "model",
        "prompt_version",
        "stop_reason",
        "usage",
        "source",
        "created_at",
    }
    # A rerun sends nothing.
    n = len(server.requests)
    again = run_edit(cfg, out=io.StringIO())
    assert len(server.requests) == n and again.already_done == 8 and again.attempted == 0
    assert len(read_jsonl(out)) == 8
    # Loadable with datasets.
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 8 and ds[0]["usage"]["input_tokens"] > 0


def test_rerun_regates_stored_edits_and_refuses_stale_ones(server, tmp_path):
    """A rerun with a stricter --min-similarity re-gates the stored edits without any request
    (the last record of an id wins); another model is refused unless --redo-stale."""
    from trainer.data.edit import UsageError

    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_pairs(inp, 3)
    cfg = EditConfig(str(inp), str(out), model="claude-test", concurrency=1, max_retries=0, progress=False)
    run_edit(cfg, out=io.StringIO())
    assert [r["status"] for r in read_jsonl(out)] == ["ok"] * 3
    n = len(server.requests)
    strict = dataclasses.replace(cfg, min_similarity=0.99)
    again = run_edit(strict, out=io.StringIO())
    assert len(server.requests) == n and again.regated == 3 and again.attempted == 0
    rows = read_jsonl(out)
    assert len(rows) == 6 and [r["status"] for r in rows[3:]] == ["not_minimal"] * 3
    log = EditLog(out)
    assert log.done == {r["id"]: "not_minimal" for r in rows}  # the last record of an id counts
    log.close()
    with pytest.raises(UsageError, match="3 stored edits were made with another prompt or model"):
        run_edit(dataclasses.replace(cfg, model="claude-other"), out=io.StringIO())
    redo = run_edit(dataclasses.replace(cfg, model="claude-other", redo_stale=True), out=io.StringIO())
    assert redo.attempted == 3 and len(server.requests) == n + 3
    assert {r["model"] for r in read_jsonl(out)[-3:]} == {"claude-other"}


def test_failed_records_are_not_written_and_retried(server, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_pairs(inp, 4)
    server.script.extend(["ok", "500", "malformed", "ok"])
    cfg = EditConfig(
        str(inp), str(out), model="m", concurrency=1, max_retries=0, extra_attempts=0, progress=False
    )
    summary = run_edit(cfg, out=io.StringIO())
    assert summary.failed == 2 and summary.statuses["ok"] == 2 and len(read_jsonl(out)) == 2
    errors = read_jsonl(out.with_name("out.jsonl.errors.jsonl"))
    assert [e["error"].split(":")[0] for e in errors] == ["InternalServerError", "JSONDecodeError"]
    summary = run_edit(cfg, out=io.StringIO())  # the rerun retries exactly the two failures
    assert summary.attempted == 2 and summary.statuses["ok"] == 2 and summary.failed == 0
    ids = [r["id"] for r in read_jsonl(out)]
    assert len(ids) == len(set(ids)) == 4


def test_limit_skip_invalid_and_dry_run(server, tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_pairs(inp, 5)
    with open(inp, "a") as fh:
        fh.write('{"prompt": "x", "chosen": "y"}\n')
    cfg = EditConfig(str(inp), str(out), model="claude-sonnet-4-6", limit=3, dry_run=True, progress=False)
    from trainer.data.formats import DataError

    with pytest.raises(DataError, match=r"in\.jsonl: line 6: field 'rejected': missing"):
        run_edit(cfg, out=io.StringIO())
    cfg.skip_invalid = True
    buf = io.StringIO()
    summary = run_edit(cfg, out=buf)
    assert not server.requests and not out.exists()  # a dry run sends and writes nothing
    assert summary.invalid == 1 and summary.pairs == 3 and summary.attempted == 3
    assert summary.input_tokens > 0 and summary.estimated_cost_usd > 0
    assert (
        buf.getvalue().count("----- prompt for id") == 3 and "<response>\nThe answer to 0" in buf.getvalue()
    )
    cfg.dry_run = False
    summary = run_edit(cfg, out=io.StringIO())
    assert summary.invalid == 1 and len(read_jsonl(out)) == 3 and len(server.requests) == 3


def test_no_api_key(tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    inp = tmp_path / "in.jsonl"
    write_pairs(inp, 1)
    with pytest.raises(RuntimeError, match="ANTHROPIC_API_KEY is not set"):
        run_edit(EditConfig(str(inp), str(tmp_path / "o.jsonl"), progress=False), out=io.StringIO())


def test_output_equal_to_input_is_refused_up_front(tmp_path):
    """-o naming the input file stops before anything is read or written, with that reason."""
    inp = tmp_path / "in.jsonl"
    write_pairs(inp, 2)
    inp.write_text(inp.read_text().rstrip("\n"))  # no final newline: a repair would cut a record
    before = inp.read_bytes()
    with pytest.raises(ValueError, match="output is the input file"):
        run_edit(EditConfig(str(inp), str(inp), progress=False), out=io.StringIO())
    assert inp.read_bytes() == before


# 5. crash safety of the output
def test_editlog_repairs_partial_last_line(tmp_path):
    out = tmp_path / "o.jsonl"
    good = json.dumps({"id": "a", "status": "ok"}) + "\n"
    out.write_text(good + '{"id": "b", "sta')
    log = EditLog(out)
    assert log.done == {"a": "ok"} and out.read_text() == good  # the torn tail is gone
    log.append({"id": "b", "status": "ok"})
    log.close()
    assert read_jsonl(out) == [{"id": "a", "status": "ok"}, {"id": "b", "status": "ok"}]
    out.write_text('{"id": "only-partial"')  # no newline at all
    EditLog(out).close()
    assert out.read_text() == ""


@pytest.mark.parametrize(
    "content",
    [
        '[{"prompt": "p", "chosen": "a", "rejected": "b"}]',  # a one-line .json file, no final newline
        '[\n  {"prompt": "p"}\n]',  # pretty-printed JSON
        "just some notes",  # not JSON at all, no newline
        '{"id": "a", "status": "ok"}\n{"prompt": "x"}\n',  # a complete line that is not an edit record
    ],
)
def test_editlog_never_modifies_a_file_that_is_not_an_edits_file(tmp_path, content):
    out = tmp_path / "o.json"
    out.write_text(content)
    with pytest.raises(ValueError, match="is not an edit record.*nothing was changed"):
        EditLog(out)
    assert out.read_text() == content
    out.write_text("")
    EditLog(out).close()  # the failed open released its lock


def test_editlog_keeps_a_whole_last_record_without_newline(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"id": "a", "status": "ok"}\n{"id": "b", "status": "empty"}')
    log = EditLog(out)
    assert log.done == {"a": "ok", "b": "empty"}
    log.append({"id": "c", "status": "ok"})
    log.close()
    assert [r["id"] for r in read_jsonl(out)] == ["a", "b", "c"]


def test_editlog_rejects_corrupt_middle_and_concurrent_writer(tmp_path):
    out = tmp_path / "o.jsonl"
    out.write_text('{"id": "a", "status": "ok"}\nGARBAGE\n{"id": "b", "status": "ok"}\n')
    with pytest.raises(ValueError, match="line 2 is not an edit record"):
        EditLog(out)
    out.write_text("")
    first = EditLog(out)
    try:
        with pytest.raises(RuntimeError, match="another `fgrlhf edit` is writing"):
            EditLog(out)
    finally:
        first.close()
    EditLog(out).close()  # released


# 6. the CLI in a subprocess: killed with SIGKILL mid-run, resumed; the key never leaks
def run_cli(args: list[str], env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "trainer.cli", "edit", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def test_cli_kill_and_resume(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    recs = write_pairs(inp, 40)
    with FakeMessagesServer(delay=0.1) as srv:
        srv.script.extend(["500"] * 3)  # three records fail in the first run (no retries)
        env = dict(os.environ, ANTHROPIC_API_KEY=SECRET, ANTHROPIC_BASE_URL=srv.url, PYTHONPATH=str(REPO))
        args = [
            str(inp),
            "-o",
            str(out),
            "--concurrency",
            "4",
            "--max-retries",
            "0",
            "--extra-attempts",
            "0",
            "--model",
            "claude-test",
            "-v",
        ]
        proc = run_cli(args, env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 8):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        out1, err1 = proc.communicate()
        first = out.read_text()
        assert proc.returncode == -signal.SIGKILL and 8 <= first.count("\n") < 40
        # A second run completes the job (failures retried; partial last line, if any, repaired).
        proc = run_cli(args, env)
        out2, err2 = proc.communicate(timeout=60)
        assert proc.returncode == 0, err2
    lines = out.read_text().splitlines()
    rows = [json.loads(line) for line in lines]  # no truncated or corrupt line
    ids = [r["id"] for r in rows]
    from trainer.data.formats import pair_id

    expected = {pair_id(r["prompt"], r["chosen"], r["rejected"]) for r in recs}
    assert len(ids) == len(set(ids)) == 40 and set(ids) == expected
    assert all(r["status"] == "ok" for r in rows)
    # The key is in none of the outputs, logs or error files.
    texts = [out1, err1, out2, err2] + [p.read_text() for p in tmp_path.iterdir() if p.is_file()]
    assert all(SECRET not in t for t in texts)
    assert "already done" in out2


def test_cli_bad_input_and_dry_run(tmp_path):
    inp = tmp_path / "in.json"
    inp.write_text(
        json.dumps([{"instruction": "i", "input": "", "output_1": "a", "output_2": "b", "preference": "1"}])
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ANTHROPIC_API_KEY", None)
    proc = run_cli([str(inp), "-o", str(tmp_path / "o.jsonl")], env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"{inp}: record 1: field 'preference': expected 1 or 2, got str" in err and "--skip-invalid" in err
    proc = run_cli([str(inp), "-o", str(tmp_path / "o.jsonl"), "--skip-invalid", "--dry-run"], env)
    stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err  # every record skipped: nothing to do is a failure, not success
    assert "every record is invalid (1 skipped): nothing to edit" in err


@pytest.mark.parametrize(
    "flags,msg",
    [
        (["--min-similarity", "5"], "--min-similarity must be in [0, 1], got 5"),
        (["--max-retries", "-1"], "--max-retries must be >= 0, got -1"),
        (["--extra-attempts", "-1"], "--extra-attempts must be >= 0, got -1"),
        (["--timeout", "-1"], "--timeout must be > 0, got -1"),
        (["--concurrency", "0"], "--concurrency must be >= 1, got 0"),
    ],
)
def test_cli_flag_ranges_are_usage_errors(tmp_path, flags, msg):
    inp = tmp_path / "in.jsonl"
    write_pairs(inp, 1)
    env = dict(os.environ, PYTHONPATH=str(REPO), ANTHROPIC_API_KEY=SECRET)
    proc = run_cli([str(inp), "-o", str(tmp_path / "o.jsonl"), *flags], env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and msg in err and "Traceback" not in err


def test_cli_output_errors_are_one_line(tmp_path):
    """-o a directory, or an unwritable place: a sentence naming the path, not a traceback."""
    inp = tmp_path / "in.jsonl"
    write_pairs(inp, 1)
    env = dict(
        os.environ, PYTHONPATH=str(REPO), ANTHROPIC_API_KEY=SECRET, ANTHROPIC_BASE_URL="http://127.0.0.1:9"
    )
    (tmp_path / "adir").mkdir()
    proc = run_cli([str(inp), "-o", str(tmp_path / "adir")], env)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "Is a directory" in err and "adir" in err and "Traceback" not in err
    # --summary-json a directory (or the input): refused before any work, one line
    for target, msg in ((tmp_path / "adir", "is a directory"), (inp, "would destroy the input")):
        proc = run_cli(
            [str(inp), "-o", str(tmp_path / "o.jsonl"), "--dry-run", "--summary-json", str(target)], env
        )
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 2 and "--summary-json" in err and msg in err and "Traceback" not in err
    assert not (tmp_path / "o.jsonl").exists()


def test_cli_sigterm_prints_the_summary_and_exits_75(tmp_path):
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_pairs(inp, 40)
    with FakeMessagesServer(delay=0.2) as srv:
        env = dict(os.environ, ANTHROPIC_API_KEY=SECRET, ANTHROPIC_BASE_URL=srv.url, PYTHONPATH=str(REPO))
        proc = run_cli([str(inp), "-o", str(out), "--concurrency", "2", "--model", "claude-test"], env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 2):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        stdout, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err[-2000:]  # pre-empted: the trainers' status, rerun to resume
    assert "interrupted" in stdout and "done" in stdout and "Traceback" not in err
    assert all(json.loads(line)["id"] for line in out.read_text().splitlines())  # whole lines only


def test_same_model_matches_dated_ids_only():
    from trainer.data.edit import _same_model

    assert _same_model("claude-sonnet-4-5-20250929", "claude-sonnet-4-5")
    assert _same_model("claude-test", "claude-test") and _same_model("", "claude-test")
    assert not _same_model("claude-sonnet-4-5-20250929", "claude-sonnet-4")  # another model
    assert not _same_model("claude-other", "claude-test")
