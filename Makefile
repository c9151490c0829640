# Two commands set up everything: `make run` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
LF      := $(VENV)/bin/linkflow
STAMP   := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# The dev broker's client port (e.g. `KAFKA_PORT=29092 make run`); the engine's own ports come
# from LINKFLOW_API_PORT and LINKFLOW_REGISTRY_PORT.
KAFKA_PORT ?= 9092

# The web UI's DAG layout library, from npm, pinned by ui/package-lock.json (ADR 0038).
UI_ASSETS := linkflow_stream/http/assets/ui
UI_LIB    := $(UI_ASSETS)/dagre.esm.js

.PHONY: install ui run test test-unit lint bench kafka-start kafka-stop clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

$(UI_LIB): ui/package.json ui/package-lock.json Makefile
	@command -v npm >/dev/null || { echo "npm is needed to build the web UI (Debian: apt-get install nodejs npm)"; exit 1; }
	cd ui && npm ci --no-audit --no-fund
	# without its sourceMappingURL line: the map is not shipped, and a browser asking for it gets a 404
	sed '/^\/\/# sourceMappingURL=/d' ui/node_modules/@dagrejs/dagre/dist/dagre.esm.js > $(UI_LIB)
	cp ui/node_modules/@dagrejs/dagre/LICENSE $(UI_ASSETS)/dagre.LICENSE.txt

ui: $(UI_LIB)

## Broker (real Kafka from Maven Central, port 9092, data in .linkflow/) + topics + engine on 8084/8085.
## Ctrl-C stops the engine and the broker. `linkflow dev` owns the broker's lifetime (exec: no shell
## in between whose EXIT trap a Ctrl-C could skip); a broker left by a kill -9 is reused next time.
run: install ui
	exec $(LF) dev --kafka-port $(KAFKA_PORT)

## The whole suite: unit tests and integration tests against a real broker the suite starts itself.
test: install ui
	$(PY) -m pytest

# the unit tests need no npm: the ones that read the UI's layout library skip without it
test-unit: install
	$(PY) -m pytest tests/unit

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) -m bench.diamond

kafka-start: install
	$(LF) kafka start --port $(KAFKA_PORT)

kafka-stop: install
	$(LF) kafka stop

clean:
	-$(LF) kafka stop
	rm -rf .linkflow ui/node_modules $(UI_LIB) $(UI_ASSETS)/dagre.LICENSE.txt
