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
from dataclasses import asdict

from trainer import demo as demo_mod
from trainer.data import edit as edit_mod
from trainer.data.edit import EditConfig, run_edit
from trainer.errors import EXIT_PARTIAL, DataError
from trainer.eval import plot as plot_mod
from trainer.eval import report as report_mod
from trainer.eval.generate import GenerateConfig, run_generate
from trainer.eval.pairwise import EvalConfig, format_eval_summary, run_eval
from trainer.eval.rm_accuracy import EvalRMConfig, evaluate_reward_model
from trainer.eval.winrate import WinrateConfig, format_summary, load_annotations, summarize
from trainer.infra.command import add_flags, config_from_args, run
from trainer.infra.outputs import check_output, write_json

log = logging.getLogger("fgrlhf")

EXIT_STATUS = (
    "Exit status: 0 done; 1 a runtime error (the output cannot be written or is locked, no API key);\n"
    "2 a usage error (flags, -o, the prompt file) or bad input data; 3 some requests failed (not\n"
    "written: rerun to retry them); 75 / 130 stopped by SIGTERM / Ctrl-C (what was written is\n"
    "kept; the summary says how far it got; rerun to resume)."
)


def _module_doc(name: str) -> str:
    """The first paragraphs of a module's docstring (up to its usage lines), for --help."""
    return (importlib.import_module(name).__doc__ or "").split("\n\n")[0]


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
    add_flags(e, EditConfig, positional=("input",), short={"output": "-o"})
    e.add_argument("--summary-json", default=None, help="also write the summary as JSON to this file")

    w = sub.add_parser(
        "winrate",
        parents=[common],
        help="win rate and standard error of an AlpacaEval-format annotations file",
        description="Recompute the AlpacaEval leaderboard numbers from pairwise annotations "
        "(preference 1 = output_1/reference wins, 2 = output_2/model wins, 0 or 1.5 = draw).",
        epilog="Exit status: 0 done; 2 an unreadable file or a record without 'preference'.",
    )
    add_flags(w, WinrateConfig, positional=("annotations",))

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
    add_flags(g, GenerateConfig, positional=("model", "instructions"), short={"output": "-o"})

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
    add_flags(v, EvalConfig, positional=("model_outputs", "reference_outputs"), short={"output_dir": "-o"})

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
        epilog="Exit status: 0 done; 1 an output that cannot be written; 2 bad flags, not a reward-model "
        "directory, or bad pairs data; 130 Ctrl-C.",
    )
    add_flags(r, EvalRMConfig, positional=("rm_dir", "pairs"))

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

    def job() -> int:
        cfg = config_from_args(EditConfig, args)
        if args.summary_json:
            check_output(args.summary_json, "--summary-json", (cfg.input, cfg.output))
        log.info("config %s", json.dumps(asdict(cfg)))
        summary = run_edit(cfg)  # (SIGTERM, Ctrl-C: its summary says what was written)
        if args.summary_json and not _wrote_json(args.summary_json, summary.as_dict(), "--summary-json"):
            return 1
        return EXIT_PARTIAL if summary.failed else 0

    return run(job, log.error, skip_hint=not args.skip_invalid)


def _wrote_json(path: str, obj: object, flag: str) -> bool:
    """Write a command's ``--json`` summary (strict JSON, atomic); False after a one-line error
    (the work is done: exit 1, not a usage error)."""
    try:
        write_json(path, obj, flag)
    except (OSError, ValueError) as e:
        log.error("%s %s: %s", flag, path, getattr(e, "strerror", None) or e)
        return False
    return True


def cmd_winrate(args: argparse.Namespace) -> int:
    """``fgrlhf winrate``: see :mod:`trainer.eval.winrate`."""

    def job() -> int:
        cfg = config_from_args(WinrateConfig, args)
        if cfg.json:
            check_output(cfg.json, "--json", (cfg.annotations,))
        summary = summarize(load_annotations(cfg.annotations))
        if summary["n_total"] == 0:  # no win rate: say why instead of printing "nan"
            raise DataError(
                cfg.annotations,
                f"no valid preference in {summary['n_missing']} annotations (each is missing, null or "
                "outside 1..2 / 0): no win rate",
            )
        print(format_summary(summary))
        return 0 if not cfg.json or _wrote_json(cfg.json, summary, "--json") else 1

    return run(job, log.error)


def cmd_generate(args: argparse.Namespace) -> int:
    """``fgrlhf generate``: see :mod:`trainer.eval.generate`."""

    def job() -> None:
        s = run_generate(config_from_args(GenerateConfig, args))
        if s["output"]:
            print(
                f"{s['instructions']} answers in {s['output']} ({s['generated']} generated here, "
                f"{s['already_done']} from an earlier run; {s['tokens_per_second']} tokens/s)"
            )

    kept = "interrupted: the answers written are kept; rerun the same command to continue"
    return run(job, log.error, skip_hint=not args.skip_invalid, interrupted=kept)


def cmd_eval(args: argparse.Namespace) -> int:
    """``fgrlhf eval``: see :mod:`trainer.eval.pairwise`."""

    def job() -> int:
        cfg = config_from_args(EvalConfig, args)
        summary = run_eval(cfg)  # (SIGTERM, Ctrl-C: it says how many were judged and written)
        print(format_eval_summary(summary))
        print(f"annotations, summary and judgments in {cfg.output_dir}")
        return 0 if summary["complete"] else EXIT_PARTIAL

    return run(job, log.error, skip_hint=not args.skip_invalid)


def cmd_eval_rm(args: argparse.Namespace) -> int:
    """``fgrlhf eval-rm``: see :mod:`trainer.eval.rm_accuracy`."""

    def job() -> int:
        cfg = config_from_args(EvalRMConfig, args)
        if cfg.json:
            check_output(cfg.json, "--json", (cfg.pairs, cfg.rm_dir))
        m = evaluate_reward_model(cfg.rm_dir, cfg.pairs, cfg.max_length, cfg.batch_size, cfg.skip_invalid)
        shown = ("accuracy", "edited_accuracy", "original_accuracy", "gold_accuracy", "auroc_added")
        for key in (*shown, "auroc_removed"):
            if key in m:
                print(f"{key:<18} {m[key]:.4f}")
        print(
            f"pairs              edited {m['edited_pairs']}, original {m['original_pairs']}; "
            f"skipped {m['skipped']}"
        )
        return 0 if not cfg.json or _wrote_json(cfg.json, m, "--json") else 1

    return run(job, log.error, skip_hint=not args.skip_invalid)


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
