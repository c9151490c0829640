# Two commands set up everything: `make run` and `make test`.
VENV    ?= .venv
PY      := $(VENV)/bin/python
LF      := $(VENV)/bin/linkflow
STAMP   := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# The dev broker's client port (e.g. `KAFKA_PORT=29092 make run`); the engine's own ports come
# from LINKFLOW_API_PORT and LINKFLOW_REGISTRY_PORT.
KAFKA_PORT ?= 9092

.PHONY: install run test test-unit lint bench kafka-start kafka-stop clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

## Broker (real Kafka from Maven Central, port 9092, data in .linkflow/) + topics + engine on 8084/8085.
## Ctrl-C stops the engine and the broker. `linkflow dev` owns the broker's lifetime (exec: no shell
## in between whose EXIT trap a Ctrl-C could skip); a broker left by a kill -9 is reused next time.
run: install
	exec $(LF) dev --kafka-port $(KAFKA_PORT)

## The whole suite: unit tests and integration tests against a real broker the suite starts itself.
test: install
	$(PY) -m pytest

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
	rm -rf .linkflow
