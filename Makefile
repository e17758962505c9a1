# Two entry points: `make demo` (the main job on a small embedded default) and `make test`.
# `make test-min` runs the suite on the oldest versions setup.cfg allows (.venv-min, requirements-min.txt).
# Each creates .venv with the pinned dependencies of requirements.txt when it is missing or stale.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
OUT ?= out

.PHONY: demo test test-min lint bench venv clean

venv: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -d /usr/share/wordnet || { apt-get update -qq && apt-get install -y -qq --no-install-recommends wordnet-base; } \
		|| echo "warning: could not install Debian's wordnet-base (WordNet for the vocabulary): apt-get install wordnet-base" >&2
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/image2vec demo --out $(OUT)/demo $(if $(COCO),--coco $(COCO))

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-min:
	bash .ci/min-versions $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) experiments/bench_omp.py

clean:
	rm -rf $(VENV) .venv-min $(OUT) *.egg-info
