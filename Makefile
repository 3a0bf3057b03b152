# The two README commands: `make demo` and `make test`. Neither needs root.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages some tests drive, as `package:command`: the browser tests' Chromium and
# the Mosquitto broker. `make test` installs those missing when it runs as root; without
# root it goes on, and the tests that need one fail naming its package.
SYSTEM_PACKAGES := chromium:chromium mosquitto:mosquitto

.PHONY: demo test lint typecheck unit clean system-packages

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/commandpost demo $(ARGS)

test: $(STAMP) system-packages lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)

# A command is found on PATH or in /usr/sbin and /usr/bin (mosquitto lives in /usr/sbin,
# which is not on a user's PATH).
system-packages:
	@missing=""; \
	for entry in $(SYSTEM_PACKAGES); do \
	  package=$${entry%%:*}; command=$${entry#*:}; \
	  if ! command -v "$$command" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$$command" ] \
	     && [ ! -x "/usr/bin/$$command" ]; then missing="$$missing $$package"; fi; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "not installed:$$missing (apt-get install$$missing as root); the tests that need them will fail"; \
	  exit 0; \
	fi; \
	echo "installing$$missing with apt-get"; \
	export DEBIAN_FRONTEND=noninteractive; \
	apt-get update -qq >/dev/null && \
	apt-get install -y -qq --no-install-recommends$$missing >/dev/null || \
	echo "apt-get could not install$$missing; the tests that need them will fail"

lint: $(STAMP)
	$(BIN)/ruff check .

typecheck: $(STAMP)
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

# The README's bench table, from the result files in runtime/bench/results.
.PHONY: bench-table
bench-table: $(STAMP)
	$(BIN)/python -m runtime.bench.report --readme README.md
