"""Ahead-of-time compilation of every Triton kernel for real GPUs, without a GPU.

The Triton interpreter (``TRITON_INTERPRET=1``, our only way to *run* the kernels on
this project's CPU machines) accepts code that the real compiler rejects. This module
closes that gap: each op module exposes ``triton_aot_specs()`` — built from the same
launch-config function its launcher uses, so the two cannot drift — and here every spec is
compiled with ``triton.compile(..., target=GPUTarget("cuda", cap, 32))`` to PTX and a
cubin, whose resource usage is read back with the ``cuobjdump`` that ships with Triton.

    python -m fgkernels.aot                  # compile all for sm_80 and sm_90, print a table
    python bench/aot_record.py               # ... and append it to bench/RESULTS.md

Must run with ``TRITON_INTERPRET`` unset (kernels defined under the interpreter are not
compilable); ``tests/test_triton_aot.py`` runs it in a subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import itertools
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass

OPS = ("masked_token_sums", "token_bt_loss", "gae", "token_logprobs")

# Per-SM shared memory a block may use (opt-in maximum), bytes; registers per SM.
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}  # A100: 164 KB/SM, 163 KB per block; H100: 228/227 KB
REGS_PER_SM = 65536
MAX_REGS_PER_THREAD = 255
CAPABILITIES = (80, 90)


@dataclass
class CompileResult:
    op: str
    kernel: str
    dtype: str
    config: str
    capability: int
    num_warps: int
    shared_bytes: int  # static (cubin) + dynamic (Triton's launch-time allocation)
    registers: int
    spill_bytes: int  # register spill stores per thread (ptxas -v), bytes
    stack_bytes: int = 0  # stack frame per thread (spills live here; so can small locals)
    error: str = ""

    @property
    def problems(self) -> list[str]:
        """What would break or slow down on a real device."""
        out = []
        if self.error:
            out.append(f"compile error: {self.error}")
            return out
        if self.shared_bytes > SMEM_LIMIT[self.capability]:
            out.append(f"shared memory {self.shared_bytes} B > {SMEM_LIMIT[self.capability]} B")
        if self.registers * self.num_warps * 32 > REGS_PER_SM:
            out.append(f"{self.registers} regs x {self.num_warps * 32} threads > {REGS_PER_SM}")
        if self.spill_bytes:
            out.append(f"{self.spill_bytes} B/thread spilled to local memory")
        return out


def _cuobjdump() -> str:
    import triton.backends.nvidia as nv

    return os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")


def _resource_usage(cubin: bytes) -> tuple[int, int, int]:
    """(registers, static shared bytes, stack + local bytes) of the one kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [_cuobjdump(), "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", out)
    if not m:
        raise RuntimeError(f"cannot parse cuobjdump output:\n{out}")
    reg, stack, shared, local = (int(g) for g in m.groups())
    return reg, shared, local + stack


_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores")


