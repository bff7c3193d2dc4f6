# Two commands for a new user: `make run` (launch acm-tui) and `make test` (the lint checks, then the tests).
# Both create .venv on first use and install acm into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test test-all lint install clean

run: $(STAMP)
	$(BIN)/acm-tui

# two workers (pytest-xdist): the suite in about two thirds of the time on two cores
test: lint
	$(BIN)/python -m pytest -q -n 2

# ruff (pyproject's [tool.ruff]), the architecture contracts ([tool.importlinter]) and no function
# above cyclomatic complexity 15
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/python .ci/max_complexity.py 15 core acm_tui bench tests

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ""

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "acm needs Python 3.11 or newer: install it and run make again")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info
