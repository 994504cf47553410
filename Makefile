# Every target sets itself up: a virtualenv in .venv with the pinned dependencies.
#   make quickstart   a real WGAN-GP search on builtin data (racing seeds), then its pick checked on held-out seeds (CPU, ~9 min)
#   make test         the test suite (CPU, tiny sizes)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: install quickstart test test-fast benchmarks mutation clean

install: $(VENV)/.installed

# rfc3987-syntax (jupyter-events asks for jsonschema[format-nongpl]) builds ~35 Earley parsers when
# jsonschema is imported, and every Ray process imports jsonschema: 1.2 s more per process here, a
# smoke search 25 s instead of 15 (benchmarks/RESULTS.md). Nothing here validates IRIs; without
# it jsonschema skips that one format check.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	$(PY) -m pip uninstall --quiet --yes rfc3987-syntax
	touch $@

quickstart: install
	$(PY) experiments/tune.py --space search_spaces/quickstart.yaml
	$(PY) experiments/confirm.py runs/quickstart --holdout --seeds 3

# The whole suite (what CI runs), with the 25 slowest tests listed at the end. PAINTSWEEP_THREADS=2
# runs every trial at 2 threads: another floating-point summation order, as another CPU would.
# Two pytest workers: the Ray searches in one, every other test beside them in the other
# (tests/conftest.py defines the scope: which is which, and why).
test: install
	$(PY) -m pytest tests -ra --durations=25 -n 2 --dist loadscope

# The edit-test loop: everything not marked slow (one real search included).
test-fast: install
	$(PY) -m pytest tests -ra -m "not slow" --durations=10

# Mutation testing (mutmut 2.5; not part of `make test`). mutmut_config.py holds the scope (which
# functions of which files are mutated) and the fast tests each file's mutants run. The default,
# the GAN losses + the reported scores + what the search builds and plans (about 200 tested mutants),
# takes about 40 min on 2 idle cores (without core/plan.py: 158 mutants, 29.5 min); the families' loss code and the trial loop are the other parts:
#   make mutation MUTATION_FILES=core/models/cyclegan.py,core/models/wgan_gp.py,core/models/vae.py   (~160, ~30 min)
#   make mutation MUTATION_FILES=core/trainable.py                                                     (~200, ~1.5 h)
# Results stay in .mutmut-cache: `mutmut results`, `mutmut show ID`.
MUTATION_FILES ?= core/models/losses.py,core/metrics.py,core/search.py,core/plan.py
mutation: install
	MUTATION_PYTHON=$(abspath $(PY)) $(VENV)/bin/mutmut run --paths-to-mutate "$(MUTATION_FILES)" \
		--runner "$(PY) -m pytest -x -q -p no:cacheprovider -m 'not slow' tests/test_losses.py tests/test_metrics.py" \
		--no-progress --simple-output; \
	$(VENV)/bin/mutmut results

benchmarks: install
	for b in benchmarks/bench_*.py; do [ $$b = benchmarks/bench_gpu.py ] && continue; echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs
