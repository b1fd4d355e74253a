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

test: setup lint
	.venv/bin/python -m pytest -q $(ARGS)
