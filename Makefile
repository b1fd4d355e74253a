# The README's two commands: `make run` (the local stack on the sample cameras) and
# `make test` (lint, types, unit and integration tests on real services). Both set up
# whatever is missing first.
.PHONY: setup run test lint

setup:
	bash scripts/bootstrap.sh

run: setup
	.venv/bin/camstream up $(ARGS)

lint:
	.venv/bin/ruff check benchmarks camstream producers streams training tests
	.venv/bin/ruff format --check benchmarks camstream producers streams training tests
	.venv/bin/mypy

# The suite on the local stack's processes, then the tests marked `compose` on
# docker-compose's cpu profile (CAMSTREAM_TEST_STACK=compose; tests/integration/conftest.py).
test: setup lint
	.venv/bin/python -m pytest -q -m "not compose_only" $(ARGS)
	CAMSTREAM_TEST_STACK=compose .venv/bin/python -m pytest -q -m compose tests/integration
