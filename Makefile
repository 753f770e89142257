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

run: $(STAMP)
	$(PY) -m workbench demo --if-missing --out var/demo/demo.mp4
	$(PY) -m streamlit run workbench/ui/server.py

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) -m tools.bench

clean-venv:
	rm -rf $(VENV)

# Retrain an SBI detector (needs ../shared/data): ARCH=mobilenetv2 (sbi-mobilenetv2) or
# ARCH=efficientnet-lite0 (sbi-efficientnet-lite0). Face extraction takes about 2 minutes on first
# use; training 6 epochs on 597 faces about 7 minutes on 2 idle CPU cores (much longer when shared).
ARCH ?= mobilenetv2
train: $(STAMP)
	$(PY) -m pip install --quiet --no-deps -r requirements-train.txt
	$(PY) -m tools.training.train --arch $(ARCH)
	$(PY) -m tools.training.evaluate --arch $(ARCH)
