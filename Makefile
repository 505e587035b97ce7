# quorum: the two commands users need are `make run` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint typecheck unit torture bench clean protos

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

## run: install into .venv and start a local 3-node cluster
run: $(STAMP)
	$(BIN)/quorum cluster up --nodes 3 --data-dir .quorum-data

lint: $(STAMP)
	$(BIN)/ruff check quorum tests bench

typecheck: $(STAMP)
	$(BIN)/mypy --strict quorum/raft quorum/state quorum/storage quorum/errors.py

unit: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadgroup --durations=25

## test: install and run the whole suite (lint, types, tests)
test: lint typecheck unit

## torture: long campaigns (thousands of simulation seeds, long nemesis runs)
torture: $(STAMP)
	QUORUM_TORTURE=1 $(BIN)/pytest -q -n 2 -m torture

bench: $(STAMP)
	$(BIN)/python bench/raft_bench.py

## protos: regenerate quorum/api/etcd/gen from quorum/api/etcd/proto
protos: $(STAMP)
	PY=$(BIN)/python scripts/gen_protos.sh

clean:
	rm -rf $(VENV) .quorum-data .pytest_cache .mypy_cache .ruff_cache
