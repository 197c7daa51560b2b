# The course in two commands:  make run   (all notebooks on the synthetic phantom)
#                              make test  (the test suite)
# Both create .venv with pip and install ichlib into it when it is not there yet.
# Real data:  make run DATA=data/ct-ich  (CT-ICH)   make run RSNA=/data/rsna  (notebook 06 on RSNA 2019)
# Another ready environment:  make run PY=python

PYTHON ?= python3
VENV   ?= .venv
PY     ?= $(VENV)/bin/python
DATA   ?= data/synthetic
# RSNA 2019 folder for notebook 06 (empty: a small synthetic RSNA folder it writes itself)
RSNA   ?=
RUNS   ?= runs
FIGURES ?= figures
SMOKE  ?= False
# The course phantom has 200 patients (ichlib.course.COURSE_PATIENTS; CT-ICH has 75).
SYNTH_PATIENTS ?= 200
# Extra papermill parameters for notebook 04. Its defaults are the course's (128 px, 3 epochs);
# the design's 256 px / 10 epochs take hours on 2 CPU cores: make run NB04_PARAMS="-p DESIGN True"
NB04_PARAMS ?=
PYTEST_ARGS ?=

NOTEBOOKS := $(sort $(wildcard notebooks/[0-9][0-9]_*.ipynb))
STAMP := $(VENV)/.ichlib-installed

# Progress bars would bloat the executed notebooks; figures stay inline (no MPLBACKEND=Agg).
export TQDM_DISABLE := 1
export PYDEVD_DISABLE_FILE_VALIDATION := 1
SHELL := /bin/bash
# ipykernel >= 7 warns at every start that its localhost TCP sockets are not encrypted (papermill
# starts a private kernel on 127.0.0.1), and can log a KeyboardInterrupt while papermill shuts the
# finished kernel down. make run hides those two lines; everything else, errors included, passes.
KERNEL_NOISE := running over TCP without encryption\|KeyboardInterrupt caught in kernel

.PHONY: run test test-fast test-bf16 test-first-use test-browser env data check lint strip clean help bench bench-gpu

help:
	@echo "make run    execute notebooks/0*.ipynb headless on \$$DATA (default: synthetic phantom)"
	@echo "make test   run the test suite"
	@echo "make test-fast  the tests not marked slow (a quick loop; make test runs them all)"
	@echo "make test-bf16  the amp-dependent tests again on the bf16 path (ICHLIB_AMP=bf16)"
	@echo "make test-first-use  the CLI on empty HOME and cache folders, per CPU kind (also in make test)"
	@echo "make test-browser  JupyterLab in headless chromium (apt-get install chromium chromium-driver)"
	@echo "make data   generate the synthetic phantom into data/synthetic if absent"
	@echo "make check  ichlib check \$$DATA"
	@echo "make lint   ruff, mypy on the ichlib names the notebooks use, the architecture tests"
	@echo "make strip  strip outputs from the committed notebooks"
	@echo "make bench  the CPU benchmarks (reference vs fast path; results in runs/bench/)"
	@echo "make bench-gpu  the GPU benchmark (needs CUDA)"

# --- environment -------------------------------------------------------------
ifeq ($(PY),$(VENV)/bin/python)
env: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade --quiet pip
	$(VENV)/bin/python -m pip install --quiet -e ".[dev]"
	@touch $@
else
env:
	@$(PY) -c "import ichlib, papermill, pytest" || { echo "PY=$(PY) lacks ichlib[dev]; run: $(PY) -m pip install -e '.[dev]'"; exit 1; }
endif

