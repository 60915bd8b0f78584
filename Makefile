# AlphaFlow Live. `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := .demo

.PHONY: install test lint format demo bench clean

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "AlphaFlow Live needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The stream server with the market simulator; state and the demo user's token
# stay in .demo/ (git-ignored), so a second `make demo` resumes the same portfolio.
demo: install
	@mkdir -p $(DEMO) && chmod 700 $(DEMO)
	$(BIN)/alphaflow-live serve --source sim --users-file $(DEMO)/users.json --state-dir $(DEMO)/state

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks print figures; they never pass or fail on absolute times.
bench: install
	$(BIN)/python bench/bench_client.py $(if $(QUICK),--quick,)
