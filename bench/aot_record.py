"""Compile every Triton kernel ahead of time (``fgkernels.aot``) and append the resource table
to ``bench/RESULTS.md``. The package itself never imports ``bench``: recording lives here.

    python bench/aot_record.py [--ops gae ...] [--capabilities 80 90]

Run with ``TRITON_INTERPRET`` unset (kernels defined under the interpreter cannot compile).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import record  # noqa: E402
from fgkernels.aot import HEADER, NOTES, compile_all, parse_args, report, table_rows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = compile_all(args.ops, args.capabilities)
    status = report(results)
    record("Triton AOT compilation (sm_80 = A100, sm_90 = H100)", HEADER, table_rows(results), notes=NOTES)
    return status


if __name__ == "__main__":
    sys.exit(main())
