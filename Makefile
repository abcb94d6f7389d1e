# Two commands a new user needs: `make run` and `make test`. Each creates .venv when missing and
# installs everything first. torch comes first, pinned to the CPU build this machine keeps on disk
# (TORCH_SPEC overrides it elsewhere); sentence-transformers then finds it installed.
PYTHON     ?= python3.11
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
SAMPLE     ?= sample/events.jsonl
SAMPLE_N   ?= 50000
OUT        ?= out
PY          = $(VENV)/bin/python
STAMP       = $(VENV)/.installed

export HF_HUB_OFFLINE = 1

.PHONY: install run test lint format clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

$(SAMPLE): | $(STAMP)
	$(PY) runner.py generate --events $(SAMPLE_N) --out $(SAMPLE) --images --seed 7

run: $(STAMP) $(SAMPLE)
	$(PY) runner.py run --input $(SAMPLE) --out $(OUT)
	@echo "Outputs are in $(OUT)/ (Parquet datasets, audit.sqlite, _runs/). Query them: see README.md."

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -n 2 --durations=10

clean:
	rm -rf $(VENV) $(OUT) sample .pytest_cache .mypy_cache .ruff_cache .hypothesis
