"""The ``fgrlhf`` command. Thin: it parses arguments and calls the library.

    fgrlhf edit INPUT -o OUTPUT [--model M] [--concurrency N] [--limit N] [--dry-run] ...
    fgrlhf generate MODEL INSTRUCTIONS -o OUTPUTS.json [--greedy | --temperature T] [--seed S] ...
    fgrlhf eval MODEL_OUTPUTS REFERENCE_OUTPUTS --judge claude:<model>|rm:<dir>|gold:<dir> -o DIR [--swap]
    fgrlhf winrate ANNOTATIONS [--json SUMMARY]
    fgrlhf plot METRICS.jsonl [MORE.jsonl ...] -o DIR
    fgrlhf report --rm RM_DIR --pairs PAIRS -o PAGE.html | --rollouts RUN_DIR -o PAGE.html
    fgrlhf eval-rm RM_DIR PAIRS [--max-length N] [--json OUT]
    fgrlhf demo [--quick] [--seeds N] [--first-seed N] [--agreements A ...] [--editor-recalls R ..] [--out D]
    python -m trainer.cli edit ...          # the same without the installed script

Exit status (every command and trainer alike; ``trainer.errors``): 0 done; 1 a runtime error (the
output cannot be written or is locked, no API key); 2 a usage error (flags, -o, the prompt file)
or bad input data; 3 some requests failed (not written; rerun the same command to retry them);
75 stopped by SIGTERM and 130 interrupted by Ctrl-C: what was written is kept, the same command
resumes.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, fields

from trainer import demo as demo_mod
from trainer.data import edit as edit_mod
from trainer.data.edit import DEFAULT_MODEL, EditConfig, Terminated, run_edit
from trainer.data.formats import FORMATS, DataError
from trainer.errors import EXIT_PREEMPTED, ConfigError, Stopped
from trainer.eval import plot as plot_mod
from trainer.eval import report as report_mod
from trainer.eval.generate import GenerateConfig, run_generate
from trainer.eval.pairwise import EvalConfig, format_eval_summary, run_eval
from trainer.eval.rm_accuracy import evaluate_reward_model
from trainer.eval.winrate import format_summary, load_annotations, summarize
from trainer.infra.outputs import OutputError, check_output, write_json
from trainer.infra.trackers import add_report_to

log = logging.getLogger("fgrlhf")

EXIT_STATUS = (
    "Exit status: 0 done; 1 a runtime error (the output cannot be written or is locked, no API key);\n"
    "2 a usage error (flags, -o, the prompt file) or bad input data; 3 some requests failed (not\n"
    "written: rerun to retry them); 75 / 130 stopped by SIGTERM / Ctrl-C (what was written is\n"
    "kept; the summary says how far it got; rerun to resume)."
)


def _doc(name: str) -> str:
    """The help text of an EditConfig field, from its docstring's Attributes section."""
    doc = EditConfig.__doc__ or ""
    for line in doc.splitlines():
        line = line.strip()
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    return ""


def _module_doc(name: str) -> str:
    """The first paragraphs of a module's docstring (up to its usage lines), for --help."""
    return (importlib.import_module(name).__doc__ or "").split("\n\n")[0]


def _optional_float(text: str) -> float | None:
    return None if text.lower() in ("none", "null", "") else float(text)


