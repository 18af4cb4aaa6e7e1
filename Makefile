# DeepSynth: two commands do everything on a fresh machine.
#   make demo   fine-tune the embedded PP-OCRv6 recogniser on real Fraktur lines, before/after CER, serve hint
#   make test   the whole test suite (what CI runs)
# Other targets: make bench, make lint, make deepseek-ocr-smoke, make gpu-check, make system-deps, make clean

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.deepsynth-installed
EXTRAS ?= train,serve,track,eval,scale,dev
APT_PACKAGES := tesseract-ocr tesseract-ocr-eng tesseract-ocr-fra tesseract-ocr-deu \
                fonts-dejavu-core fonts-noto-core chromium prometheus
export MLFLOW_DISABLE_TELEMETRY := true
export GRADIO_ANALYTICS_ENABLED := False
export WANDB_MODE ?= offline
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM := false

.PHONY: all install system-deps demo test test-fast bench lint deepseek-ocr-smoke gpu-check clean

all: install

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU wheel where one lies on disk; a CUDA build from PyPI elsewhere.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[$(EXTRAS)]"
	@touch $(STAMP)

install: $(STAMP) system-deps

# System packages (Tesseract + language packs, Unicode fonts, Chromium for the web demo test, promtool).
# Installed with apt-get when we can; otherwise we say what is missing and the features that need it skip.
system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then echo "system packages: all present"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  echo "installing system packages:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null) \
	  || echo "WARNING: apt-get failed for:$$missing (Tesseract/fonts/Chromium features will skip)"; \
	else echo "WARNING: missing system packages:$$missing. Install them with: sudo apt-get install$$missing"; fi

demo: install
	$(PY) -m deepsynth.cli.main demo

test: install
	$(PY) -m pytest -q -p no:cacheprovider --timeout=900 tests

test-fast: install
	$(PY) -m pytest -q -m "not slow" tests

bench: install
	$(PY) -m bench.run_all

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench

deepseek-ocr-smoke: install
	$(PY) -m deepsynth.cli.main train configs/deepseek_ocr2_smoke.yaml

# Every CUDA-only path, each check in its own process with a timeout -> gpu_check.json (docs/models.md).
# The gpu extra (flash-attn, unsloth) only installs where there is a GPU driver (flash-attn builds against the
# installed torch, hence --no-build-isolation and its build tools first); without one every check says
# SKIP(no CUDA) and the target still succeeds. MODEL=/path/to/checkpoint repeats the fine-tune checks on it.
gpu-check: install
	@if command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "nvidia-smi found: installing the gpu extra"; \
	  $(PIP) install -q "setuptools>=68" wheel packaging psutil ninja; \
	  $(PIP) install -q --no-build-isolation -e ".[$(EXTRAS),gpu]" \
	  || echo "WARNING: installing the gpu extra failed (see above); the checks that need it report why"; \
	else echo "no nvidia-smi (no GPU driver): the gpu extra is not installed, the GPU checks will skip"; fi
	$(PY) -m deepsynth.cli.main doctor --gpu --out gpu_check.json $(if $(MODEL),--model $(MODEL))

clean:
	rm -rf $(VENV) runs outputs .pytest_cache
