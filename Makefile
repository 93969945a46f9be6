# One-command set-up: every target below creates .venv and installs the pinned stack first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: test lint typecheck bench bench-train bench-recovery bench-quality bench-profile gpu-check pretrain lock clean

test: lint  ## lint, format and type checks, then the whole test suite (multi-process tests included)
	$(BIN)/python -m pytest

lint: $(STAMP)  ## ruff (lint and format), then mypy
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

typecheck: $(STAMP)  ## mypy on the packages listed under [tool.mypy] files in pyproject.toml
	$(BIN)/python -m mypy

bench: $(STAMP)  ## SIGReg speed and memory against the textbook implementation
	$(BIN)/python benchmarks/sigreg.py

bench-train: $(STAMP)  ## step time of the same loop under Ray Train and torchrun (ratio)
	$(BIN)/python benchmarks/train_step.py

bench-recovery: $(STAMP)  ## SIGKILL a training worker 3 times in one run: recovery time, steps recomputed per kill
	$(BIN)/python benchmarks/recovery.py

bench-quality: $(STAMP)  ## the quickstart over 3 seeds: held-out probes vs random init and raw pixels
	$(BIN)/python benchmarks/quality.py --seeds 0 1 2

bench-profile: $(STAMP)  ## where one quickstart training step's time goes
	$(BIN)/python benchmarks/step_profile.py

gpu-check: $(STAMP)  ## the GPU path measured in at most 8 minutes on one GPU (docs/scaling.md)
	$(BIN)/python benchmarks/gpu_check.py

pretrain: $(STAMP)  ## the embedded default: CPU pretraining on digits, then the probes
	$(BIN)/lejepa-ray pretrain

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
	touch $(STAMP)

lock: $(STAMP)  ## rewrite constraints.txt from what .venv resolved
	{ sed -n '1,3p' constraints.txt; $(BIN)/python -m pip freeze --exclude-editable \
	  | grep -v -i -e '^pip==' -e '^setuptools==' -e '^lejepa-ray'; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
