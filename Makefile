# Verbs for developers; ./setup.sh is what a new machine runs first.
.PHONY: setup run test lint bench bench-soak gpu-proof install uninstall

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

# The memory target's full 10-minute soak, on its own (about 13 minutes).
bench-soak:
	./setup.sh bench --phases served --soak-minutes 10

# On a box with NVIDIA GPUs: offline and served figures on the GPUs, into bench/RESULTS.md (its own section).
# `.venv/bin/python -m bench.gpu_proof --quick --cpu` checks the same path on a machine without one.
gpu-proof:
	.venv/bin/python -m bench.gpu_proof

# As root: inferd as a systemd service (DESTDIR=dir stages into a folder instead). System python3 on
# purpose: the installer builds the service's own venv under /opt/inferd.
install:
	python3 -m tools.install install $(if $(DESTDIR),--root $(DESTDIR))

# As root; PURGE=1 also removes /etc/inferd, /var/lib/inferd, the logs and the user.
uninstall:
	python3 -m tools.install uninstall $(if $(DESTDIR),--root $(DESTDIR)) $(if $(PURGE),--purge)
