# Verbs for developers; ./setup.sh is what a new machine runs first.
.PHONY: setup run test lint bench install uninstall

setup:
	./setup.sh setup

run:
	./setup.sh run

test:
	./setup.sh test

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench:
	./setup.sh bench
