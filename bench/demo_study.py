"""The simulated-preference study (``fgrlhf demo``) at full size, recorded: the paper's tables
as mean ± standard error over seeds, appended to ``bench/RESULTS.md``.

Runs :func:`trainer.demo.run_demo` (resuming whatever ``--out`` already holds: a 5-seed run
after the default 3-seed one trains only seeds 3 and 4; the opt-in ``--matched-kl`` and
``--editor-recalls`` add only their own stages) and records its Markdown tables with the command,
machine and date::

    python bench/demo_study.py --record                         # the default: 3 seeds (~15-20 min)
    python bench/demo_study.py --seeds 5 --record               # + 2 seeds on the same --out
    python bench/demo_study.py --matched-kl 4 --editor-recalls 1 0.7 0.4 --record   # + Tables 4-6
    python bench/demo_study.py --first-seed 3 --out runs/demo_fresh --record        # fresh worlds
    python bench/demo_study.py --context-harm --out runs/demo_context --record
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import RESULTS, command_line, machine  # noqa: E402
from trainer.demo import Terminated, add_arguments, config_from_args, markdown, run_demo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    add_arguments(ap)
    ap.add_argument("--record", action="store_true", help="append the tables to bench/RESULTS.md")
    args = ap.parse_args()
    cfg = config_from_args(args)
    try:
        res = run_demo(cfg, progress=args.progress, force=args.yes)
    except ValueError as e:  # a bad flag, another demo's --out, or more than a day without --yes
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Terminated as e:  # SIGTERM: what was done is kept; a rerun resumes
        print(f"stopped by SIGTERM ({e}); rerun the same command to resume", file=sys.stderr)
        sys.exit(143)
    md = markdown(cfg, res["aggregate"], res["stage_seconds"])
    print(md)
    ran, skipped = len(res["stages_run"]), len(res["stages_skipped"])
    print(f"{ran} stages run, {skipped} resumed, {res['seconds']:.0f} s")
    if args.record:
        import datetime as dt

        body = md.split("\n", 2)[2].replace("\n## ", "\n### ")  # the tables, one level down
        now = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        seeds = res["aggregate"]["seed_list"]
        title = f"fgrlhf demo: {len(seeds)} seeds ({seeds[0]}–{seeds[-1]})" + (
            ", context-dependent harm" if cfg.context_harm else ""
        )
        title += f", matched KL {cfg.matched_kl:g}" if cfg.matched_kl else ""
        title += (
            f", editor recalls {' / '.join(f'{r:g}' for r in cfg.editor_recalls)}"
            if cfg.editor_recalls
            else ""
        )
        stages = (
            f"{ran} run here, {skipped} resumed from an earlier run ({res['seconds']:.0f} s in this run, "
            f"{res['stage_seconds']:.0f} s for every stage); every number from {cfg.out}/demo.json"
        )
        with RESULTS.open("a") as f:
            f.write(
                f"\n## {title}\n\n- command: `{command_line()}`\n- machine: {machine()}\n- date: {now}\n"
                f"- stages: {stages}\n\n{body}"
            )


if __name__ == "__main__":
    main()
