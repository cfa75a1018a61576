# Two entry points (README "Quick start"): `make demo` and `make test`. Both create .venv and
# install the project from pyproject.toml, so a fresh machine with Python 3.11 needs nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORPUS ?= data/corpus
UTTERANCES ?= 3000

.PHONY: demo test install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/gatelens corpus --out $(CORPUS) --utterances $(UTTERANCES) --reuse
	$(BIN)/gatelens grid --study table1 --profile demo --corpus $(CORPUS) --storage data/runs

test: $(STAMP)
	$(BIN)/python -m pytest

bench: $(STAMP)
	$(BIN)/python bench/corpus.py

clean:
	rm -rf $(VENV) data build .pytest_cache
