"""Test-wide environment: offline, telemetry off, one CPU thread per process (set before heavy imports)."""

import os
import tempfile
from pathlib import Path

import pytest

from components.env import apply_defaults

apply_defaults(offline=True)  # the tests run the embedded default: offline, one thread (components/env.py)

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


def flow_config(tmp_path: Path, boot: dict, **label) -> Path:
    """A two-minute loop config on the tiny bootstrap (the flow and registry tests share its run)."""
    import yaml

    cfg = {
        "name": "flowtest", "seed": 3, "policy_init": str(boot["policy"]), "prompt_pool": str(boot["prompts"]),
        "sample": {"n_prompts": 24},
        "generate": {"samples_per_prompt": 4, "max_new_tokens": 24, "batch_size": 128},
        "models": {"logprob_batch_size": 64},
        "label": {"seed_gold_pairs": 96, "min_margin_over_std": 0.5, **label},
        "ensemble": {"members": 3},
        "train_reward": {"epochs": 2, "learning_rate": 1e-4},
        "train_policy": {"batch_size": 8},
        "evaluate": {"n_prompts": 8, "samples_per_prompt": 2, "bootstrap_resamples": 200},
    }
    path = tmp_path / "flow.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def make_flow_config():
    """`flow_config` for test modules (importing it from `conftest` is ambiguous: tests/stages has one too)."""
    return flow_config


@pytest.fixture(scope="session")
def two_iteration_loop(tmp_path_factory, tiny_bootstrap, prefect_backend):
    """(config path, workspace, ledgers) of one real two-iteration run, shared by tests/flows/*. Tests that move
    registry aliases must put them back."""
    from flows.iteration import continual_flow

    tmp = tmp_path_factory.mktemp("flow")
    cfg, ws = flow_config(tmp, tiny_bootstrap), tmp / "ws"
    ledgers = continual_flow(str(cfg), [], str(ws), 2)
    return cfg, ws, ledgers


TABLE_KINDS = {"pool": "prompts", "prompts": "prompts", "rollouts": "rollouts", "preferences": "preferences",
               "human": "preferences", "seed_preferences": "preferences"}


@pytest.fixture
def stage_inputs(tmp_path):
    """stage_inputs(iteration=0, **named) -> `components.contract.Inputs` in a store under tmp_path: a table is
    stored as the kind its name implies (schema columns it lacks filled with defaults: hand-built test data), a list
    of tables as a tuple of refs, a str path as a model input loaded from that path (not copied)."""
    return stage_inputs_under(tmp_path)


@pytest.fixture(scope="session")
def stage_inputs_at():
    """stage_inputs_at(root) -> the `stage_inputs` builder with its store under `root`: for module- or
    session-scoped fixtures (e.g. with a root from tmp_path_factory), which cannot use the per-test fixture."""
    return stage_inputs_under


def stage_inputs_under(tmp_path: Path):
    import hashlib

    import pyarrow as pa

    from components.artifacts import ArtifactRef, ArtifactStore
    from components.contract import Inputs
    from components.schemas import OPTIONAL, schema_of

    store = ArtifactStore(tmp_path / "store")

    def put(name, table):
        kind = TABLE_KINDS[name]
        for field in schema_of(kind)[1]:
            if field.name not in table.column_names and field.name in OPTIONAL:
                table = table.append_column(field.name, pa.nulls(table.num_rows, field.type))
            elif field.name not in table.column_names:
                default = {"split": "train", "source": "s", "iteration": 0}.get(field.name, 0 if pa.types.is_integer(
                    field.type) or pa.types.is_floating(field.type) else "")
                table = table.append_column(field.name, pa.array([default] * table.num_rows).cast(field.type))
        return store.put_table(kind, table)

    def make(iteration: int = 0, **named):
        refs = {}
        for name, v in named.items():
            if v is None:
                continue
            if isinstance(v, pa.Table):
                refs[name] = put(name, v)
            elif isinstance(v, list):
                refs[name] = tuple(put(name, t) for t in v)
            else:
                refs[name] = ArtifactRef(kind="policy", sha256=hashlib.sha256(str(v).encode()).hexdigest(),
                                         uri=str(v), meta={"hub_id": str(v)})
        scratch = Path(tempfile.mkdtemp(dir=tmp_path))
        return Inputs(str(store.root), refs, iteration, scratch=str(scratch))

    return make
