# Two entry points (README "Quick start"): `make demo` and `make test`. Both create .venv and
# install the project from pyproject.toml, so a fresh machine with Python 3.11 needs nothing else.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
CORPUS ?= data/corpus
UTTERANCES ?= 3000

.PHONY: demo test install clean bench chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# the corpus, the table1 demo study (a progress line per trial and epoch, then its table), its
# captures and analyses (a line per capture and per analysis as it finishes), the claims, and the report's path; Ray's own
# messages go to the log files each step names first
demo: $(STAMP)
	$(BIN)/gatelens corpus --out $(CORPUS) --utterances $(UTTERANCES) --reuse
	$(BIN)/gatelens grid --study table1 --profile demo --corpus $(CORPUS) --storage data/runs
	$(BIN)/gatelens report --study table1 --storage data/runs --claims

test: $(STAMP) chromium
	$(BIN)/python -m pytest

# the report test opens the page in Debian's headless Chromium; the explorer's tests drive it
# through Debian's chromium-driver (Selenium)
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || { S=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$S apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$S apt-get install -y -qq chromium chromium-driver >/dev/null; }

bench: $(STAMP)
	for b in corpus cells train decode capture store figures service causal explorer; do $(BIN)/python bench/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) data build .pytest_cache
