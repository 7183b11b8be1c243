# Two entry points, both usable on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch==2.13.0: on the project's machines this resolves to a local CPU wheel (pip find-links).
# Elsewhere, set TORCH_SPEC or TORCH_INDEX (e.g. https://download.pytorch.org/whl/cpu) to avoid
# a multi-GB CUDA download.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_DIR ?= demo
# the optional extras are installed too, so that the tests exercise every feature (openSMILE
# labels, Hugging Face backbones, UMAP, WebDataset shards); all come from the package registry
EXTRAS ?= dev,all

.PHONY: venv demo test clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

demo: venv
	$(VENV)/bin/tympan demo --out $(DEMO_DIR)

test: venv
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache
