# Two entry points on a fresh machine: `make demo` (set up, then the CPU demo) and `make test` (set up, then pytest);
# `make compare` trains every method side by side on the demo (README "Every method on the demo").
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo compare test

setup: $(STAMP)

# torch first (basicsr's build imports it), then basicsr without build isolation, then the rest. The project runs
# from this folder (python -m ..., train.py); `pip install .` would add the kd-train/kd-test console scripts.
$(STAMP): requirements.txt setup.py Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet --no-build-isolation basicsr==1.4.2
	$(PY) -m pip install --quiet -r requirements.txt pytest pytest-xdist PyWavelets piq  # the last two: test oracles only
	touch $(STAMP)

demo: setup
	$(PY) -m basicsr_kd.demo

# every method side by side on the demo (about an hour on 2 cores; not part of `make test`, which runs it shrunk)
compare: setup
	$(PY) -m basicsr_kd.demo_compare

# two pytest workers: most tests run one single-threaded process (a train.py run, a model step), so the suite takes
# 8.5-10 minutes on 2 cores instead of 12-13 (most of the time is subprocesses: DDP, resume and fork runs)
test: setup
	$(PY) -m pytest -q -n 2 tests
