# iot-bridge: `make run` and `make test` work from a fresh clone on Debian (as root, or with
# mosquitto, nodejs, npm and python3-venv already installed).
VENV ?= .venv
PY := $(VENV)/bin/python
# aedes, the Node.js broker the tests also run on: installed outside git, beside the venv.
NODE_DIR := $(abspath $(VENV))/node
AEDES_VERSION := 1.2.0
export IOT_BRIDGE_NODE_DIR := $(NODE_DIR)
CONFIG ?= config/bridge.toml
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(PATH):/usr/sbin

.PHONY: run test compat bench bench-nodered soak loadgen-deps check clean deps browser

run: $(VENV)/.installed
	$(PY) -m bridge.dev.run $(CONFIG)

test: $(VENV)/.installed $(NODE_DIR)/.aedes-$(AEDES_VERSION) browser
	$(VENV)/bin/pytest -q

# The broker checks on RabbitMQ (rabbitmq-server with its MQTT plugin, a private node on free
# ports, stopped after the tests); heavier than the rest, so not part of `make test`.
compat: $(VENV)/.installed
	@[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq rabbitmq-server; }
	$(VENV)/bin/pytest -q -s -m compat tests/test_brokers.py

bench: $(VENV)/.installed loadgen-deps
	$(PY) bench/run.py

# Node-RED 4 as an optional peer in `make bench` (under .venv, outside git).
bench-nodered: $(VENV)/.installed loadgen-deps
	@$(MAKE) --no-print-directory deps
	npm install --no-audit --no-fund --silent --prefix $(abspath $(VENV))/node-red node-red@4
	$(PY) bench/run.py

# 1,000,000 QoS 1 requests: the bridge's memory stays flat (a few minutes; not in `make test`).
soak: $(VENV)/.installed loadgen-deps
	$(PY) bench/soak.py

loadgen-deps:
	@command -v cc >/dev/null && [ -f /usr/include/mosquitto.h ] || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq gcc libmosquitto-dev; }

check: $(VENV)/.installed
	$(VENV)/bin/iot-bridge check --config $(CONFIG)

deps:
	@if ! command -v mosquitto >/dev/null || ! command -v mosquitto_rr >/dev/null \
	   || ! command -v curl >/dev/null || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq mosquitto mosquitto-clients curl python3-venv; \
	fi
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq nodejs npm; \
	fi

$(NODE_DIR)/.aedes-$(AEDES_VERSION):
	@$(MAKE) --no-print-directory deps
	mkdir -p $(NODE_DIR)
	npm install --no-audit --no-fund --silent --prefix $(NODE_DIR) aedes@$(AEDES_VERSION)
	touch $@

# The status page test drives Debian's chromium, headless (nothing is downloaded by the tests).
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	  $(SUDO) apt-get install -y -qq chromium; }

$(VENV)/.installed: pyproject.toml
	@$(MAKE) --no-print-directory deps
	[ -x $(PY) ] || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,test]'
	touch $@

clean:
	rm -rf $(VENV) run build *.egg-info bench/loadgen bench/results
