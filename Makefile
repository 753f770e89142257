# The two commands of the README. Both create .venv and install requirements.txt on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-requirements

.PHONY: run test bench train clean-venv

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@cp requirements.txt $(STAMP)

# Ray (requirements-cluster.txt) is optional: `make test` installs it for the local-Ray batch test;
# `make run` never needs it.
CLUSTER_STAMP := $(VENV)/.installed-cluster-requirements

$(CLUSTER_STAMP): requirements-cluster.txt $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-cluster.txt
	@cp requirements-cluster.txt $(CLUSTER_STAMP)

# Analysis jobs run in worker processes beside the app: one per GPU (each holds its own), else one;
# WORKERS=N (or WORKBENCH_WORKERS) to choose, e.g. a few on a many-core CPU.
# The pool stops with the app: Ctrl-C stops both (running jobs go back to the queue).
WORKERS ?=

# On first use the demo case is created and analysed once by the reference detector (as "workbench demo setup"),
# so the app opens on results; later runs find it analysed and skip it.
run: $(STAMP)
	$(PY) -m workbench demo --if-missing --analyse --out var/demo/demo.mp4
	$(PY) -m workbench worker $(if $(WORKERS),--workers $(WORKERS)) & pool=$$!; \
	trap 'kill -INT $$pool 2>/dev/null; wait $$pool' EXIT INT TERM; \
	$(PY) -m streamlit run workbench/ui/server.py

test: $(STAMP) $(CLUSTER_STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m tools.bench

clean-venv:
	rm -rf $(VENV)

# Retrain the reference detector (needs ../shared/data). Face extraction takes about 2 minutes on
# first use; 6 epochs on 597 faces took 27 minutes (1,636 s) on this shared, busy 2-core machine.
train: $(STAMP)
	$(PY) -m pip install --quiet --no-deps -r requirements-train.txt
	$(PY) -m tools.training.train
	$(PY) -m tools.training.evaluate
