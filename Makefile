# AlphaFlow Live. `make demo` and `make test` are all a fresh clone needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := .demo

.PHONY: install system-deps test lint format demo bench clean

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "AlphaFlow Live needs Python 3.11 or newer (PYTHON=$(PYTHON))"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# The widgets' front end ships as written: its modules copied from js/src into the package
# (alphaflow_live/frontend.py joins them into the one module anywidget loads).
STATIC := alphaflow_live/static
FRONT_END := $(patsubst js/src/%,$(STATIC)/%,$(wildcard js/src/*.js js/src/*.css js/src/parts/*.js))
$(STATIC)/%: js/src/%
	@mkdir -p $(@D)
	cp $< $@

install: $(STAMP) $(FRONT_END)

# What the tests need beyond the venv: Debian's Chromium (the browser tests drive it
# with Playwright; no browser can be downloaded here), Debian's redis-server (the Redis
# tests start their own, on free ports, so the package's service must not stay up: where
# its postinst could start one, it is stopped and disabled) and the front end's test tools.
system-deps:
	@command -v chromium >/dev/null 2>&1 || { \
		echo "installing Debian's chromium for the browser tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing Debian's redis-server for the Redis tests"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null && \
		{ systemctl disable --now redis-server >/dev/null 2>&1 || invoke-rc.d redis-server stop >/dev/null 2>&1 || true; }; }

js/node_modules/.install-stamp: js/package.json js/package-lock.json
	cd js && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: install system-deps js/node_modules/.install-stamp
	cd js && npx vitest run
	$(BIN)/python -m pytest

lint: install js/node_modules/.install-stamp
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	cd js && npx tsc --noEmit -p tsconfig.json

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The stream server with the simulated market and JupyterLab on the live notebook;
# state and the demo token stay in .demo/ (git-ignored). Ctrl-C stops both.
demo: install
	$(BIN)/python scripts/demo.py

clean:
	rm -rf $(VENV) $(DEMO) $(STATIC) js/node_modules test-artifacts .pytest_cache .mypy_cache .ruff_cache

# Benchmarks print figures; they never pass or fail on absolute times.
# `make bench` is the full run (by hand, several minutes); QUICK=1 for the quick one
# that `make test` also runs (tests/bench). Writes bench/results/latest.json.
bench: install
	$(BIN)/python bench/run.py $(if $(QUICK),--quick,)
