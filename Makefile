# Two commands for a newcomer: `make demo` and `make test`. Each sets itself up (idempotently).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo stack test test-slow reliability bench docs docs-build install system-deps lint clean locale

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev,local,deploy]'
	@touch $(STAMP)

# The message catalog (salespred_assets/i18n/locales/*/LC_MESSAGES/messages.po) compiled to .mo (not committed).
LOCALE_PO := $(wildcard salespred_assets/i18n/locales/*/LC_MESSAGES/messages.po)
LOCALE_MO := $(LOCALE_PO:.po=.mo)

%.mo: %.po $(STAMP)
	$(BIN)/pybabel --quiet compile -i $< -o $@ -l $(word 4,$(subst /, ,$<)) --statistics

locale: $(LOCALE_MO)

install: $(STAMP) locale

system-deps:
	@scripts/install-system-deps.sh

demo: $(STAMP) locale
	$(BIN)/salespred demo

# The docker-compose topology as local processes (docs/stack.md); `.venv/bin/salespred stack down` stops it.
stack: $(STAMP) locale
	$(BIN)/salespred stack up

test: $(STAMP) locale system-deps
	$(BIN)/python -m pytest --durations=15

test-slow: $(STAMP) locale system-deps
	$(BIN)/python -m pytest -m slow --durations=10

# Test runs write their reliability figures to .salespred/test-reports/RELIABILITY.md (untracked); this
# regenerates the tracked RELIABILITY.md on purpose: the suite (default sections), then the slow scenarios.
reliability: $(STAMP) locale system-deps
	SALESPRED_RELIABILITY_FILE=$(CURDIR)/RELIABILITY.md $(BIN)/python -m pytest
	SALESPRED_RELIABILITY_FILE=$(CURDIR)/RELIABILITY.md $(BIN)/python -m pytest -m slow

bench: $(STAMP) locale system-deps
	$(BIN)/salespred bench

# The documentation site (mkdocs.yml, docs/): `make docs` serves it at http://127.0.0.1:8001 while you edit.
docs: $(STAMP) locale
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

docs-build: $(STAMP) locale
	$(BIN)/mkdocs build --strict --site-dir site

# ruff (rules and line length in pyproject.toml [tool.ruff]) and mypy ([tool.mypy]); .pre-commit-config.yaml runs both.
lint: $(STAMP) locale
	$(BIN)/ruff check salespred_assets salespred_tests scripts
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .salespred .pytest_cache
