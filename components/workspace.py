"""The workspace: everything a loop writes, in one directory outside the code repository.

    <root>/store/        content-addressed artifacts (components.artifacts)
    <root>/mlflow.db     MLflow tracking + registry (SQLite); artifacts under <root>/mlartifacts
    <root>/data/         git + DVC repository versioning each iteration's data, remote <root>/dvc-remote
    <root>/ledger/       one JSON per iteration: the state it started from, its outputs and its decision
    <root>/prefect/      persisted Prefect task results (what lets a re-run skip finished stages)
    <root>/human_queue/  iter-NNNN.jsonl: pairs waiting for a human (alignloop labels queue / import)
    <root>/reports/      iter-NNNN.html: the iteration reports
    <root>/judge_cache/  the LLM judge's answers, so a re-run never pays twice

The ledger is the loop's memory between processes: an iteration records the champion and reward model it
started from before its first stage, so a resumed iteration sees exactly the inputs the crashed one saw.

Services (the team stack, `alignloop stack up`) replace the local defaults through the environment, so the
same workspace code runs on a laptop and against shared servers; secrets never pass through here:
    MLFLOW_TRACKING_URI          tracking + registry server (default: the SQLite file above)
    ALIGNLOOP_DVC_REMOTE         DVC remote URL, e.g. s3://alignloop/dvc (default <root>/dvc-remote)
    ALIGNLOOP_ARTIFACT_REMOTE    S3 mirror of the artifact store, e.g. s3://alignloop/store (components.artifacts)
    AWS_ENDPOINT_URL             S3-compatible endpoint for all of them (boto3, dvc-s3, MLflow read it)
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: str | Path) -> Workspace:
        return cls(Path(root).expanduser().resolve())

    @property
    def instance_id(self) -> str:
        """Random id made when the workspace is first used: part of every cache key, so a deleted and
        recreated workspace at the same path never reuses results that point at artifacts it no longer has."""
        p = self.root / ".id"
        if not p.exists():
            import uuid

            self.root.mkdir(parents=True, exist_ok=True)
            tmp = p.with_suffix(".tmp")
            tmp.write_text(uuid.uuid4().hex)
            os.replace(tmp, p)
        return p.read_text().strip()

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str | None:
        """None with a tracking server: the server's --artifacts-destination decides (e.g. S3)."""
        return None if os.environ.get("MLFLOW_TRACKING_URI") else (self.root / "mlartifacts").as_uri()

    @property
    def data_repo(self) -> Path:
        return self.root / "data"

    @property
    def dvc_remote(self) -> Path:
        return self.root / "dvc-remote"

    @property
    def dvc_remote_url(self) -> str:
        return os.environ.get("ALIGNLOOP_DVC_REMOTE") or str(self.dvc_remote)

    @property
    def s3_endpoint(self) -> str | None:
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")

    @property
    def results(self) -> Path:
        return self.root / "prefect"

    @property
    def human_queue_dir(self) -> Path:
        return self.root / "human_queue"

    def human_queue(self, iteration: int) -> Path:
        return self.human_queue_dir / f"iter-{iteration:04d}.jsonl"

    def report(self, iteration: int) -> Path:
        return self.root / "reports" / f"iter-{iteration:04d}.html"

    @property
    def judge_cache(self) -> Path:
        return self.root / "judge_cache"

    @staticmethod
    def data_tag(iteration: int) -> str:
        """The data repo's git tag of an iteration: committed and pushed to the DVC remote."""
        return f"iter-{iteration}"

    @staticmethod
    def data_path(iteration: int, name: str = "") -> str:
        """Where an iteration's file sits inside the data repo."""
        return f"iterations/iter-{iteration:04d}/{name}".rstrip("/")

    def _ledger(self, iteration: int) -> Path:
        return self.root / "ledger" / f"iter-{iteration:04d}.json"

    def read_ledger(self, iteration: int) -> dict | None:
        p = self._ledger(iteration)
        return json.loads(p.read_text()) if p.exists() else None

    def write_ledger(self, iteration: int, doc: dict) -> None:
        p = self._ledger(iteration)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1, sort_keys=True, default=str))
        os.replace(tmp, p)  # readers see the old or the new ledger, never a torn one

    def ledgers(self) -> list[dict]:
        d = self.root / "ledger"
        return [json.loads(p.read_text()) for p in sorted(d.glob("iter-*.json"))] if d.exists() else []

    def next_iteration(self) -> int:
        """The unfinished (crashed) iteration to resume, else one past the last one. A `failed` iteration (a
        stage raised after its retries) is history, not work: the next run starts a fresh iteration."""
        docs = self.ledgers()
        unfinished = [d["iteration"] for d in docs if d.get("status") not in ("finished", "failed")]
        if unfinished:
            return min(unfinished)
        return max((d["iteration"] for d in docs), default=-1) + 1

    def lock(self):
        """Exclusive lock: one loop process per workspace at a time (a second one fails fast). Holding it proves
        no writer is active, so a crashed writer's leftovers in the store's staging area are removed here."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / ".lock", "w")  # noqa: SIM115 - held open by the caller for the lock's lifetime
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise RuntimeError(f"{self.root} is in use by another alignloop process") from None
        import shutil

        for leftover in (self.store / ".staging").glob("*"):
            shutil.rmtree(leftover, ignore_errors=True)
        return fh
