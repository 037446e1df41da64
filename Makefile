# Two commands on a fresh machine:  `make demo`  and  `make test`.
# Override the torch pin with e.g.  `make test TORCH=torch==2.4.1`  (any spec pip understands).
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
EXTRAS ?= lab,dev,lightning,hf
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.initlab-installed

.PHONY: setup demo test bench lint mutate clean

# Re-runs only when the project's metadata or the pin changes.
$(STAMP): pyproject.toml Makefile scripts/setup_data.sh
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	echo "$(TORCH)" > $(VENV)/constraints.txt  # the extras may never replace this torch
	$(BIN)/python -m pip install -q -c $(VENV)/constraints.txt -e ".[$(EXTRAS)]"
	bash scripts/setup_data.sh
	echo "$(TORCH)" > $@

setup: $(STAMP)

demo: setup
	$(BIN)/initlab demo

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/gradinit_cost.py

lint: setup
	$(BIN)/ruff check .

# Mutation testing of the tests (not part of `make test`; resumable, results in runs/mutate/).
# `make mutate FILES="methods/lsuv.py"` picks files under src/initlab/.
mutate: setup
	OMP_NUM_THREADS=1 nice -n 10 $(BIN)/python scripts/mutate.py $(FILES)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
