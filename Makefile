# merge-models: `make demo` sets everything up and merges the samples; `make test` runs the tests.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install demo demo-images test lint bench stack-experiment samples fixtures dist clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-9s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP) ## create/refresh the virtualenv in .venv with the package and its test tools

demo: install ## merge the two sample models, verify, score them on held-out rows, run the merged model
	$(BIN)/merge-models merge --map samples/features.toml --out build/merged.onnx --data samples/rows.csv --keep-outputs
	$(BIN)/python samples/predict.py build/merged.onnx samples/rows.csv

demo-images: install ## merge two digit CNNs (whole image input) and a tabular model, run it on held-out images
	@mkdir -p build
	$(BIN)/merge-models merge --map samples/images/images.toml --out build/images.onnx --keep-outputs
	$(BIN)/python samples/images/predict.py build/images.onnx samples/images/rows.npz

test: install ## run the whole test suite
	$(BIN)/python -m pytest

lint: install ## ruff and mypy
	$(BIN)/ruff check merge_cli tests samples benchmarks
	$(BIN)/mypy

bench: install ## measure merge time, memory, inference and start-up against their targets (a few minutes)
	$(BIN)/python benchmarks/run_all.py

stack-experiment: install ## stack against the best part, sklearn's stacking and a retrained model (issue 15; minutes)
	$(BIN)/python benchmarks/stack_experiment.py

samples: install ## regenerate the sample models (needs only the test extra)
	$(BIN)/python samples/make_samples.py

fixtures: install ## regenerate tests/fixtures from skl2onnx and onnxmltools (torch ones: see docs/architecture.md)
	$(BIN)/python tests/make_fixtures.py

dist: install ## build the wheel into dist/ (pip install dist/merge_models-*.whl elsewhere)
	rm -f dist/merge_models-*.whl
	$(BIN)/python -m pip wheel --quiet --no-deps --wheel-dir dist .

clean: ## remove the virtualenv and build outputs
	rm -rf $(VENV) build dist .pytest_cache .mypy_cache .ruff_cache
