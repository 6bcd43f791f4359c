"""Plumbing every trainer shares: the process group and FSDP2 ``parallelize`` (``dist``),
checkpoints (``checkpoint``), configs and run set-up (``config``, ``runtime``) and the one
metrics logger (``metrics``)."""
