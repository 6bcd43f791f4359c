"""fgkernels — fused kernels for fine-grained RLHF.

Four ops, each with a Triton kernel (CUDA), a native C++/OpenMP kernel (CPU, ``csrc/``)
and an eager PyTorch reference living next to the kernel:

* :func:`masked_token_sums` — per-row sums/counts of per-token rewards over valid,
  changed and unchanged tokens.
* :func:`token_bt_loss` — the token-level Bradley–Terry loss (Xu et al. 2024, eqs. 3/4).
* :func:`gae` — generalized advantage estimation as a reversed scan (Schulman et al. 2016).
* :func:`token_logprobs` — per-token log-probabilities (and entropy) without a
  [B, T, V] fp32 log-softmax.

Every op takes ``backend=None | "triton" | "cpu" | "reference"``; see ``_dispatch``.
"""

from fgkernels import _dispatch
from fgkernels.gae import gae, gae_reference, masked_whiten
from fgkernels.masked_token_sums import MaskedTokenSums, masked_token_sums, masked_token_sums_reference
from fgkernels.token_bt_loss import TokenBTLoss, token_bt_loss, token_bt_loss_reference
from fgkernels.token_logprobs import token_logprobs, token_logprobs_reference

OPS = ("masked_token_sums", "token_bt_loss", "gae", "token_logprobs")

__all__ = [
    "OPS",
    "MaskedTokenSums",
    "TokenBTLoss",
    "backend_report",
    "gae",
    "gae_reference",
    "masked_token_sums",
    "masked_token_sums_reference",
    "masked_whiten",
    "token_bt_loss",
    "token_bt_loss_reference",
    "token_logprobs",
    "token_logprobs_reference",
]


def backend_report() -> str:
    """One line per op saying which backends can run here (and why not, when not)."""
    import torch

    lines = []
    for op in OPS:
        cpu = (
            "cpu: native"
            if _dispatch.native_available(op)
            else f"cpu: reference ({_dispatch.native_error(op)})"
        )
        if not _dispatch.TRITON_AVAILABLE:
            tri = "triton: not installed"
        elif torch.cuda.is_available():
            tri = "triton: CUDA"
        else:
            tri = "triton: interpreter only (no CUDA)"
        lines.append(f"{op}: {cpu}; {tri}")
    return "\n".join(lines)
