# rsi-lab. `make run` and `make test` do all set-up on a fresh machine with Docker.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install images test test-fast bench run clean docker-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

docker-check:
	@$(BIN)/python -c "import docker; docker.from_env().ping()" 2>/dev/null || { \
	  echo "rsi: no Docker daemon reachable. Start it (e.g. 'dockerd &' or 'systemctl start docker')." >&2; exit 2; }

images: install docker-check
	$(BIN)/rsi --log-level info images build

test: images
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not docker"

bench: images
	$(BIN)/python bench/sandbox_overhead.py

run: images
	$(BIN)/rsi sandbox run seeds/example; test $$? -le 1

clean:
	rm -rf $(VENV) .pytest_cache
