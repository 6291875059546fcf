"""Test-wide environment: offline, telemetry off, one CPU thread per process (set before heavy imports)."""

import os

for key, value in {
    "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false", "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}.items():
    os.environ.setdefault(key, value)

import tempfile
from pathlib import Path

import pytest

# Prefect's persisted task results (the cache that makes re-runs skip stages) go to a per-session scratch dir.
os.environ.setdefault("PREFECT_RESULTS_LOCAL_STORAGE_PATH", tempfile.mkdtemp(prefix="alignloop-prefect-"))
os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")

# Small enough for CI, big enough that training visibly moves the tiny policy.
TINY_BOOTSTRAP = {
    "prompts": {"n_train_per_topic": 6, "n_eval_per_topic": 2},
    "corpus": {"n_reviews": 4000, "n_heldout": 256},
    "model": {"n_layer": 2, "n_embd": 64, "n_head": 2, "n_positions": 64},
    "train": {"steps": 300, "batch_size": 64},
    "eval": {"n_prompts": 16, "best_of": 4},
}


@pytest.fixture(scope="session")
def tiny_bootstrap(tmp_path_factory) -> dict[str, Path]:
    """The embedded default built small: prompt pool, tokenizer and a pre-trained tiny policy."""
    from components.toy.bootstrap import build_all

    return build_all(tmp_path_factory.mktemp("bootstrap"), TINY_BOOTSTRAP)


@pytest.fixture(scope="session")
def prefect_backend():
    """A temporary Prefect API for the session (real server, throw-away database)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
