"""fgkernels: fused kernels for fine-grained RLHF (public API assembled at integration)."""
