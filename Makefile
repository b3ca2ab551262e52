# Everything runs from the project's own virtualenv; `make test` builds it when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline-friendly defaults: no telemetry, Prefect in ephemeral mode, no model-hub retries in tests.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1

.PHONY: install test demo smoke lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check maskclip_core tasks flows tests benchmarks

# The real thing: ViT-B/16 with OpenAI weights (downloaded once; pass PRETRAINED=/path/to/ckpt offline).
PRETRAINED ?= openai
demo: $(STAMP)
	$(VENV)/bin/maskclip demo --pretrained $(PRETRAINED) --out demo-out

# Same pipeline with random weights: proves the plumbing, the labels are meaningless.
smoke: $(STAMP)
	$(VENV)/bin/maskclip demo --pretrained none --out smoke-out

bench: $(STAMP)
	$(PY) benchmarks/bench_dense.py

clean:
	rm -rf $(VENV) demo-out smoke-out .pytest_cache