class Parser(argparse.ArgumentParser):
    """The ``fgrlhf`` parser: no prefix matching (``--seed`` is not ``--seeds``), and an unknown
    flag is an error naming the closest real flags of its subcommand."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extras = self.parse_known_args(args, namespace)
        if extras:
            sub = self._subcommands().get(getattr(ns, "command", None), self)
            flags = sorted({o for a in sub._actions for o in a.option_strings if o.startswith("--")})
            words = []
            for x in extras:
                near = difflib.get_close_matches(x.split("=")[0], flags, n=3, cutoff=0.6)
                words.append(f"{x} (did you mean {' or '.join(near)}?)" if near and x.startswith("-") else x)
            sub.error(f"unrecognized arguments: {' '.join(words)}; its flags: {' '.join(flags)}")
        return ns

    def _subcommands(self) -> dict[str, argparse.ArgumentParser]:
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    # -v works before or after the subcommand (SUPPRESS: the subcommand's default does not
    # overwrite a -v given before it).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging"
    )
    parser = Parser(prog="fgrlhf", description="Fine-grained RLHF tools.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    e = sub.add_parser(
        "edit",
        parents=[common],
        help="collect minimal edits of the less-preferred responses from Claude",
        description=(edit_mod.__doc__ or "").split("\n\n")[0],
        epilog=EXIT_STATUS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    e.add_argument("input", help=_doc("input"))
    e.add_argument("-o", "--output", required=True, help=_doc("output"))
    e.add_argument("--format", default="auto", choices=("auto",) + FORMATS, help=_doc("format"))
    e.add_argument("--split", default="train", help=_doc("split"))
    e.add_argument("--model", default=DEFAULT_MODEL, help=_doc("model"))
    e.add_argument("--max-tokens", type=int, default=4096, help=_doc("max_tokens"))
    e.add_argument("--temperature", type=_optional_float, default=0.0, help=_doc("temperature"))
    e.add_argument("--concurrency", type=int, default=8, help=_doc("concurrency"))
    e.add_argument("--timeout", type=float, default=120.0, help=_doc("timeout"))
    e.add_argument("--max-retries", type=int, default=6, help=_doc("max_retries"))
    e.add_argument("--extra-attempts", type=int, default=2, help=_doc("extra_attempts"))
    e.add_argument("--backoff", type=float, default=10.0, help=_doc("backoff"))
    e.add_argument("--prompt-file", default=None, help=_doc("prompt_file"))
    e.add_argument("--min-similarity", type=float, default=0.5, help=_doc("min_similarity"))
    e.add_argument("--limit", type=int, default=None, help=_doc("limit"))
    e.add_argument("--dry-run", action="store_true", help=_doc("dry_run"))
    e.add_argument("--skip-invalid", action="store_true", help=_doc("skip_invalid"))
    e.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    e.add_argument("--price-in", type=float, default=None, help="USD per million input tokens (estimate)")
    e.add_argument("--price-out", type=float, default=None, help="USD per million output tokens (estimate)")
    e.add_argument("--no-fsync", dest="fsync", action="store_false", help="flush without fsync")
    e.add_argument("--summary-json", default=None, help="also write the summary as JSON to this file")
    e.add_argument("--redo-stale", action="store_true", help=_doc("redo_stale"))

    w = sub.add_parser(
        "winrate",
        parents=[common],
        help="win rate and standard error of an AlpacaEval-format annotations file",
        description="Recompute the AlpacaEval leaderboard numbers from pairwise annotations "
        "(preference 1 = output_1/reference wins, 2 = output_2/model wins, 0 or 1.5 = draw).",
        epilog="Exit status: 0 done; 2 an unreadable file or a record without 'preference'.",
    )
    w.add_argument("annotations", help="a JSON list or JSONL of annotations")
    w.add_argument("--json", default=None, help="also write the summary as JSON to this file")

    g = sub.add_parser(
        "generate",
        parents=[common],
        help="a policy's answers to an instruction set (AlpacaEval format; resumable; torchrun DP)",
        description=(gen_doc := _module_doc("trainer.eval.generate")),
        epilog="Exit status: 0 done; 1 an output that cannot be written or is locked; 2 bad flags, "
        "model, instructions, an -o that is a directory or an input, or stored answers from another "
        "model or other settings; 75 / 130 stopped by SIGTERM / Ctrl-C (what was written is kept: rerun to "
        "continue).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    del gen_doc
    g.add_argument(
        "model",
        help="a transformers causal-LM directory (runs/ppo/final/actor, runs/sft/final), "
        "or a Hub id in the HF cache",
    )
    g.add_argument("instructions", help="AlpacaEval/AlpacaFarm records: instruction [, input, dataset]")
    g.add_argument("-o", "--output", required=True, help="the AlpacaEval-format JSON to write")
    g.add_argument("--generator", default=None, help="name recorded in the outputs (default: model dir name)")
    g.add_argument("--max-new-tokens", type=int, default=512)
    g.add_argument("--max-prompt-length", type=int, default=1024, help="prompts cut from the left (BOS kept)")
    g.add_argument("--temperature", type=float, default=0.7)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--greedy", action="store_true", help="argmax decoding")
    g.add_argument("--seed", type=int, default=0, help="batch b is sampled with seed + b")
    g.add_argument("--batch-size", type=int, default=8)
    g.add_argument(
        "--prompt-template",
        default=None,
        choices=("auto", "plain", "alpaca", "chat"),
        help="default: the one the policy was trained on (its fgrlhf_policy.json), else auto",
    )
    g.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    g.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    g.add_argument("--limit", type=int, default=None, help="only the first N instructions")
    g.add_argument("--skip-invalid", action="store_true", help="skip (and count) bad records")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    g.add_argument("--no-fsync", dest="fsync", action="store_false", help="flush without fsync")
    g.add_argument(
        "--allow-download",
        action="store_true",
        help="download a Hub id (org/name) that is not in the Hugging Face cache (default: refused)",
    )

    v = sub.add_parser(
        "eval",
        parents=[common],
        help="win rate of model outputs against reference outputs, judged pairwise (Claude or an RM)",
        description=_module_doc("trainer.eval.pairwise"),
        epilog="Exit status: 0 done; 1 no API key, or the output locked / unwritable; 2 bad flags or "
        "input records; 3 some comparisons failed (rerun to retry them); 75 / 130 stopped by SIGTERM / "
        "Ctrl-C (rerun to resume).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    v.add_argument("model_outputs", help="the model's outputs (AlpacaEval format: instruction, output, ...)")
    v.add_argument("reference_outputs", help="the reference's outputs, same instructions")
    v.add_argument(
        "--judge", required=True, help="claude:<model>, rm:<reward model dir> or gold:<synthetic world dir>"
    )
    v.add_argument("-o", "--output-dir", required=True, help="judgments, annotations.json, summary.json")
    v.add_argument("--swap", action="store_true", help="judge both orders; disagreement is a draw")
    v.add_argument("--seed", type=int, default=0, help="the random orders and the bootstrap")
    v.add_argument("--skip-invalid", action="store_true", help="skip (and count) bad or unmatched records")
    v.add_argument("--limit", type=int, default=None, help="only the first N instructions")
    v.add_argument("--bootstrap", type=int, default=2000, help="resamples of the 95%% interval (0: none)")
    v.add_argument("--concurrency", type=int, default=8, help="Claude requests in flight")
    v.add_argument("--max-tokens", type=int, default=1024, help="Claude's output budget per verdict")
    v.add_argument("--timeout", type=float, default=120.0)
    v.add_argument("--max-retries", type=int, default=6)
    v.add_argument("--extra-attempts", type=int, default=2)
    v.add_argument("--backoff", type=float, default=10.0)
    v.add_argument(
        "--prompt-file", default=None, help="a pairwise prompt ({instruction}, {output_1}, {output_2})"
    )
    v.add_argument("--price-in", type=float, default=None, help="USD per million input tokens")
    v.add_argument("--price-out", type=float, default=None, help="USD per million output tokens")
    v.add_argument("--rm-max-length", type=int, default=1024, help="rm judge: longest prompt + answer")
    v.add_argument("--rm-batch-size", type=int, default=16, help="rm judge: comparisons per forward")
    v.add_argument(
        "--tie-tolerance", type=float, default=0.0, help="rm/gold judge: closer rewards are a draw"
    )
    v.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    v.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    v.add_argument("--no-fsync", dest="fsync", action="store_false", help="flush without fsync")
    add_report_to(v, "the result (files in OUT/trackers)")

    pl = sub.add_parser(
        "plot",
        parents=[common],
        help="training curves of one or more runs' metrics.jsonl to PNG",
        description=(plot_mod.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    plot_mod.add_arguments(pl)
    rp = sub.add_parser(
        "report",
        parents=[common],
        help="a self-contained HTML page of per-token rewards (an RM on pairs, or PPO rollouts)",
        description=(report_mod.__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    report_mod.add_arguments(rp)

    r = sub.add_parser(
        "eval-rm",
        parents=[common],
        help="pairwise accuracy of a trained reward model on labelled pairs",
        description="The reward trainer's held-out metrics of RM_DIR on every pair of PAIRS.",
        epilog="Exit status: 0 done; 2 not a reward-model directory, or bad pairs data.",
    )
    r.add_argument("rm_dir", help="a directory written by trainer/reward.py (final/ or best/)")
    r.add_argument("pairs", help="an `fgrlhf edit` JSONL (edited + original pairs)")
    r.add_argument("--max-length", type=int, default=1024, help="longest prompt + response (tokens)")
    r.add_argument("--batch-size", type=int, default=16, help="pairs per forward")
    r.add_argument("--skip-invalid", action="store_true", help="skip (and count) bad records")
    r.add_argument("--json", default=None, help="also write the metrics as JSON to this file")

    dm = sub.add_parser(
        "demo",
        parents=[common],
        help="the paper's tables in the simulated-preference world (SFT, RMs, PPO arms, FIGA, matched KL)",
        description=demo_mod.__doc__,
        epilog="Exit status: 0 done; 1 a stage failed (its log is named; rerun to resume); 2 bad flags, "
        "an estimate over a day without --yes, or --out holds a demo with other settings; 75 SIGTERM (a "
        "trainer stage checkpoints first); 130 Ctrl-C (rerun the same command to "
        "resume).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo_mod.add_arguments(dm)
    # No prefix matching: `fgrlhf demo --seed 42` used to be read as `--seeds 42` (42 seeds, hours).
    # An abbreviated or unknown flag is an error that lists the real ones.
    for p in (parser, *sub.choices.values()):
        p.allow_abbrev = False
    return parser


def cmd_edit(args: argparse.Namespace) -> int:
    """``fgrlhf edit``: see :mod:`trainer.data.edit`."""
    names = {f.name for f in fields(EditConfig)}
    cfg = EditConfig(**{k: v for k, v in vars(args).items() if k in names})
    bad = _check_ranges(cfg) or _bad_output(args.summary_json, "--summary-json", cfg.input, cfg.output)
    if bad:
        log.error("%s", bad)
        return 2
    log.info("config %s", json.dumps(asdict(cfg)))
    try:
        summary = run_edit(cfg)
    except DataError as e:
        hint = (
            ""
            if cfg.skip_invalid or "every record is invalid" in str(e)
            else " (--skip-invalid skips bad records)"
        )
        log.error("bad input: %s%s", e, hint)
        return 2
    except Terminated:  # SIGTERM while editing: the summary was printed
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        return 130
    except OSError as e:  # an unwritable or missing path, a full disk: one line naming the path
        log.error("%s: %s", e.filename or cfg.output, e.strerror or e)
        return 1
    except ValueError as e:  # a prompt file, -o or flags that cannot be used: a usage error
        log.error("%s", e)
        return 2
    except RuntimeError as e:  # no API key, the output locked by another run
        log.error("%s", e)
        return 1
    if args.summary_json and not _wrote_json(args.summary_json, summary.as_dict(), "--summary-json"):
        return 1
    return 3 if summary.failed else 0


def _bad_output(path: str | None, flag: str, *inputs: str | None) -> str | None:
    """Why an optional output file cannot be used (a directory, or one of the inputs), checked
    before any work; None when it is fine or not given."""
    if path is None:
        return None
    try:
        check_output(path, flag, inputs)
    except OutputError as e:
        return str(e)
    return None


def _wrote_json(path: str, obj: object, flag: str) -> bool:
    """Write a command's ``--json`` summary (strict JSON, atomic); False after a one-line error."""
    try:
        write_json(path, obj, flag)
    except (OSError, OutputError) as e:
        log.error("%s %s: %s", flag, path, getattr(e, "strerror", None) or e)
        return False
    return True


