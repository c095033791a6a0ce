# personae: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
EPISODES ?= 2

.PHONY: install demo test lint clean

$(BIN)/personae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/personae  ## create .venv and install personae with test tools

demo: install  ## run the counseling scenario on the embedded model and print a transcript
	rm -f logs/demo.db logs/demo.db-wal logs/demo.db-shm
	$(BIN)/personae run counseling_cbt --episodes $(EPISODES) --db logs/demo.db
	$(BIN)/personae show logs/demo.db
	$(BIN)/personae show logs/demo.db 0

test: install  ## the whole test suite, real-model tests included
	$(BIN)/python -m pytest -q

lint:  ## ruff and mypy (strict) on the package
	$(BIN)/ruff check personae tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
