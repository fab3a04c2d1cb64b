# The two commands the README promises: `make demo` (the main job: `xopd-eval gap` on the embedded default)
# and `make test`. Both set up what is missing.
VENV ?= .venv
export XOPD_HOME ?= $(CURDIR)/.xopd-home
export VLLM_CPU_OMP_THREADS_BIND ?= 0-1
export VLLM_CPU_NUM_OF_RESERVED_CPU ?= 0
export VLLM_CPU_KVCACHE_SPACE ?= 1

.PHONY: setup demo test test-fast reproduce-world
setup:
	@VENV=$(VENV) bash scripts/setup.sh

demo: setup
	$(VENV)/bin/xopd-eval gap --output artifacts/gap

test: setup
	HF_HUB_OFFLINE=1 XOPD_OFFLINE=1 $(VENV)/bin/python -m pytest -q

test-fast: setup
	HF_HUB_OFFLINE=1 XOPD_OFFLINE=1 $(VENV)/bin/python -m pytest -q -m "not slow"

# Rebuild the demo world (teacher tuning, alignment, packing, measurement) from scratch; resumable; hours of CPU.
reproduce-world: setup
	VENV=$(VENV) bash scripts/reproduce_world.sh