# --- data --------------------------------------------------------------------
# An existing phantom is reused; SYNTH_PATIENTS given on the command line rewrites it if its size differs.
data: env
	@if [ "$(DATA)" = "data/synthetic" ]; then \
		have=$$($(PY) -c "import json; print(json.load(open('data/synthetic/synthetic.json'))['n_patients'])" 2>/dev/null || echo 0); \
		if [ "$$have" = 0 ] || { [ "$(origin SYNTH_PATIENTS)" = "command line" ] && [ "$$have" != "$(SYNTH_PATIENTS)" ]; }; then \
			echo "Generating the synthetic phantom of $(SYNTH_PATIENTS) patients into data/synthetic (SYNTHETIC, not patient data)"; \
			$(PY) -m ichlib synth data/synthetic --patients $(SYNTH_PATIENTS); \
		else \
			echo "Using the synthetic phantom in data/synthetic: $$have patients (make run SYNTH_PATIENTS=N writes another)"; \
		fi; \
	fi
	@test -d "$(DATA)" || { echo "DATA=$(DATA) is not a folder. See docs/data.md (real data)."; exit 1; }

check: data
	$(PY) -m ichlib check "$(DATA)"

# --- the course ----------------------------------------------------------------
run: data
	@mkdir -p $(RUNS)/notebooks $(FIGURES)
	@set -e; for nb in $(NOTEBOOKS); do \
		name=$$(basename $$nb); echo "== $$name   ($$($(PY) -m ichlib.notebook_runner expected $$name))"; \
		start=$$(date +%s); extra=""; \
		data=(-p DATA_DIR "$(abspath $(DATA))"); \
		case $$name in 04_*) extra="$(NB04_PARAMS)";; \
			06_*) data=(); [ -z "$(RSNA)" ] || data=(-p RSNA_DIR "$(abspath $(RSNA))");; esac; \
		$(PY) -m papermill -k python3 --engine ichlib --log-level WARNING "$$nb" "$(RUNS)/notebooks/$$name" \
			"$${data[@]}" -p FIGURES_DIR "$(abspath $(FIGURES))" \
			-p RUNS_DIR "$(abspath $(RUNS))" -p SMOKE $(SMOKE) $$extra \
			2> >(grep -v --line-buffered "$(KERNEL_NOISE)" >&2); \
		echo "   done in $$(( $$(date +%s) - start )) s"; \
	done
	@echo "Executed notebooks: $(RUNS)/notebooks/   Figures: $(FIGURES)/"

# --- benchmarks (synthetic data, results in runs/bench/; each a few minutes) ----------
bench: env
	$(PY) benchmarks/bench_preprocess.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_predict.py
	$(PY) benchmarks/bench_predict_levers.py

bench-gpu: env
	$(PY) benchmarks/bench_gpu.py

# --- quality -------------------------------------------------------------------
test: env
	$(PY) -m pytest $(PYTEST_ARGS)

# The tests whose numbers go through amp="auto", forced onto the bf16 path (emulated on CPUs
# without bf16), so every machine exercises what an AMX CPU runs by default.
# The quick loop while developing: everything but the tests marked slow (notebooks, torchrun,
# kill-and-resume, benchmarks), which make test and CI still run.
test-fast: env
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-bf16: env
	ICHLIB_AMP=bf16 $(PY) -m pytest -m amp $(PYTEST_ARGS)

# First use on a fresh machine: predict (before any training), predict --cam, check and train
# with HOME, XDG_CACHE_HOME and ICHLIB_CACHE empty, for each CPU kind (AMX, AVX512-BF16 without
# AMX, no native bf16). Part of make test too; under a minute.
test-first-use: env
	$(PY) -m pytest -m first_use tests/test_first_use.py $(PYTEST_ARGS)

# JupyterLab driven by Debian's headless chromium through chromium-driver (never a downloaded
# browser): executed notebooks show their figures, the slice viewer's slider changes its image.
# Screenshots go to runs/browser/. About a minute.
test-browser: env
	$(PY) -m pytest -m browser tests/test_browser.py $(PYTEST_ARGS)

lint: env
	$(PY) -m ruff check ichlib tests benchmarks
	$(PY) tests/notebook_names.py   # mypy: every ichlib name the notebooks and docs use resolves
	$(PY) -m pytest -q tests/test_architecture.py   # import cycles, layer contracts, function length

strip: env
	$(PY) -m jupyter nbconvert --clear-output --inplace $(NOTEBOOKS)

clean:
	rm -rf $(RUNS) $(FIGURES)/*.png .pytest_cache
