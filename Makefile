# Every target sets itself up: a virtualenv in .venv with the pinned dependencies.
#   make quickstart   a real CycleGAN search on builtin data (CPU, minutes)
#   make test         the test suite (CPU, tiny sizes)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install quickstart test test-fast benchmarks clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

quickstart: install
	$(PY) experiments/tune.py --space search_spaces/quickstart.yaml

test: install
	$(PY) -m pytest tests -ra

test-fast: install
	$(PY) -m pytest tests -ra -m "not slow"

benchmarks: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
