# The two commands a user needs: `make run` and `make test`. Everything is installed
# into .venv from package registries; nothing needs to be installed by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
# The CPU build of torch where there is no NVIDIA driver (an unpinned torch would
# pull a multi-GB CUDA build); the default CUDA build where there is one.
TORCH_CPU  ?= torch==2.13.0
TORCH_CUDA ?= torch==2.13.0
HAS_CUDA   := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_SPEC := $(if $(HAS_CUDA),$(TORCH_CUDA),$(TORCH_CPU))
PORT ?= 8080
ARGS ?=

.PHONY: install run test bench soak lint clean gpu-check

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet "$(TORCH_SPEC)"
	$(PIP) install --quiet -e ".[test,loadtest]"
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/torpor serve --demo --port $(PORT) $(ARGS)

test: install
	$(PY) -m pytest $(ARGS)

# bench_overhead drives the servers with wrk (Debian package `wrk`): installed here when we are root.
bench: install
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y wrk; } \
		|| { echo "bench needs wrk: apt-get install -y wrk" >&2; exit 1; }
	$(PY) -m gpuworker.bench_swap
	$(PY) -m loadtest.bench_overhead

soak: install
	$(PY) -m loadtest.soak

# On a GPU host: the GPU tests, the swap/pipeline and peer-copy benchmarks, and a report in
# gpu-check/ (JSON + Markdown). Without a GPU it says so and exits 0.
gpu-check: install
	$(PY) -m gpuworker.gpucheck --out gpu-check $(ARGS)

lint: install
	$(PIP) install --quiet ruff
	$(VENV)/bin/ruff check gateway gpuworker shared loadtest tests
	$(VENV)/bin/ruff format --check gateway gpuworker shared loadtest tests

clean:
	rm -rf $(VENV) .torpor build *.egg-info gpu-check
