# t5lite: `make demo` (a short real pretraining run, offline) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PIP = $(VENV)/bin/pip
export TF_CPP_MIN_LOG_LEVEL ?= 3

.PHONY: setup setup-test setup-corpus demo corpus-demo test test-all bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[cpu,data,viz]'
	touch $@

# Test-only peers: HF transformers on the local CPU build of torch (pinned: a range would pull a
# multi-GB CUDA build), the original `t5` package (no deps) for span-corruption comparisons, and
# (extra `plan`) libtpu's compiler for `t5lite plan`'s tests.
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[cpu,data,viz,hf,metrics,dev,plan,corpus]'
	$(PIP) install -q --no-deps t5==0.9.4 babel
	touch $@

demo: setup
	$(VENV)/bin/t5lite train --gin_file=runs/demo.gin

# `t5lite corpus` end to end: a WET file of the demo corpus dressed as web pages -> C4's rules ->
# allenai/c4-style shards -> the tiny model trained on them through the token cache. It needs
# NLTK's Punkt model and C4's bad-words list (README, "Build a corpus"): NLTK_DATA names the
# folder holding tokenizers/punkt_tab/, BADWORDS the list.
CORPUS_DEMO = runs/corpus_demo
NLTK_DATA ?= $(HOME)/nltk_data
BADWORDS ?= $(or $(T5LITE_CACHE),$(HOME)/.cache/t5lite)/badwords/en

setup-corpus: $(VENV)/.installed-corpus

$(VENV)/.installed-corpus: $(VENV)/.installed
	$(PIP) install -q -e '.[cpu,data,viz,corpus]'
	touch $@

corpus-demo: setup-corpus
	rm -rf $(CORPUS_DEMO)
	$(VENV)/bin/t5lite corpus demo-wet $(CORPUS_DEMO)/CC-MAIN-demo.warc.wet.gz
	$(VENV)/bin/t5lite corpus build --input '$(CORPUS_DEMO)/*.warc.wet.gz' \
	    --output $(CORPUS_DEMO)/c4 --nltk_data $(NLTK_DATA) --badwords $(BADWORDS) \
	    --gin.Recipe.validation_modulus=20
	$(VENV)/bin/t5lite train --gin_file=runs/corpus_demo.gin

# The quick tier (a few minutes on 2 cores); test-all adds the slow integration tests (CI's).
test: setup-test
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile -m "not slow"

test-all: setup-test
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile --durations=20

bench: setup-test
	$(VENV)/bin/python benchmarks/bench_pipeline.py --batches 12 --repeats 4
	$(VENV)/bin/python benchmarks/bench_objectives.py
	$(VENV)/bin/python benchmarks/bench_train.py --models tiny,test,small --steps 5 --warmup 3
	$(VENV)/bin/python benchmarks/bench_decode.py

clean:
	rm -rf runs/demo runs/doremi_demo runs/corpus_demo
