# The two commands a newcomer needs: `make demo` and `make test`.
# Each creates .venv and installs mfvan into it when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Where a CPU build of torch lies on disk (as on our dev and CI machines), install it
# first so pip does not fetch a several-GB CUDA build to satisfy `torch>=2.3`.
LOCAL_TORCH := $(firstword $(wildcard /opt/wheels/torch-*+cpu-*.whl))
DEMO_DIR ?= .demo

.PHONY: demo test test-fast lint bench bench-data reproduce gpu-check gpu-wheels clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(if $(LOCAL_TORCH),$(BIN)/python -m pip install "$(LOCAL_TORCH)")
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

WEIGHTS := deploy/weights/mfvan-demo-synthme.safetensors

demo: $(STAMP)
	$(BIN)/mfvan warm-up
	$(BIN)/mfvan demo --seconds 60
	@echo "The weights are SynthME-trained (synthetic faces): not for real faces."

test: $(STAMP) lint
	$(BIN)/python -m pytest

# the inner loop: everything but the slow tests and those that start real servers
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow and not rtsp and not prometheus and not gpu and not netns and not browser" -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# the benchmarks of docs/benchmarks.md that run on a CPU (each names its machine and
# compares with a reference run side by side; speed is measured here, never asserted)
bench: $(STAMP)
	$(BIN)/mfvan bench spotter
	$(BIN)/mfvan bench flow
	$(BIN)/mfvan bench model --config motion
	$(BIN)/mfvan bench backends
	$(BIN)/mfvan bench pipeline

# SynthME standard, timed (the README's generation row)
bench-data: $(STAMP)
	$(BIN)/mfvan synth --config standard --out $(DEMO_DIR)/synthme-standard

# LOSO of MFVAN (with and without the motion input), its ablations and the baselines on
# SynthME standard; writes docs/results.md and the shipped weights (several hours on 2
# cores; resumable). With runs/spotting/matrix (`mfvan spot-eval --sweep`) its realistic
# tuning cells also train the weights and its held-out cells are scored for STRS.
reproduce: $(STAMP)
	$(BIN)/mfvan reproduce --data data/synthme-standard --out runs/reproduce --docs docs/results.md \
		--weights $(WEIGHTS)

# the GPU figures (docs/benchmarks.md, "GPU"), on a machine with a GPU and its own Python:
# no venv there (`PYTHON=.venv/bin/python GPU_CHECK_ARGS=--cpu` for a dry run here)
gpu-check:
	PYTHON=$(PYTHON) bash deploy/ops/gpu-check.sh $(GPU_CHECK_ARGS)

# what the GPU machine's Python lacks of what gpu-check imports, as wheels for it (carried),
# and mfvan's own wheel (used there if building from the source cannot be done offline)
gpu-wheels: $(STAMP)
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
		-d .whl "pyzmq>=26"
	$(BIN)/python -m pip wheel -q --no-deps -w .whl .

clean:
	rm -rf $(VENV) $(DEMO_DIR) build dist *.egg-info
