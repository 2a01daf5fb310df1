# The README's two commands, bench and test. Each sets up the venv on first use, and again only when
# what it is installed from changed (the stamp holds a hash of pyproject.toml, the lock files,
# TORCH_SPEC and LOCK).
#
# LOCK=1, the default: .venv gets the exact versions of requirements/lock.txt, every package,
# transitive ones included (`make lock` writes it), and gym-pusht from requirements/no-deps.txt
# without its dependencies. torch comes first, from TORCH_SPEC, with --no-deps and -c the lock: pip
# never resolves a torch of its own, a TORCH_SPEC at another version than the lock's fails at once,
# and torch's dependencies come from the lock with everything else (from the usual index, even when
# TORCH_SPEC names another index for torch).
# LOCK=0: .venv-latest gets the newest versions that pyproject.toml's ranges admit, torch still from
# TORCH_SPEC: the upgrade check, `make test LOCK=0` (`make clean LOCK=0` first to re-resolve).
PYTHON ?= python3
LOCK ?= 1
ifeq ($(LOCK),0)
VENV ?= .venv-latest
else
VENV ?= .venv
endif
LOCK_FILE := requirements/lock.txt
NO_DEPS := requirements/no-deps.txt
TORCH_VERSION ?= 2.13.0
TORCH_SPEC ?= torch==$(TORCH_VERSION)
BIN := $(VENV)/bin
STAMP := $(VENV)/.wmcore-installed
KEY := $(shell $(PYTHON) -c "import hashlib,os,sys; h = hashlib.sha256(sys.argv[1].encode()); [h.update(open(f, 'rb').read()) for f in sys.argv[2:] if os.path.exists(f)]; print(h.hexdigest()[:16])" "$(TORCH_SPEC) LOCK=$(LOCK)" pyproject.toml $(LOCK_FILE) $(NO_DEPS))
# Under LOCK=0, tests/test_lock.py skips comparing the installed versions with the lock.
PYTEST := $(if $(filter 0,$(LOCK)),WMCORE_UNLOCKED=1 )$(BIN)/python -m pytest
# make lock's tools, in a throwaway venv.
PIP_TOOLS := pip==26.3 pip-tools==7.7.0
BENCH_ARGS ?=
TEST_ARGS ?=
# The recipe of the embedded default model (wmcore/fixtures/models/pusht-lewm, see its MODEL_CARD.md).
PUSHT_TRAIN ?= data/pusht-train
TRAIN_OUT ?= runs/train-pusht-lewm
# ... and of the second embedded model (wmcore/fixtures/models/pusht-ac-tiny): two stages, see its MODEL_CARD.md.
AC_TRAIN_OUT ?= runs/train-pusht-ac-tiny

PHONY_DOCS := docs docs-check
.PHONY: $(PHONY_DOCS) bench bench-control policy-study test test-random lint-imports setup lock clean train train-ac-tiny train-wm train-refine train-thinker thinking-curve thinker-curve drift-vs-control pusht-data pusht-wm-data

# Both run in a fixed order (pyproject.toml's addopts turn pytest-randomly off, so a run replays as
# it was); test first checks the architecture contracts of pyproject.toml ([tool.importlinter]).
# wmcore bench: the suites installed with the package (wmcore/suites), with --benchmark-only,
# --benchmark-autosave and --benchmark-storage=runs/benchmarks; the same command as outside a checkout.
bench: setup
	$(BIN)/wmcore bench $(BENCH_ARGS)

# The control suite on the whole task set (64 tasks; make bench runs the first 8): planning with
# both embedded models, the baselines, and the oracle on ORACLE_TASKS of them (about 10 s a task).
ORACLE_TASKS ?= 16
bench-control: setup
	WMCORE_CONTROL_TASKS=64 WMCORE_ORACLE_TASKS=$(ORACLE_TASKS) $(BIN)/wmcore bench --suite control -s $(BENCH_ARGS)

