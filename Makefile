# The two commands a newcomer needs: `make repro` (the pipeline) and `make test` (the test suite).
# Both create .venv if missing and install the pinned requirements first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export DVC_NO_ANALYTICS := 1
# dvc.yaml's stage commands say `python`: it must be the venv's, without the user activating anything.
export PATH := $(abspath $(BIN)):$(PATH)
export PYTHONUNBUFFERED := 1

.PHONY: repro test compare examples gpu-check venv clean

# TORCH_INDEX picks the PyTorch build (README "Install"): https://download.pytorch.org/whl/cpu for the CPU-only
# wheel (no CUDA packages can come with it), .../whl/cuNNN for a CUDA one; unset, pip's configured index decides.
TORCH_INDEX ?=

# CUDA=1 adds TensorFlow's CUDA libraries (requirements-cuda.txt). Unset, it is 1 where the NVIDIA driver lists a
# GPU (nvidia-smi -L, given 20 s so that a hung driver cannot hang make): the driver through which `device: auto`
# picks the GPU (NVML) for every framework, so each of them finds it. CUDA=0 leaves them out. Each choice has its
# own stamp: the first CUDA=1 run installs them.
CUDA ?= $(if $(shell timeout 20 nvidia-smi -L 2>/dev/null | grep '^GPU '),1,0)
REQS := requirements.txt $(if $(filter 1,$(CUDA)),requirements-cuda.txt)

venv: $(VENV)/.installed$(if $(filter 1,$(CUDA)),-cuda)

$(VENV)/.installed $(VENV)/.installed-cuda: $(REQS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check \
		$(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) $(addprefix -r ,$(REQS))
	touch $@

repro: venv
	$(BIN)/dvc repro

# Compare DVC experiments (README "Comparing experiments"): EXPS="a b" BASELINE=a, or all of this commit's.
compare: venv
	$(BIN)/python -m pipeline.report.compare $(EXPS) $(if $(BASELINE),--baseline $(BASELINE))

# The committed example reports (reports/examples.yaml), each made again from HEAD and stamped; EXAMPLES="mnist5k"
# makes one. `python -m pipeline.report.examples --mark` only marks those older than the code.
EXAMPLES ?=
examples: venv
	$(BIN)/python -m pipeline.report.examples $(EXAMPLES)

# One GPU's figures in minutes (README "On a GPU"): the train stages, then a fresh bench child per precision and
# batch size. GPU_CHECK="--batch-sizes 512 --precisions bf16" narrows it; GPU_CHECK=--cpu is a dry run without one.
GPU_CHECK ?=
gpu-check: venv
	$(BIN)/dvc repro prepare
	$(BIN)/python -m pipeline.measure.gpucheck $(GPU_CHECK)

# pytest exits 5 when it collects no test: that is a failure here, not a pass. Two worker processes (pytest-xdist):
# the two end-to-end pipeline runs take most of the time and overlap the rest; worksteal rebalances what is left.
test: venv
	$(BIN)/python -m pytest -q -n 2 --dist worksteal tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; exit $$rc

clean:
	rm -rf $(VENV)
