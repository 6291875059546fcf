"""The one contract every stage follows, and the small protocols its backends implement.

    run(cfg, inputs, *, backends, seed) -> StageResult

- `cfg`: the stage's own frozen config section (components/config.py).
- `inputs`: named `ArtifactRef`s, opened through the `ArtifactStore` (a local directory or its S3 mirror), never
  through paths the caller chose; so a stage can run on any machine that shares the store.
- `backends`: what the stage computes with, injected: the models of its inputs (`components.backends.models`,
  which decides device and dtype and loads each model once per stage), the gold oracle, the judge, and where
  fan-out work runs. A stage never constructs a backend from a path.
- `seed`: `Seeds` (components/seeds.py), derived once per (loop seed, iteration, stage) by `SeedSequence`.
- `StageResult`: the stage's outputs (tables, model directories, JSON documents), its metrics, already named
  `stage/metric` where they are computed (the same strings MLflow, gate specs and docs use), and trajectories.
  One generic Prefect task (tasks/stages.py) publishes any StageResult.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from components.seeds import Seeds, derive_seed  # noqa: F401 - the stage contract's seed type, re-exported

if TYPE_CHECKING:  # pyarrow and the store only for annotations: importing this module stays cheap
    import pyarrow as pa

    from components.artifacts import ArtifactRef, ArtifactStore
    from components.judge import JudgeRunner


# ---- inputs and results ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Inputs:
    """A stage's named input artifacts; `None` = an optional input that does not exist (e.g. no reward model yet).
    A name may hold a tuple of refs (e.g. every iteration's preferences), read as one concatenated table.
    Picklable: a Ray worker or an `accelerate` process rebuilds the store from `store_root`/`store_remote`."""

    store_root: str
    refs: Mapping[str, ArtifactRef | tuple[ArtifactRef, ...] | None]
    iteration: int
    scratch: str = ""  # a directory on the store's filesystem where the stage writes model directories
    store_remote: str | None = None

    @property
    def store(self) -> ArtifactStore:
        return _store(self.store_root, self.store_remote)

    def has(self, name: str) -> bool:
        return bool(self.refs.get(name))

    def ref(self, name: str) -> ArtifactRef:
        ref = self.refs.get(name)
        if not ref or isinstance(ref, tuple):
            raise KeyError(f"stage input {name!r} is missing (inputs: {sorted(k for k, v in self.refs.items() if v)})")
        return ref

    def table(self, name: str) -> pa.Table:
        import pyarrow as pa

        refs = self.refs.get(name)
        if not refs:
            raise KeyError(f"stage input {name!r} is missing")
        store = self.store
        return pa.concat_tables([store.read_table(r) for r in (refs if isinstance(refs, tuple) else (refs,))])

    def path(self, name: str) -> str:
        """Where a model input is loaded from: its directory in the store (fetched from the S3 mirror if needed),
        or the hub id of a checkpoint the loop started from and never copied."""
        ref = self.ref(name)
        return ref.meta["hub_id"] if "hub_id" in ref.meta else str(self.store.path(ref))

    def out_dir(self, name: str) -> Path:
        return Path(self.scratch) / name


@functools.lru_cache(maxsize=4)
def _store(root: str, remote: str | None) -> ArtifactStore:
    """One store per process and root (an S3 mirror holds a client)."""
    from components.artifacts import ArtifactStore

    return ArtifactStore(root, remote=remote)


@dataclass(frozen=True)
class Output:
    """One artifact a stage produced: exactly one of `table`, `dir` (written under `inputs.scratch`), `doc`."""

    kind: str
    table: pa.Table | None = None
    dir: Path | None = None
    doc: dict | None = None
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageResult:
    outputs: dict[str, Output] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)  # "stage/metric" -> value
    history: list[dict[str, float]] = field(default_factory=list)  # trajectories, each row with its "step"
    records: dict[str, list[dict]] = field(default_factory=dict)  # side records the task writes (human queue)


# ---- backends -------------------------------------------------------------------------------------------------
class Scorer(Protocol):
    """Pointwise rewards of (prompt, completion) pairs, float64 [size, N]: one row per ensemble member (a
    reward model, one head of a shared-backbone model), one row for the toy gold oracle. The pairwise LLM judge
    answers a different question (which of two is better) and has its own protocol (components.judge)."""

    size: int

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray: ...


class Ensemble(Scorer, Protocol):
    """A Scorer whose rows combine into one reward by the loop's `ensemble.aggregation`."""

    aggregation: str

    def reward(self, member_rewards: np.ndarray) -> np.ndarray: ...


class Generator(Protocol):
    """Sampled completions: `n` per prompt, prompt-major, seeded; returns (generations, stats)."""

    def sample(self, prompts: list[str], n: int, seed: int, **overrides) -> tuple[list, dict]: ...


MapFn = Callable[[Callable, list], Iterable]  # map(fn, jobs) in job order: builtin `map`, or Ray (tasks/fanout.py)


@dataclass
class Backends:
    models: Any = None  # components.backends.models.Models: this stage's policies, reward models, generators
    gold: Scorer | None = None
    judge: JudgeRunner | None = None
    map_members: MapFn = map
    map_shards: MapFn = map
