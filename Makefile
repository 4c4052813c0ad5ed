# ulvs -- two entry points: `make demo` and `make test` (see README.md).
# Both install what is missing: Debian packages with apt-get (as root), Python packages into .venv.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.ulvs-installed
# command -> Debian package providing it
SYS_TOOLS := ip:iproute2 nft:nftables ethtool:ethtool ping:iputils-ping tcpdump:tcpdump curl:curl gcc:gcc wrk:wrk nginx:nginx haproxy:haproxy iperf3:iperf3 trafgen:netsniff-ng keepalived:keepalived
# least privilege, systemd and Docker packaging tests: setpriv, setcap, systemd-analyze verify, dash
SYS_TOOLS += setpriv:util-linux setcap:libcap2-bin systemd-analyze:systemd dash:dash

.PHONY: demo test lint typecheck bench sysdeps venv clean

demo: sysdeps $(STAMP)
	$(VENV)/bin/ulvs demo

test: sysdeps $(STAMP)
	$(VENV)/bin/ruff check ulvs tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check ulvs tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/bench_core.py
	$(PY) bench/bench_sched.py

# System packages: only what is missing, so a prepared machine needs no root and no network.
sysdeps:
	@missing=""; \
	for pair in $(SYS_TOOLS); do \
	  command -v "$${pair%%:*}" >/dev/null 2>&1 || missing="$$missing $${pair#*:}"; \
	done; \
	$(PYTHON) -c 'import venv, ensurepip' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import sysconfig, os, sys; sys.exit(not os.path.exists(sysconfig.get_paths()["include"] + "/Python.h"))' \
	  >/dev/null 2>&1 || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "make: need root to install:$$missing" >&2; exit 1; fi; \
	  echo "apt-get install:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
