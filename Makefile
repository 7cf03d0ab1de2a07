# Task file: one target per job. `make help` lists them.
PY ?= python
PROTO_SRC := proto/bots_api/v1/selector.proto

.PHONY: help proto proto-check lint format typecheck test bench compose-env

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

proto: ## regenerate the committed protobuf/gRPC code (pinned grpcio-tools)
	$(PY) -m grpc_tools.protoc -I proto --python_out=proto --pyi_out=proto --grpc_python_out=proto $(PROTO_SRC)

proto-check: proto ## fail if the committed generated code is stale
	git diff --exit-code -- proto/

lint: ## ruff lint + format check
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: ## apply ruff formatting
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

typecheck: ## mypy strict on client, core and server
	$(PY) -m mypy

test: ## the whole test suite (or TESTS="tests/unit -k name")
	$(PY) -m pytest -q $(TESTS)

bench: ## engine + gRPC benchmark table
	$(PY) bench/bench_selector.py

compose-env: ## write .env with random passwords for docker-compose.yml (kept if it exists)
	sh deploy/compose-env.sh .env