def _compile_logged(compile_fn):
    """Run ``compile_fn()`` with Triton's ptxas log captured; return (result, spill stores,
    stack frame) — the log is the only place ptxas states spills. The log is printed only
    when ptxas runs, so the caller uses a fresh cache directory."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        compiled = compile_fn()
    m = _SPILL.search(buf.getvalue())
    return compiled, (int(m.group(2)) if m else 0), (int(m.group(1)) if m else 0)


def _variants(spec: dict) -> list[tuple[str, dict, dict]]:
    """The specialisations Triton's launcher can produce for one spec, as
    ``(label, signature, attrs)``: "generic" exactly as declared (no alignment facts), and
    "aligned", the usual run-time case: integer arguments typed i32 (Triton picks i32 for
    values below 2^31) and every pointer and integer marked divisible by 16 (what Triton's
    binder infers for 16-byte-aligned tensors and multiple-of-16 sizes such as T=1024)."""
    names = list(spec["fn"].arg_names)
    sig = dict(spec["signature"])
    aligned_sig = {k: ("i32" if v == "i64" else v) for k, v in sig.items()}
    attrs = {
        (names.index(k),): [["tt.divisibility", 16]]
        for k, v in aligned_sig.items()
        if v.startswith("*") or v in ("i32", "i64")
    }
    return [("generic", sig, {}), ("aligned", aligned_sig, attrs)]


def _describe(spec: dict) -> tuple[str, str]:
    dtypes = sorted(
        {v.lstrip("*") for v in spec["signature"].values() if v.lstrip("*") in ("fp32", "bf16", "fp16")}
    )
    config = ",".join(f"{k}={v}" for k, v in spec["constexprs"].items())
    return "/".join(dtypes) or "-", f"{config},warps={spec['num_warps']}"


def compile_all(ops=OPS, capabilities=CAPABILITIES) -> list[CompileResult]:
    """Compile every spec of every op for every capability; never raises on a bad kernel
    (the error is recorded in the result)."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("fgkernels.aot needs TRITON_INTERPRET unset (kernels must be real JIT functions)")
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # A private cache, so every kernel really goes through ptxas and its log can be read.
    triton.knobs.nvidia.dump_ptxas_log = True
    triton.knobs.cache.dir = tempfile.mkdtemp(prefix="fgkernels-aot-")
    results = []
    for op in ops:
        module = importlib.import_module(f"fgkernels.{op}")
        for spec in module.triton_aot_specs():
            dtype, config = _describe(spec)
            for (variant, signature, attrs), cap in itertools.product(_variants(spec), capabilities):
                base = dict(
                    op=op,
                    kernel=spec["name"],
                    dtype=dtype,
                    config=f"{config},{variant}",
                    capability=cap,
                    num_warps=spec["num_warps"],
                )
                try:
                    src = ASTSource(
                        fn=spec["fn"], signature=signature, constexprs=spec["constexprs"], attrs=attrs
                    )
                    compiled, spill, stack = _compile_logged(
                        lambda src=src, cap=cap, nw=spec["num_warps"]: triton.compile(
                            src, target=GPUTarget("cuda", cap, 32), options={"num_warps": nw}
                        )
                    )
                    regs, static_smem, _ = _resource_usage(compiled.asm["cubin"])
                    results.append(
                        CompileResult(
                            **base,
                            shared_bytes=static_smem + compiled.metadata.shared,
                            registers=regs,
                            spill_bytes=spill,
                            stack_bytes=stack,
                        )
                    )
                except Exception as exc:  # noqa: BLE001 - recorded, reported by the caller
                    msg = str(exc).strip().splitlines()
                    results.append(
                        CompileResult(
                            **base,
                            shared_bytes=0,
                            registers=0,
                            spill_bytes=0,
                            error=(msg[-1] if msg else type(exc).__name__)[:300],
                        )
                    )
    return results


HEADER = ["op", "kernel", "dtype", "config", "sm", "shared B", "regs", "spill B", "stack B", "problems"]
NOTES = (
    "compiled on a CPU-only machine with triton.compile(ASTSource, GPUTarget); registers and static "
    "shared memory from cuobjdump -res-usage, spills and stack from Triton's ptxas -v log; shared = "
    "static + Triton dynamic; 'generic' = as declared, 'aligned' = i32 ints + 16-divisible "
    "pointers/ints (the usual run-time specialisation)"
)


def table_rows(results: list[CompileResult]) -> list[list[str]]:
    """One row of :data:`HEADER` per compilation."""
    return [
        [
            r.op,
            r.kernel,
            r.dtype,
            r.config,
            str(r.capability),
            str(r.shared_bytes),
            str(r.registers),
            str(r.spill_bytes),
            str(r.stack_bytes),
            "; ".join(r.problems) or "ok",
        ]
        for r in results
    ]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", nargs="*", default=list(OPS))
    parser.add_argument("--capabilities", nargs="*", type=int, default=list(CAPABILITIES))
    return parser.parse_args(argv)


def report(results: list[CompileResult]) -> int:
    """Print the table and a count of problems; 1 when any compilation has a problem."""
    rows = table_rows(results)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(HEADER)] if rows else []
    print("  ".join(h.ljust(w) for h, w in zip(HEADER, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    bad = [r for r in results if r.problems]
    print(f"\n{len(results)} compilations, {len(bad)} with problems")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return report(compile_all(args.ops, args.capabilities))


if __name__ == "__main__":
    sys.exit(main())
