# Root conftest: only what cannot live in the plugin (wmcore.pytest_plugin, loaded via its entry point).
import os

# Tests and benchmarks must never reach a hub: everything they load is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
