# The README's two commands. Each creates .venv on first use and reinstalls only when pyproject.toml
# or TORCH_SPEC changed (the stamp holds their hash). torch is installed first and pinned, so pip
# never resolves a torch of its own; TORCH_SPEC="torch==X --index-url ..." picks another build.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.wmcore-installed
KEY := $(shell $(PYTHON) -c "import hashlib,sys; print(hashlib.sha256(open('pyproject.toml','rb').read() + sys.argv[1].encode()).hexdigest()[:16])" "$(TORCH_SPEC)")
BENCH_ARGS ?=
TEST_ARGS ?=

.PHONY: bench test setup clean

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
	$(BIN)/python -m pip install --quiet -e '.[dev]'; \
	echo "$(KEY)" > "$(STAMP)"

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
