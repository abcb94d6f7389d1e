# Two commands a new user needs: `make run` and `make test`. Each creates .venv when missing and
# installs everything first. torch comes first, pinned to the CPU build this machine keeps on disk
# (TORCH_SPEC overrides it elsewhere); sentence-transformers then finds it installed.
PYTHON     ?= python3.11
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
SAMPLE     ?= sample/events.jsonl
SAMPLE_N   ?= 10000
OUT        ?= out
PY          = $(VENV)/bin/python
STAMP       = $(VENV)/.installed

export HF_HUB_OFFLINE = 1

.PHONY: install run cluster-demo test lint format fuzz crash-loop bench-embeddings bench-portable bench-moderation bench-stream bench-stream-latency bench-report train-moderation clean

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

# The sample through a Beam job service and a worker pool in processes of their own (the pool in its
# own network namespace where the machine allows it), as on a cluster; both stop when the run ends.
CLUSTER_OUT ?= out-cluster
cluster-demo: $(STAMP) $(SAMPLE)
	$(PY) -m connectors.beam_services -- --input $(SAMPLE) --out $(CLUSTER_OUT)
	@echo "Outputs are in $(CLUSTER_OUT)/ (Parquet datasets, audit.sqlite, _runs/); the services' logs are where the first line says."

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/pytest -n 2 --dist worksteal --durations=10

# Outside `make test`: 10^5 generated hostile records through the first stage (FUZZ_SEED varies it).
FUZZ_CASES ?= 100000
FUZZ_SEED  ?= 0
fuzz: $(STAMP)
	$(PY) tests/fuzz_first_stage.py --cases $(FUZZ_CASES) --seed $(FUZZ_SEED)

# Outside `make test`: the kill -9 loop on a larger input (each kill point, then a rerun), and the
# stream job killed STREAM_KILLS times at random before it finishes (make test kills it once).
CRASH_EVENTS ?= 200000
STREAM_KILLS ?= 4
crash-loop: $(STAMP)
	AIEP_CRASH_EVENTS=$(CRASH_EVENTS) AIEP_STREAM_KILLS=$(STREAM_KILLS) $(VENV)/bin/pytest -n 2 \
		tests/test_kill_loop.py tests/test_stream.py::test_killed_at_random_the_stream_loses_and_doubles_nothing

# Outside `make test`: the pipeline with embeddings on beside a raw encode of the same texts and
# Beam's MLTransform, on BENCH_EVENTS events (benchmarks/embedding_throughput.py; prints, never asserts).
BENCH_EVENTS ?= 1500
bench-embeddings: $(STAMP)
	$(PY) benchmarks/embedding_throughput.py --events $(BENCH_EVENTS)

# Text moderation against its peer (alt-profanity-check) on the Davidson dev split: quality and
# texts/s (model, model and rules, with MiniLM), then images/s of image moderation, in one run.
bench-moderation: $(STAMP)
	$(PY) benchmarks/moderation_peer.py

# The stream job from Redis into MariaDB and Parquet beside Beam's file path on the same events, models
# off (STREAM_EVENTS) and embeddings on (STREAM_MODEL_EVENTS); then XADD-to-commit latency at 200 events/s.
STREAM_EVENTS       ?= 20000
STREAM_MODEL_EVENTS ?= 2000
bench-stream: $(STAMP)
	$(PY) benchmarks/stream_throughput.py --events $(STREAM_EVENTS) --model-events $(STREAM_MODEL_EVENTS)

bench-stream-latency: $(STAMP)
	$(PY) benchmarks/stream_latency.py --rate 200 --seconds 60

# `report` over REPORT_EVENTS generated events (written once under bench-data/) beside a bare DuckDB
# count(*) and a one-column scan of the same files, alternating three times in one run.
REPORT_EVENTS ?= 10000000
bench-report: $(STAMP)
	$(PY) benchmarks/report_speed.py --events $(REPORT_EVENTS)

# The spine (models off) through a Beam job service with 2 SDK workers beside the DirectRunner in one
# process, on one PORTABLE_EVENTS-event file, in one run (benchmarks/portable_throughput.py).
PORTABLE_EVENTS ?= 1000000
bench-portable: $(STAMP)
	$(PY) benchmarks/portable_throughput.py --events $(PORTABLE_EVENTS)

# Retrain the text moderation model (models/moderation/; byte-identical on a rerun, ~3 min).
train-moderation: $(STAMP)
	$(PY) models/train_moderation.py

clean:
	rm -rf $(VENV) $(OUT) $(CLUSTER_OUT) sample .pytest_cache .mypy_cache .ruff_cache .hypothesis
