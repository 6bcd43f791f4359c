"""The PPO loop's small levers, one at a time, on the long setting of ``bench/ppo_vs_trl.py``
(a random LLaMA: vocab 512, hidden 64, 2 layers; 64 rows, 16-token prompts, 256 new tokens)::

    python bench/bench_rollout.py [--repeats 4] [--record]

* sampling one token per row: ``torch.multinomial`` vs the inverse-CDF sampler of
  ``trainer.rollout.sample_next`` (same distribution, tests/test_ppo.py);
* a 256-step decode through the model's forward: transformers' ``DynamicCache`` (concatenates)
  vs ``trainer.rollout.preallocated_cache`` (writes in place);
* a 256-step decode: the model's forward per step vs the written-out step of
  ``trainer.decode`` (the default for LLaMA-family models; equal tokens, tests/test_decode.py);
* the model-forward decode of an FSDP2-wrapped model (one rank, gloo) inside
  ``trainer.rollout.unsharded`` with FSDP2's forward hooks kept vs taken off (the default; the
  written-out step calls no module, so no hook);
* one AdamW step over the FSDP2 (DTensor) parameters: single-tensor vs foreach vs fused.

Each pair is timed alternately in one process (``--repeats`` rounds, the median reported).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench.common import record  # noqa: E402

B, P, R = 64, 16, 256


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
        intermediate_size=256, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _median_ms(fns: dict, repeats: int, inner: int = 1) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for f in fns.values():
        f()  # warm-up
    for _ in range(repeats):
        for k, f in fns.items():
            t = time.perf_counter()
            for _ in range(inner):
                f()
            times[k].append((time.perf_counter() - t) / inner * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from transformers import DynamicCache

    import trainer.rollout as ro

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--record", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []

    probs = torch.softmax(torch.randn(B, 512), -1)
    logits = probs.log()
    t = _median_ms(
        {"multinomial": lambda: torch.multinomial(probs, 1), "inverse CDF": lambda: ro.sample_next(logits)},
        args.repeats, inner=200,
    )  # fmt: skip
    rows.append(["sample one token, 64 x 512", f"{t['multinomial']:.3f}", f"{t['inverse CDF']:.3f}"])

    model = _model()
    ids, mask = torch.randint(3, 512, (B, P)), torch.ones(B, P, dtype=torch.bool)
    pre = ro.preallocated_cache

    def decode(cache_fn, decoder="transformers"):
        def f():
            ro.preallocated_cache = cache_fn
            try:
                ro.generate(model, ids, mask, R, None, 0, return_logprobs=True, decoder=decoder)
            finally:
                ro.preallocated_cache = pre

        return f

    t = _median_ms({"dyn": decode(lambda n, c: DynamicCache()), "pre": decode(pre)}, args.repeats)
    rows.append(["decode 256 steps: DynamicCache vs preallocated", f"{t['dyn']:.0f}", f"{t['pre']:.0f}"])
    t = _median_ms({"hf": decode(pre), "ours": decode(pre, "auto")}, args.repeats)
    rows.append(["decode 256 steps: model forward vs written-out step", f"{t['hf']:.0f}", f"{t['ours']:.0f}"])

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", WORLD_SIZE="1")
    dist.init_process_group("gloo")
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    hooks_off = ro._fsdp_hooks_off

    def fsdp_decode(off: bool):
        def f():
            ro._fsdp_hooks_off = hooks_off if off else (lambda mods: [])
            try:
                with ro.unsharded(model):
                    ro.generate(model, ids, mask, R, None, 0, return_logprobs=True, decoder="transformers")
            finally:
                ro._fsdp_hooks_off = hooks_off

        return f

    t = _median_ms({"on": fsdp_decode(False), "off": fsdp_decode(True)}, args.repeats)
    rows.append(["FSDP2 decode 256 steps: hooks kept vs off", f"{t['on']:.0f}", f"{t['off']:.0f}"])

    for p in model.parameters():
        p.grad = torch.randn_like(p)
    kinds = {"single": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
    opts = {k: torch.optim.AdamW(model.parameters(), lr=1e-3, **kw) for k, kw in kinds.items()}
    t = _median_ms({k: o.step for k, o in opts.items()}, args.repeats, inner=20)
    for k in ("fused", "foreach"):
        rows.append([f"AdamW step, DTensor params: single vs {k}", f"{t['single']:.2f}", f"{t[k]:.2f}"])
    dist.destroy_process_group()

    header = ["lever", "before (ms)", "after (ms)"]
    print("| " + " | ".join(header) + " |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.record:
        record(
            "PPO loop levers, one at a time (bench/bench_rollout.py)",
            header,
            rows,
            notes=f"random LLaMA vocab 512, h 64, 2 layers; {B} rows, {P}-token prompts, {R} new tokens; "
            f"{torch.get_num_threads()} threads; median of {args.repeats} alternating rounds",
        )


if __name__ == "__main__":
    main()
