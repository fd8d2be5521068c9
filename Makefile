# AMI Auth — the README's commands. Everything installs into .venv; nothing global but .ci/run's root steps.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 5000
# Tests run on every core, a file per worker (module-scoped peers such as the OpenID Provider start once).
PYTEST_ARGS ?= -n auto --dist loadfile

.PHONY: run test lint typecheck unit peers ts-client bench install install-dev migrate messages clean

# `make install` (and so `make run`) installs what the app needs to run; `make install-dev` adds the test and
# lint tooling (pytest, Playwright, mypy, schemathesis…: the `dev` extra), which every test/lint target uses.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(BIN)/.installed-dev: $(BIN)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

install-dev: $(BIN)/.installed-dev

migrate: install
	$(BIN)/ami-auth db upgrade

## make run: install, migrate the embedded SQLite under instance/, print the setup link, serve on port 5000
## (PORT=…) of 127.0.0.1 (HOST=…), opened as http://localhost:5000: passkeys need a domain name, not an IP address.
run: export AMI_AUTH_BASE_URL ?= http://localhost:$(PORT)
run: migrate
	$(BIN)/ami-auth bootstrap
	$(BIN)/flask --app wsgi run --host $(HOST) --port $(PORT)

lint: install-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

typecheck: install-dev
	$(BIN)/mypy

# The node test peers (the OpenID provider, the relying parties) and the TypeScript
# client's toolchain — installed from their lock files when present, and
# again when the lock file changed since (npm records what it installed in node_modules/.package-lock.json).
TS_CLIENT := clients/typescript
peers: $(TS_CLIENT)/node_modules/.installed
	@if [ -f tests/peers/package-lock.json ] && { [ ! -d tests/peers/node_modules ] || \
		[ tests/peers/package-lock.json -nt tests/peers/node_modules/.package-lock.json ]; }; then \
		cd tests/peers && npm ci --no-audit --no-fund --loglevel=error; fi

$(TS_CLIENT)/node_modules/.installed: $(TS_CLIENT)/package-lock.json
	cd $(TS_CLIENT) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## make ts-client: regenerate clients/typescript (openapi.json, src/schema.ts) from the app's OpenAPI document
ts-client: install-dev peers
	AMI_AUTH_TEST_UPDATE_CLIENT=1 $(BIN)/python -m pytest -q tests/integration/test_typescript_client.py -k generated

## make test: ruff, mypy --strict and the whole pytest suite (unit, integration, e2e in Chromium)
test: lint typecheck peers
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install-dev
	$(BIN)/python -m pytest tests/unit -q

## make messages: extract every marked string (babel.cfg) into app/translations/messages.pot, merge it into each
## shipped locale's messages.po (new strings come in untranslated, for a translator) and compile the .mo files.
## tests/unit/test_translations.py fails while any shipped locale lacks a message or its .mo is stale.
messages: install
	$(BIN)/pybabel -q extract -F babel.cfg --no-wrap --sort-by-file --add-location=file --omit-header --project "AMI Auth" -k lazy_gettext -k lazy_ngettext:1,2 -o app/translations/messages.pot .
	$(BIN)/pybabel -q update --no-wrap --ignore-obsolete --ignore-pot-creation-date -i app/translations/messages.pot -d app/translations
	$(BIN)/pybabel -q compile --statistics -d app/translations

## make bench: every benchmark; each prints ratios against a baseline measured in the same run
bench: install-dev
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
