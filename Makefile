# fgrlhf — set-up and everyday commands. `make run` and `make test` each install what they
# need into .venv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, so the project's range (>=2.13,<2.15) is already met and pip pulls no other
# build. On a CUDA machine override it, e.g. TORCH_SPEC="torch==2.13.0 --index-url ...".
TORCH_SPEC ?= torch==2.13.0

.PHONY: install run demo test test-fast browser bench bench-quick lint format build clean

$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=77" wheel ninja
	$(PY) -m pip install -q $(TORCH_SPEC)
	# --no-build-isolation: compile csrc/ against the torch just installed. [track]: TensorBoard,
	# W&B and MLflow, which tests/test_trackers.py runs for real (none of them pulls another torch).
	$(PY) -m pip install -q --no-build-isolation -e ".[dev,track]"
	$(PY) -c "import fgkernels; print(fgkernels.backend_report())"
	touch $@

install: $(VENV)/.installed

## The main job on its embedded default: the tiny CPU run of the real pipeline — token-level
## PPO over FSDP2 (2 processes) with a token-level RM it first trains on a generated
## fine-grained set; outputs in runs/ppo.
NPROC ?= 2
run: install
	$(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) trainer/ppo.py

## The simulated-preference study (the paper's three tables; 12.5-14 min on 2 cores, resumable):
## SFT, reward models over an annotator-agreement sweep, the PPO arms and FIGA, 3 seeds;
## tables in runs/demo/demo.md. `make demo DEMO_ARGS=--quick` for the 1.3 min version.
DEMO_ARGS ?=
demo: install
	$(VENV)/bin/fgrlhf demo $(DEMO_ARGS)

## Kernel benchmarks on small shapes (a smoke run; nothing recorded).
bench-quick: install
	$(PY) bench/run_all.py --quick

## The test suite (CI runs exactly this). pytest's exit 5 (no tests collected) fails too.
test: install
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=15; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

## Everyday tests: everything but the tests marked slow (multi-process runs, whole pipelines).
test-fast: install
	$(PY) -m pytest -q -m "not slow"

## Debian's chromium + chromedriver for the HTML report's browser test (as root; CI runs it).
browser:
	command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver)

## Full-size benchmarks; appends to bench/RESULTS.md.
bench: install
	$(PY) bench/run_all.py --record

## Rebuild the native kernels after editing csrc/ (only changed files recompile).
build: install
	$(PY) setup.py -q build_ext --inplace

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

clean:
	rm -rf build fgkernels/_C_*.so .pytest_cache .ruff_cache
