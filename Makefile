# `make demo` and `make test` create or refresh .venv themselves (re-installed when setup.cfg, or
# vlbert/__init__.py where the version is, changes).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test bench clean

$(STAMP): setup.cfg pyproject.toml vlbert/__init__.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	$(PY) -m pip install --quiet -e '.[test,uniter]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m vlbert.cli demo --out demo_out

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) bench/pretrain_step.py
	$(PY) bench/loader.py

clean:
	rm -rf demo_out runs lightning_logs