# World-model-conditioned policies: every variant (GCBC, imagined next latent, auxiliary loss at
# lambda 0.1/0.25/0.5) x 3 seeds x both embedded models, each run closed loop on the 64 planning tasks
# (make bench trains one small variant). Progress on stderr; the table in $(POLICY_OUT)/policy_study-*.md.
POLICY_OUT ?= runs/policy-study
policy-study: setup pusht-data
	$(BIN)/python scripts/policy_study.py --train-data $(PUSHT_TRAIN) --out $(POLICY_OUT)

test: setup lint-imports docs-check
	$(PYTEST) tests $(TEST_ARGS)

# The docs site (MkDocs Material, mkdocs.yml): docs/index.md from the README, then the site in site/.
docs: setup
	$(BIN)/python scripts/docs_index.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# What make test checks of the docs: the home page is the current README, and the site builds with
# no warning (a broken link, a page left out of the nav), into a throwaway directory.
docs-check: setup
	$(BIN)/python scripts/docs_index.py --check
	@set -e; d=$$(mktemp -d); trap 'rm -rf "$$d"' EXIT; NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir "$$d"

# The import contracts of shared/DESIGN.md (pyproject.toml [tool.importlinter]): layers, a pure core,
# data apart from models, models apart from the harness, no cycles.
lint-imports: setup
	$(BIN)/lint-imports --no-cache

# The tests in a random order (pytest-randomly). The header prints the seed ("Using
# --randomly-seed=N"); SEED=N replays that order.
test-random: setup
	$(PYTEST) tests -p randomly $(if $(SEED),--randomly-seed=$(SEED)) $(TEST_ARGS)

