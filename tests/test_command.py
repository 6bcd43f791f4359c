"""The ``fgrlhf`` command convention (trainer/infra/command.py): flags derived from a command's
config dataclass, ranges checked naming the flag, and one runner from exceptions to the README's
exit statuses (trainer/errors.py)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from trainer.cli import build_parser
from trainer.data.edit import EditConfig
from trainer.errors import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    CheckpointError,
    ConfigError,
    DataError,
    JobFailed,
    PeerFailure,
    Preempted,
    Stopped,
    exit_status,
)
from trainer.eval.generate import GenerateConfig
from trainer.eval.pairwise import EvalConfig
from trainer.eval.plot import PlotConfig
from trainer.eval.report import ReportConfig
from trainer.eval.rm_accuracy import EvalRMConfig
from trainer.eval.winrate import WinrateConfig
from trainer.infra.claude import ClaudeSettings
from trainer.infra.command import add_flags, config_from_args, run
from trainer.infra.config import field_docs
from trainer.infra.outputs import OutputError


@dataclass
class Toy:
    """A command's options."""

    CHOICES: ClassVar[dict] = {"mode": ("a", "b")}
    AT_LEAST: ClassVar[dict] = {"count": 1}
    ABOVE: ClassVar[dict] = {"mass": 0}
    AT_MOST: ClassVar[dict] = {"mass": 1}

    path: str
    """The input."""
    output: str
    """Where it goes."""
    mode: str = "a"
    """How: 100% a or b."""
    count: int | None = None
    """How many."""
    mass: float = 1.0
    """Probability mass."""
    fast: bool = False
    """Go fast."""
    progress: bool = True
    """Show a bar."""
    names: list[str] = field(default_factory=list)
    """Some names."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False)
    add_flags(p, Toy, positional=("path",), short={"output": "-o"})
    return p


def test_flags_are_derived_from_the_fields():
    p = _parser()
    cfg = config_from_args(Toy, p.parse_args(["in.json", "-o", "out"]))
    assert cfg == Toy("in.json", "out")
    args = ["x", "--output", "o", "--mode", "b", "--count", "3", "--mass", "0.5", "--fast", "--no-progress"]
    cfg = config_from_args(Toy, p.parse_args([*args, "--names", "n1", "n2"]))
    assert cfg == Toy("x", "o", "b", 3, 0.5, True, False, ["n1", "n2"])
    assert config_from_args(Toy, p.parse_args(["x", "-o", "o", "--count", "none"])).count is None
    text = p.format_help()
    assert "How: 100% a or b. (default: a)" in " ".join(text.split())  # the docstring, % kept
    assert "turn off (on by default): show a bar." in " ".join(text.split())
    with pytest.raises(SystemExit):  # -o has no default: required
        p.parse_args(["x"])
    with pytest.raises(SystemExit):  # a choice
        p.parse_args(["x", "-o", "o", "--mode", "c"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--count", "0"], "--count must be >= 1, got 0"),
        (["--mass", "0"], "--mass must be in (0, 1], got 0"),
        (["--mass", "1.5"], "--mass must be in (0, 1], got 1.5"),
    ],
)
def test_ranges_name_the_flag(flags, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        config_from_args(Toy, _parser().parse_args(["x", "-o", "o", *flags]))


def test_generate_checks_its_temperature_unless_greedy():
    p = argparse.ArgumentParser()
    add_flags(p, GenerateConfig, positional=("model", "instructions"), short={"output": "-o"})
    with pytest.raises(ConfigError, match="--temperature must be > 0"):
        config_from_args(GenerateConfig, p.parse_args(["m", "i", "-o", "o", "--temperature", "0"]))
    assert config_from_args(
        GenerateConfig, p.parse_args(["m", "i", "-o", "o", "--temperature", "0", "--greedy"])
    )


COMMANDS = {
    EditConfig: "edit", EvalConfig: "eval", GenerateConfig: "generate", PlotConfig: "plot",
    ReportConfig: "report", WinrateConfig: "winrate", EvalRMConfig: "eval-rm", ClaudeSettings: None,
}  # fmt: skip


@pytest.mark.parametrize("cls", list(COMMANDS))
def test_every_command_option_is_documented_and_a_flag(cls):
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in field_docs(cls)]
    assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
    if COMMANDS[cls] is None:
        return
    sub = build_parser()._subcommands()[COMMANDS[cls]]
    dests = {a.dest for a in sub._actions}
    assert {f.name for f in dataclasses.fields(cls)} <= dests


def test_edit_and_eval_share_one_set_of_claude_settings():
    shared = {f.name for f in dataclasses.fields(ClaudeSettings)}
    for cls in (EditConfig, EvalConfig):
        assert issubclass(cls, ClaudeSettings) and shared <= {f.name for f in dataclasses.fields(cls)}
    assert EditConfig("i", "o").max_tokens == 4096 and EvalConfig("m", "r", "j", "o").max_tokens == 1024


@pytest.mark.parametrize(
    "error, status",
    [
        (ConfigError("k"), EXIT_BAD_INPUT),
        (DataError("f.json", "bad"), EXIT_BAD_INPUT),
        (OutputError("-o x: a directory"), EXIT_BAD_INPUT),
        (CheckpointError("none intact"), EXIT_BAD_INPUT),
        (ValueError("a prompt file"), EXIT_BAD_INPUT),
        (Stopped(), EXIT_PREEMPTED),
        (KeyboardInterrupt(), EXIT_INTERRUPTED),
        (PeerFailure("rank 0"), EXIT_FAILED),
        (FileNotFoundError(2, "No such file or directory", "x.json"), EXIT_FAILED),
        (JobFailed("ANTHROPIC_API_KEY is not set"), EXIT_FAILED),
        (RuntimeError("a torch error"), None),  # a crash: its traceback
        (TypeError("a bug"), None),
    ],
)
def test_one_table_of_exit_statuses(error, status, tmp_path):
    assert exit_status(error) == status
    assert exit_status(Preempted(tmp_path, 3)) == EXIT_PREEMPTED


def _raising(e: BaseException):
    def job():
        raise e

    return job


def test_the_runner_says_one_line_and_returns_the_status(caplog):
    said: list[str] = []

    def fail(e: BaseException):
        return run(_raising(e), said.append, skip_hint=True, interrupted="kept")

    assert run(lambda: None, said.append) == 0 and run(lambda: 3, said.append) == 3 and said == []
    assert fail(DataError("p.jsonl", "bad", "line 2", "prompt")) == 2
    assert said[-1] == "bad input: p.jsonl: line 2: field 'prompt': bad (--skip-invalid skips bad records)"
    assert fail(DataError("p.jsonl", "every record is invalid (2 skipped)")) == 2
    assert "--skip-invalid" not in said[-1]  # (not a record's error: skipping cannot help)
    assert fail(DataError("o.json", "stored answers were generated by another model")) == 2
    assert "--skip-invalid" not in said[-1]
    assert fail(FileNotFoundError(2, "No such file or directory", "x.json")) == 1
    assert said[-1] == "x.json: No such file or directory"
    assert fail(OSError(28, "No space left on device")) == 1 and said[-1] == "No space left on device"
    n = len(said)
    assert fail(Stopped()) == 75 and len(said) == n  # the job said what it kept
    told: list[str] = []
    assert run(lambda: (_ for _ in ()).throw(Stopped("3 kept")), said.append, notice=told.append) == 75
    assert (
        run(lambda: (_ for _ in ()).throw(KeyboardInterrupt()), said.append, False, "kept", told.append)
        == 130
    )
    assert told == ["3 kept", "kept"] and len(said) == n  # a stop is not an error
    with pytest.raises(TypeError):  # a crash keeps its traceback
        fail(TypeError("a bug"))


def test_fgrlhf_edit_range_error_names_the_flag(caplog, tmp_path):
    from trainer.cli import main

    with caplog.at_level(logging.ERROR):
        assert main(["edit", str(tmp_path / "in.jsonl"), "-o", str(tmp_path / "o"), "--backoff", "-1"]) == 2
    assert "--backoff must be >= 0, got -1" in caplog.text
