# `make demo` and `make test` work on a fresh machine: they create .venv and install first.
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build by default; on a GPU machine e.g. `make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m rl train configs/lookup.yaml

test: $(STAMP)
	$(PY) -m pytest -q

# Every benchmark script, one after another (estimated ~10 minutes on 2 idle cores, not yet verified; see benchmarks/README.md).
# Scripts other engineers are still adding run when present.
bench: $(STAMP)
	$(PY) benchmarks/spine.py
	$(PY) benchmarks/workers.py
	$(PY) benchmarks/vs_trl.py
	for b in code_sandbox retrieval reward_lab; do \
		if [ -f benchmarks/$$b.py ]; then $(PY) benchmarks/$$b.py || exit 1; fi; \
	done

clean:
	rm -rf $(VENV) runs
