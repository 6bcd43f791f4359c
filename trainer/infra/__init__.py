"""Plumbing every trainer shares: the process group and FSDP2 ``parallelize`` (``dist``),
checkpoints (``checkpoint``), configs and run set-up (``config``, ``runtime``), the one metrics
logger (``metrics``) and its trackers (``trackers``), the dry run and memory plan (``dryrun``),
outputs written atomically or owned (``outputs``, ``appendlog``), the end-of-run summary
(``summary``) and the Claude client (``claude``)."""