def _check_ranges(cfg: EditConfig) -> str | None:
    """The first flag out of its range, as a message naming it (None when all are fine)."""
    checks = (
        ("--concurrency", cfg.concurrency, 1, None),
        ("--max-tokens", cfg.max_tokens, 1, None),
        ("--limit", cfg.limit, 1, None),
        ("--timeout", cfg.timeout, 1e-9, None),
        ("--max-retries", cfg.max_retries, 0, None),
        ("--extra-attempts", cfg.extra_attempts, 0, None),
        ("--backoff", cfg.backoff, 0, None),
        ("--min-similarity", cfg.min_similarity, 0, 1),
    )
    for flag, value, low, high in checks:
        if value is None:
            continue
        if value < low or (high is not None and value > high):
            span = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}]"
            if flag == "--timeout":
                span = "> 0"
            return f"{flag} must be {span}, got {value:g}"
    return None


def cmd_winrate(args: argparse.Namespace) -> int:
    """``fgrlhf winrate``: see :mod:`trainer.eval.winrate`."""
    bad = _bad_output(args.json, "--json", args.annotations)
    if bad:
        log.error("%s", bad)
        return 2
    try:
        summary = summarize(load_annotations(args.annotations))
    except DataError as e:
        log.error("bad input: %s", e)
        return 2
    if summary["n_total"] == 0:  # no win rate: say why instead of printing "nan"
        log.error(
            "%s: no valid preference in %d annotations (each is missing, null or outside 1..2 / 0): "
            "no win rate",
            args.annotations,
            summary["n_missing"],
        )
        return 2
    print(format_summary(summary))
    if args.json and not _wrote_json(args.json, summary, "--json"):
        return 1
    return 0


