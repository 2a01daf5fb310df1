# The README's two commands. Each creates .venv on first use and reinstalls only when pyproject.toml
# or TORCH_SPEC changed (the stamp holds their hash). torch is installed first and pinned, so pip
# never resolves a torch of its own; TORCH_SPEC="torch==X --index-url ..." picks another build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
GYM_PUSHT := gym-pusht==0.1.8
BIN := $(VENV)/bin
STAMP := $(VENV)/.wmcore-installed
KEY := $(shell $(PYTHON) -c "import hashlib,sys; print(hashlib.sha256(open('pyproject.toml','rb').read() + sys.argv[1].encode()).hexdigest()[:16])" "$(TORCH_SPEC) $(GYM_PUSHT)")
BENCH_ARGS ?=
TEST_ARGS ?=
# The recipe of the embedded default model (fixtures/models/pusht-lewm, see its MODEL_CARD.md).
PUSHT_TRAIN ?= data/pusht-train
TRAIN_OUT ?= runs/train-pusht-lewm
# ... and of the second embedded model (fixtures/models/pusht-ac-tiny): two stages, see its MODEL_CARD.md.
AC_TRAIN_OUT ?= runs/train-pusht-ac-tiny

.PHONY: bench test setup clean train train-ac-tiny pusht-data

bench: setup
	$(BIN)/python -m pytest bench --benchmark-only --benchmark-autosave --benchmark-storage=runs/benchmarks $(BENCH_ARGS)

test: setup
	$(BIN)/python -m pytest tests $(TEST_ARGS)

setup:
	@if [ -f "$(STAMP)" ] && [ "$$(cat $(STAMP))" = "$(KEY)" ]; then exit 0; fi; \
	set -e; \
	echo "wmcore: setting up $(VENV) (torch: $(TORCH_SPEC))"; \
	[ -x "$(BIN)/python" ] || $(PYTHON) -m venv $(VENV); \
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC); \
	$(BIN)/python -m pip install --quiet -e '.[dev,sim]'; \
	$(BIN)/python -m pip install --quiet --no-deps $(GYM_PUSHT); \
	echo "$(KEY)" > "$(STAMP)"

# Training episodes (seeds 0..149; the committed evaluation set fixtures/pusht uses 10000..10031).
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

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
