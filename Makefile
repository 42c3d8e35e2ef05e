# AgentDesk: `make run` starts everything on the embedded defaults; `make test` runs the suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PG_URL ?= postgres://postgres@127.0.0.1:5432/agentdesk
REDIS_TEST_URL ?= redis://127.0.0.1:6379/15

.PHONY: run test check-deploy test-sqlite test-postgres lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make run` is development: DESK_DEBUG on, so a development secret key and plain-http
# cookies on http://127.0.0.1 (production is DESK_DEBUG off: README "Production settings").
# The second factor stays required, as in production (DESK_REQUIRE_2FA=0 make run: without).
run: export DESK_DEBUG ?= 1
run: export DESK_REQUIRE_2FA ?= 1
run: $(STAMP)
	$(PY) manage.py secrets_key --create
	$(PY) manage.py migrate --noinput
	$(PY) manage.py audit_key --create
	$(PY) manage.py seed_demo
	$(PY) manage.py serve_all

test: $(STAMP) lint check-deploy test-sqlite test-postgres

# Django's deploy checks on the production defaults (a clean environment: DESK_DEBUG off, a
# fresh secret key, nothing else set); any warning fails.
check-deploy: $(STAMP)
	env -i PATH="$$PATH" HOME="$$HOME" \
		DESK_SECRET_KEY="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" \
		$(PY) manage.py check --deploy --fail-level WARNING

test-sqlite: $(STAMP)
	env -u DATABASE_URL -u REDIS_URL $(PY) -m pytest -q

test-postgres: $(STAMP)
	DATABASE_URL=$(PG_URL) REDIS_TEST_URL=$(REDIS_TEST_URL) $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) bench/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var build *.egg-info
