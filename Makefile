# Everything runs from the project's own virtualenv; `make test` builds it when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Label Studio for the review push / pull tests: its own virtualenv (its pins clash with ours), started by the tests.
LS_VENV := .venv-label-studio
LS_VERSION ?= 1.23.2
LS_STAMP := $(LS_VENV)/.installed-$(LS_VERSION)

# Offline-friendly defaults: no telemetry, Prefect in ephemeral mode, no model-hub retries in tests.
export DO_NOT_TRACK := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1

.PHONY: install label-studio test demo smoke lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

$(LS_STAMP):
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LS_VENV)/bin/python -m pip install --quiet 'label-studio==$(LS_VERSION)'
	touch $(LS_STAMP)

label-studio: $(LS_STAMP)

test: $(STAMP) $(LS_STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check maskclip_core tasks flows cli tests benchmarks

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
	rm -rf $(VENV) $(LS_VENV) demo-out smoke-out .pytest_cache
