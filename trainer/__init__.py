"""fgrlhf trainer: data, models, RLHF math and entry points (work in progress)."""
