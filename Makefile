# Two entry points do all setup on a fresh machine: `make serve` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000
# Test workers: two keep both cores of the CI machine busy while other tests wait on servers and subprocesses.
# Each worker takes whole test files, so a file's servers and fixtures are started once; in the order pytest collects
# them (--no-loadscope-reorder): xdist's default order, most tests first, left the files of one or two long tests
# (test_load, the node beside Orthanc, resume) to the end, where one worker ran them while the other had finished.
TEST_WORKERS ?= 2

.PHONY: install install-dev serve test lint examples image-test bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Runtime only: what the service needs to run on the committed models.
$(VENV)/.installed-runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

# Runtime plus training extras and test tools.
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[train,dev,onnx]"
	touch $@ $(VENV)/.installed-runtime

install: $(VENV)/.installed-runtime
install-dev: $(VENV)/.installed-dev

serve: install
	HOST=$(HOST) PORT=$(PORT) $(BIN)/brain-tumor serve

test: install-dev
	$(BIN)/ruff check app training tests bench deploy
	$(BIN)/python -m pytest --numprocesses $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations 20

lint: install-dev
	$(BIN)/ruff check app training tests bench deploy

# The files the README's examples name (examples/slice.png, examples/IM0001.dcm, examples/study/*.dcm ...), made from
# the committed test slices: the repository ships none of them. tests/ needs the dev extras.
examples: install-dev
	$(BIN)/python -m tests.example_files examples

# Builds both images (TensorFlow, EXTRAS=onnx) with podman and runs them as Compose's `api` service would; needs root,
# podman and debootstrap (.ci/install-system-packages.sh). Minutes, not seconds: .ci/run runs it after `make test`.
image-test: install-dev
	$(BIN)/python deploy/image_test.py

# Benchmarks (not tests): the models' ceiling, the service and a naive server under load; see bench/README.md.
bench: install-dev
	$(BIN)/pip install --quiet -e ".[bench]"
	$(BIN)/python -m bench.compare --model-dir models
