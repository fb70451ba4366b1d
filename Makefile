# Everything runs in a project-local virtualenv; each target creates it on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hubbeam-installed
MODULES_DIR ?= build/modules
export TF_USE_LEGACY_KERAS := 1

.PHONY: venv demo airflow test test-long modules golden bench clean help

help:
	@echo "make demo       build the bundled modules and run the main job end to end"
	@echo "make airflow    airflow standalone (UI on http://localhost:8080) on the demo's AIRFLOW_HOME and data"
	@echo "make test       the test suite (what CI runs)"
	@echo "make test-long  soak and load tests"
	@echo "make modules    build the bundled modules (hubbeam build-module --list) into $(MODULES_DIR)/NAME"
	@echo "make bench      pipeline vs the alternatives (BENCHMARKS.md, bench/results.svg); ROWS=20000, PAIR_ROWS=2000, USE_PRECISION_ROWS=10000 by default"
	@echo "make golden     regenerate the golden vectors (minilm needs PyTorch: installed into .venv-ref)"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml docker/requirements-compose.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==25.3"
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r docker/requirements-compose.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	@touch $@

modules: $(STAMP)
	for name in $$($(BIN)/python -m hubbeam build-module --list); do \
	  $(BIN)/python -m hubbeam build-module $$name --out $(MODULES_DIR)/$$name || exit 1; done

demo: $(STAMP)
	$(BIN)/python -m hubbeam.demo --workdir build/demo --modules-dir $(MODULES_DIR)

DEMO := $(abspath build/demo)
airflow: $(STAMP)
	test -f $(DEMO)/airflow/airflow.db || $(MAKE) demo
	AIRFLOW_HOME=$(DEMO)/airflow AIRFLOW__CORE__DAGS_FOLDER=$(abspath dags) AIRFLOW__CORE__LOAD_EXAMPLES=False \
	HUBBEAM_DATA_ROOT=$(DEMO)/data HUBBEAM_CACHE_DIR=$(DEMO)/cache HUBBEAM_EMBED_MODULE=$(abspath $(MODULES_DIR))/minilm \
	AIRFLOW_CONN_HUBBEAM_CORPUS_DB='{"conn_type": "sqlite", "host": "$(DEMO)/data/corpus.db"}' \
	$(BIN)/airflow standalone

test: $(STAMP)
	bash .ci/ensure-chromium
	bash .ci/ensure-postgresql
	$(BIN)/python -m pytest -m "not long" --durations=30 tests

test-long: $(STAMP)
	$(BIN)/python -m pytest -m long --durations=10 tests; rc=$$?; [ $$rc -eq 5 ] && echo "no long tests selected" || exit $$rc

ROWS ?= 20000
SCALE_ROWS ?= 2000
PAIR_ROWS ?= 2000
# use-multilingual runs 2,000 short rows in ~1.5 s, where the job's fixed cost would decide its precision ratios
USE_PRECISION_ROWS ?= 10000
INDEX_ROWS ?= 1000000
IMAGES ?= 2000 5000
REPEAT ?= 3
bench: $(STAMP) .venv-ref/.installed
	$(BIN)/python -c "from pathlib import Path; from hubbeam.demo import build_missing; build_missing(Path('$(MODULES_DIR)'))"
	$(BIN)/python bench/embed_bench.py --suite text --rows $(ROWS) --module $(MODULES_DIR)/minilm
	$(BIN)/python bench/embed_bench.py --suite text --rows $(ROWS) --module $(MODULES_DIR)/use-multilingual
	for n in $(IMAGES); do $(BIN)/python bench/embed_bench.py --suite images --images $$n --repeat $(REPEAT) --module $(MODULES_DIR)/digits || exit 1; done
	$(BIN)/python bench/embed_bench.py --suite scaling --scale-rows $(SCALE_ROWS) --module $(MODULES_DIR)/minilm
	$(BIN)/python bench/embed_bench.py --suite pair --rows $(PAIR_ROWS) \
	  --preprocessor $(MODULES_DIR)/minilm-preprocess --module $(MODULES_DIR)/minilm-encoder
	$(BIN)/python bench/embed_bench.py --suite precision --rows $(PAIR_ROWS) --repeat $(REPEAT) --module $(MODULES_DIR)/minilm
	$(BIN)/python bench/embed_bench.py --suite precision --rows $(USE_PRECISION_ROWS) --repeat $(REPEAT) --module $(MODULES_DIR)/use-multilingual
	$(BIN)/python bench/index_bench.py --rows $(INDEX_ROWS) --queries 300 --libs exact faiss-ivf
	.venv-ref/bin/python bench/plot.py build/bench/results.json bench/results.svg

clean:
	rm -rf build .pytest_cache

# Reference embeddings for the minilm fidelity test (needs PyTorch; tests never do).
.venv-ref/.installed: bench/requirements-ref.txt
	test -x .venv-ref/bin/python || $(PYTHON) -m venv .venv-ref
	.venv-ref/bin/python -m pip install -q -r bench/requirements-ref.txt
	@touch $@

golden: .venv-ref/.installed $(STAMP)
	HF_HUB_OFFLINE=1 .venv-ref/bin/python tests/fixtures/make_minilm_golden.py
	$(BIN)/python tests/fixtures/make_use_golden.py