def _checked(flags: dict[str, tuple[float | None, float]]) -> str | None:
    """The first flag below its minimum, as a message (None when all are fine)."""
    for flag, (value, low) in flags.items():
        if value is not None and value < low:
            return f"{flag} must be >= {low:g}, got {value:g}"
    return None


def cmd_generate(args: argparse.Namespace) -> int:
    """``fgrlhf generate``: see :mod:`trainer.eval.generate`."""
    cfg = GenerateConfig(
        **{f.name: getattr(args, f.name) for f in fields(GenerateConfig)}, allow_download=args.allow_download
    )
    bad = _checked(
        {
            "--max-new-tokens": (cfg.max_new_tokens, 1),
            "--max-prompt-length": (cfg.max_prompt_length, 1),
            "--batch-size": (cfg.batch_size, 1),
            "--limit": (cfg.limit, 1),
            "--top-p": (cfg.top_p, 1e-9),
            "--temperature": (None if cfg.greedy else cfg.temperature, 1e-9),
        }
    )
    if bad or cfg.top_p > 1:
        log.error("%s", bad or f"--top-p must be in (0, 1], got {cfg.top_p:g}")
        return 2
    try:
        s = run_generate(cfg)
    except (ConfigError, DataError, ValueError) as e:
        log.error("%s", e)
        return 2
    except Stopped:  # SIGTERM: the batch in hand was finished and written
        print("stopped by SIGTERM: the answers written are kept; rerun the same command to continue")
        return EXIT_PREEMPTED
    except KeyboardInterrupt:
        print("interrupted: the answers written are kept; rerun the same command to continue")
        return 130
    except (OSError, RuntimeError) as e:
        log.error("%s", e)
        return 1
    if s["output"]:
        print(
            f"{s['instructions']} answers in {s['output']} ({s['generated']} generated here, "
            f"{s['already_done']} from an earlier run; {s['tokens_per_second']} tokens/s)"
        )
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``fgrlhf eval``: see :mod:`trainer.eval.pairwise`."""
    cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in fields(EvalConfig)})
    bad = _checked(
        {
            "--concurrency": (cfg.concurrency, 1),
            "--max-tokens": (cfg.max_tokens, 1),
            "--limit": (cfg.limit, 1),
            "--bootstrap": (cfg.bootstrap, 0),
            "--timeout": (cfg.timeout, 1e-9),
            "--max-retries": (cfg.max_retries, 0),
            "--extra-attempts": (cfg.extra_attempts, 0),
            "--backoff": (cfg.backoff, 0),
            "--rm-max-length": (cfg.rm_max_length, 2),
            "--rm-batch-size": (cfg.rm_batch_size, 1),
            "--tie-tolerance": (cfg.tie_tolerance, 0),
        }
    )
    if bad:
        log.error("%s", bad)
        return 2
    try:
        summary = run_eval(cfg)
    except (ConfigError, DataError, ValueError) as e:
        log.error("%s", e)
        return 2
    except KeyboardInterrupt as e:
        return EXIT_PREEMPTED if str(e) == "SIGTERM" else 130
    except (OSError, RuntimeError) as e:
        log.error("%s", e)
        return 1
    print(format_eval_summary(summary))
    print(f"annotations, summary and judgments in {cfg.output_dir}")
    return 0 if summary["complete"] else 3


def cmd_eval_rm(args: argparse.Namespace) -> int:
    """``fgrlhf eval-rm``: see :mod:`trainer.eval.rm_accuracy`."""
    if args.max_length < 2 or args.batch_size < 1:
        log.error("--max-length must be >= 2 and --batch-size >= 1")
        return 2
    bad = _bad_output(args.json, "--json", args.pairs, args.rm_dir)
    if bad:
        log.error("%s", bad)
        return 2
    try:
        m = evaluate_reward_model(
            args.rm_dir, args.pairs, args.max_length, args.batch_size, args.skip_invalid
        )
    except (ConfigError, DataError) as e:
        log.error("%s", e)
        return 2
    for key in (
        "accuracy",
        "edited_accuracy",
        "original_accuracy",
        "gold_accuracy",
        "auroc_added",
        "auroc_removed",
    ):
        if key in m:
            print(f"{key:<18} {m[key]:.4f}")
    print(
        f"pairs              edited {m['edited_pairs']}, original {m['original_pairs']}; "
        f"skipped {m['skipped']}"
    )
    if args.json and not _wrote_json(args.json, m, "--json"):
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fgrlhf`` script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # The SDK's and HTTP clients' debug logs print request details: keep them quiet always.
    for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "anthropic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.command == "edit":
        return cmd_edit(args)
    if args.command == "winrate":
        return cmd_winrate(args)
    if args.command == "generate":
        return cmd_generate(args)
    if args.command == "eval":
        return cmd_eval(args)
    if args.command in ("plot", "report"):
        return (plot_mod if args.command == "plot" else report_mod).run_cli(args)
    if args.command == "eval-rm":
        return cmd_eval_rm(args)
    if args.command == "demo":
        return demo_mod.cmd(args)
    raise AssertionError(args.command)  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":
    sys.exit(main())
