# GasGuard — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test bench lint services clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## Run every service in one process on embedded (or configured) broker and database, with a demo county.
demo: $(STAMP)
	$(BIN)/gasguard demo

## Run the test suite against PostgreSQL and Mosquitto on loopback (started here if they are down).
test: $(STAMP) services
	$(BIN)/pytest

## Measure latency, throughput and memory; writes docs/benchmarks.md and the benchmarks-*.md it links.
bench: $(STAMP) services
	$(BIN)/python -m simulator.bench
	$(BIN)/python -m simulator.bench_alerting
	$(BIN)/python -m simulator.bench_ingest
	$(BIN)/python -m simulator.bench_registry
	$(BIN)/python -m simulator.bench_ui

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

## Start the loopback PostgreSQL and Mosquitto the tests use, if they are not running (Debian packages).
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@(exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null || mosquitto -d -c /etc/mosquitto/mosquitto.conf
	@for i in $$(seq 50); do pg_isready -q -h 127.0.0.1 -p 5432 && (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null && exit 0; sleep 0.2; done; \
	  echo "PostgreSQL or Mosquitto did not come up on 127.0.0.1" >&2; exit 1

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