setup:
	@if [ -f "$(STAMP)" ] && [ "$$(cat $(STAMP))" = "$(KEY)" ]; then exit 0; fi; \
	set -e; \
	[ -x "$(BIN)/python" ] || $(PYTHON) -m venv $(VENV); \
	if [ "$(LOCK)" = 0 ]; then \
		echo "wmcore: setting up $(VENV), newest versions (torch: $(TORCH_SPEC))"; \
		$(BIN)/python -m pip install --quiet $(TORCH_SPEC); \
		$(BIN)/python -c "import importlib.metadata as m; print('torch==' + m.version('torch'))" > $(VENV)/torch-pin.txt; \
		$(BIN)/python -m pip install --quiet --upgrade --upgrade-strategy eager -c $(VENV)/torch-pin.txt -e '.[dev,sim]'; \
	else \
		echo "wmcore: setting up $(VENV) from $(LOCK_FILE) (torch: $(TORCH_SPEC))"; \
		lockpy=$$(sed -n 's/^# This file is autogenerated by pip-compile with Python \([0-9.]*\)$$/\1/p' $(LOCK_FILE)); \
		venvpy=$$($(BIN)/python -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
		[ "$$lockpy" = "$$venvpy" ] || echo "wmcore: warning: $(LOCK_FILE) was made with Python $$lockpy, $(VENV) has $$venvpy; where pip finds no build of a locked version: make clean, then PYTHON=python$$lockpy; or LOCK=0" >&2; \
		$(BIN)/python -m pip install --quiet --no-deps -c $(LOCK_FILE) $(TORCH_SPEC); \
		$(BIN)/python -m pip install --quiet -r $(LOCK_FILE) -e '.[dev,sim]'; \
	fi; \
	$(BIN)/python -m pip install --quiet --no-deps -r $(NO_DEPS); \
	echo "$(KEY)" > "$(STAMP)"

# Regenerates $(LOCK_FILE) with pip-tools' pip-compile: pip's own resolver, with pip's configuration
# (its indexes and find-links, where the CPU build of torch may lie). Input: pyproject.toml's
# dependencies and its dev and sim extras, torch held at TORCH_VERSION. The current pins are kept
# where they still fit; UPGRADE=1 moves everything to the newest versions. The torch line loses its
# local label (+cpu): the lock pins torch's version, TORCH_SPEC picks the build. Markers of direct
# dependencies (decord's x86_64) stay. gym-pusht is pinned by hand in $(NO_DEPS).
lock:
	@set -e; tools=$$(mktemp -d); trap 'rm -rf "$$tools"' EXIT; \
	$(PYTHON) -m venv "$$tools"; \
	"$$tools/bin/python" -m pip install --quiet $(PIP_TOOLS); \
	CUSTOM_COMPILE_COMMAND="make lock" "$$tools/bin/pip-compile" --quiet --strip-extras --allow-unsafe \
		--no-emit-index-url --no-emit-find-links --extra dev --extra sim \
		--upgrade-package "torch==$(TORCH_VERSION)" $(if $(filter 1,$(UPGRADE)),--upgrade) \
		--output-file $(LOCK_FILE) pyproject.toml; \
	sed -i -E 's/^(torch==[^+ ;]+)\+[^ ;]*/\1/' $(LOCK_FILE); \
	echo "wmcore: wrote $(LOCK_FILE); the next make setup installs it"

# Training episodes (seeds 0..149; the committed evaluation set wmcore/fixtures/pusht uses 10000..10031).
pusht-data: setup
	@[ -f $(PUSHT_TRAIN)/index.json ] || $(BIN)/wmcore make-fixtures pusht --out $(PUSHT_TRAIN) --episodes 150 --steps 300 --seed 0

# Trains into $(TRAIN_OUT) (resumable: rerun to continue); the model lands in $(TRAIN_OUT)/model.
train: pusht-data
	$(BIN)/wmcore train --data $(PUSHT_TRAIN) --out $(TRAIN_OUT) --name pusht-lewm --seed 0

# Stage 1: encoder + predictor (L1 + SIGReg + inverse dynamics); stage 2: a fresh predictor (MSE) on the
# frozen stage-1 encoder. Each stage resumes when rerun; a finished stage 1 is not redone.
train-ac-tiny: pusht-data
	@[ -f $(AC_TRAIN_OUT)/stage1/model/model.safetensors ] || $(BIN)/wmcore train --arch ac-tiny --data $(PUSHT_TRAIN) \
		--out $(AC_TRAIN_OUT)/stage1 --model-config recipes/pusht-ac-tiny-stage1.json --steps 3000 --seed 0
	$(BIN)/wmcore train --arch ac-tiny --data $(PUSHT_TRAIN) --out $(AC_TRAIN_OUT)/stage2 --name pusht-ac-tiny \
		--model-config recipes/pusht-ac-tiny-stage2.json --encoder-from $(AC_TRAIN_OUT)/stage1/model --steps 5000 --seed 0

# The third embedded model (wmcore/fixtures/models/pusht-wm, the one that plans; see its MODEL_CARD.md): 1 000
# generated episodes (seeds 0..999, two sets of 500, ~7 min each on one core; the second starts where
# the first ends), then both stages of recipes/pusht-wm.json (resumable: rerun to continue).
WM_DATA_A ?= data/pusht-wm-0
WM_DATA_B ?= data/pusht-wm-500
WM_TRAIN_OUT ?= runs/train-pusht-wm
pusht-wm-data: setup
	@[ -f $(WM_DATA_A)/index.json ] || $(BIN)/wmcore make-fixtures pusht --out $(WM_DATA_A) --episodes 500 --steps 300 --seed 0
	@[ -f $(WM_DATA_B)/index.json ] || $(BIN)/wmcore make-fixtures pusht --out $(WM_DATA_B) --episodes 500 --steps 300 --seed 500

train-wm: pusht-wm-data
	$(BIN)/wmcore train-keypoint --data $(WM_DATA_A) $(WM_DATA_B) --out $(WM_TRAIN_OUT) --recipe recipes/pusht-wm.json

# The thinking model pusht-refine (wmcore/fixtures/models/pusht-refine, see its MODEL_CARD.md): a
# refinement block over the frozen embedded pusht-wm, on pusht-wm's training episodes (resumable).
REFINE_TRAIN_OUT ?= runs/train-pusht-refine
train-refine: pusht-wm-data
	$(BIN)/wmcore train-refine --data $(WM_DATA_A) $(WM_DATA_B) --out $(REFINE_TRAIN_OUT) --recipe recipes/pusht-refine.json --base pusht-wm

# The ThinkJEPA-style thinking model pusht-thinker (wmcore/fixtures/models/pusht-thinker, see its
# MODEL_CARD.md): a thinker over sparse past frames FiLMing the frozen pusht-wm's predictor, and its
# parameter-matched control (the same networks reading the current frame only), both on pusht-wm's
# training episodes (resumable).
THINKER_TRAIN_OUT ?= runs/train-pusht-thinker
THINKER_CONTROL_OUT ?= runs/train-pusht-thinker-control
train-thinker: pusht-wm-data
	$(BIN)/wmcore train-thinker --data $(WM_DATA_A) $(WM_DATA_B) --out $(THINKER_TRAIN_OUT) --recipe recipes/pusht-thinker.json --base pusht-wm
	$(BIN)/wmcore train-thinker --data $(WM_DATA_A) $(WM_DATA_B) --out $(THINKER_CONTROL_OUT) --recipe recipes/pusht-thinker-control.json --base pusht-wm

# The thinking curve of pusht-refine (scripts/thinking_curve.py): K = 1, 2, 4, 8 on the 32 held-out
# episodes and the 64 planning tasks; resumable (a K whose control report exists is not re-planned).
THINK_OUT ?= runs/thinking-refine
thinking-curve: setup
	$(BIN)/python scripts/thinking_curve.py --model pusht-refine --think 1 2 4 8 --out $(THINK_OUT)

# The thinking curve of pusht-thinker with its ablations (thinker features zeroed and shuffled; the
# parameter-matched control that `make train-thinker` trains beside it): K = 1, 2, 4, 8 on the 32
# held-out episodes and the 64 tasks (resumable: planned K are read back).
THINKER_CURVE_OUT ?= runs/thinking-thinker
thinker-curve: setup
	$(BIN)/python scripts/thinking_curve.py --model pusht-thinker --think 1 2 4 8 --ablations --control thinker:$(THINKER_CONTROL_OUT)/model --out $(THINKER_CURVE_OUT)

# Drift vs control over versions of pusht-wm and the older models (scripts/drift_vs_control.py; needs
# make train-wm for the run's snapshots): short-training and smaller-data predictors on pusht-wm's
# encoder, checkpoints, degraded copies, pusht-lewm; all planned with the lewm preset on the 64 tasks.
STUDY_OUT ?= runs/drift-vs-control
WM_VARIANT = $(BIN)/wmcore train-keypoint --data $(WM_DATA_A) $(WM_DATA_B) --recipe recipes/pusht-wm.json \
	--encoder-from wmcore/fixtures/models/pusht-wm
drift-vs-control: pusht-wm-data
	@[ -f runs/wm-p250/model/model.safetensors ] || $(WM_VARIANT) --out runs/wm-p250 --predictor-steps 250
	@[ -f runs/wm-p1000/model/model.safetensors ] || $(WM_VARIANT) --out runs/wm-p1000 --predictor-steps 1000
	@[ -f runs/wm-e100/model/model.safetensors ] || $(WM_VARIANT) --out runs/wm-e100 --episodes 100 --predictor-steps 4000
	$(BIN)/python scripts/drift_vs_control.py --planner-preset lewm --threads 1 --out $(STUDY_OUT) \
		--version wm=pusht-wm s2000=keypoint:$(WM_TRAIN_OUT)/snapshots/step-002000 \
		s6000=keypoint:$(WM_TRAIN_OUT)/snapshots/step-006000 p250=keypoint:runs/wm-p250/model \
		p1000=keypoint:runs/wm-p1000/model e100=keypoint:runs/wm-e100/model \
		--noisy wm-n0.5=pusht-wm@0.5 wm-n2=pusht-wm@2 --version lewm=pusht-lewm

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
