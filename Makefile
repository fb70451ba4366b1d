# Everything runs in a project-local virtualenv; each target creates it on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hubbeam-installed
MODULES_DIR ?= build/modules
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv demo test test-long modules clean help

help:
	@echo "make demo       build the bundled modules and run the main job end to end"
	@echo "make test       the test suite (what CI runs)"
	@echo "make test-long  soak and load tests"
	@echo "make modules    build minilm, digits and wordvec into $(MODULES_DIR)/"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip==25.3"
	$(BIN)/python -m pip install -q -r requirements.txt
	$(BIN)/python -m pip install -q --no-deps -r requirements-nodeps.txt
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e .
	@touch $@

modules: $(STAMP)
	$(BIN)/python -m hubbeam build-module minilm --out $(MODULES_DIR)/minilm
	$(BIN)/python -m hubbeam build-module digits --out $(MODULES_DIR)/digits
	$(BIN)/python -m hubbeam build-module wordvec --out $(MODULES_DIR)/wordvec

demo: $(STAMP)
	$(BIN)/python -m hubbeam.demo --workdir build/demo --modules-dir $(MODULES_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest -m "not long" tests

test-long: $(STAMP)
	$(BIN)/python -m pytest -m long tests

clean:
	rm -rf build .pytest_cache
