"""MLflow as the system of record: one experiment per loop, a parent run per iteration, a child run per stage,
lineage tags, and the model registry with aliases (`champion`, `candidate`, `previous`).

Only the MLflow client API is used (no fluent global state), so several processes and threads can track
safely. Everything here is idempotent by tags, which is what makes a resumed iteration reuse its runs and
registered versions instead of duplicating them.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.artifacts import ArtifactRef
from components.env import TELEMETRY_OFF, setdefaults
from components.faults import fault_point

TAG_ITER, TAG_STAGE, TAG_SHA = "alignloop.iteration", "alignloop.stage", "alignloop.artifact_sha"
POLICY, REWARD_MODEL = "policy", "reward-model"
TAG_PROMOTED_OVER = "alignloop.promoted_over"


def _client(tracking_uri: str):
    setdefaults(TELEMETRY_OFF)
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


class Tracker:
    def __init__(self, tracking_uri: str, artifact_root: str, experiment: str):
        self.client = _client(tracking_uri)
        self.tracking_uri = tracking_uri
        exp = self.client.get_experiment_by_name(experiment)
        # An explicit artifact location, or artifacts land in ./mlruns of whatever directory we run in.
        self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
            experiment, artifact_location=artifact_root)

    # ---- runs -------------------------------------------------------------------------------------------
    def _find(self, filter_string: str):
        runs = self.client.search_runs([self.experiment_id], filter_string, order_by=["attributes.start_time DESC"],
                                       max_results=1)
        return runs[0] if runs else None

    def iteration_run(self, iteration: int, loop: str, tags: dict[str, str], params: dict[str, Any]) -> str:
        """The iteration's parent run: reused when resuming (unfinished runs with the same iteration tag)."""
        found = self._find(f"tags.`{TAG_ITER}` = '{iteration}' and tags.`{TAG_STAGE}` = 'iteration'"
                           " and attributes.status != 'FAILED'")
        if found and found.info.status != "FINISHED":
            # A previous attempt crashed: mark its dangling stage runs killed, keep the parent.
            for child in self.client.search_runs([self.experiment_id],
                                                 f"tags.`mlflow.parentRunId` = '{found.info.run_id}'"
                                                 " and attributes.status = 'RUNNING'"):
                self.client.set_terminated(child.info.run_id, "KILLED")
            self.client.update_run(found.info.run_id, status="RUNNING")
            return found.info.run_id
        if found:
            return found.info.run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{loop}/iter-{iteration}",
                                     tags={TAG_ITER: str(iteration), TAG_STAGE: "iteration", **tags})
        _log_batch(self.client, run.info.run_id, params=params)
        return run.info.run_id

    def finish_iteration(self, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> None:
        """The iteration's summary metrics and tags in one request."""
        _log_batch(self.client, run_id, [(k, v, 0) for k, v in metrics.items()], tags)

    def end_run(self, run_id: str, status: str = "FINISHED", error: str | None = None) -> None:
        if error:
            self.client.set_tag(run_id, "alignloop.error", error[-4000:])
        self.client.set_terminated(run_id, status)

    @contextlib.contextmanager
    def stage_run(self, parent_run_id: str, iteration: int, stage: str, loop: str, *,
                  inputs: dict[str, ArtifactRef], tags: dict[str, str], params: dict[str, Any]) -> Iterator[StageRun]:
        run = self.client.create_run(self.experiment_id, run_name=f"{loop}/iter-{iteration}/{stage}", tags={
            "mlflow.parentRunId": parent_run_id, TAG_ITER: str(iteration), TAG_STAGE: stage, **tags,
            **{f"input.{k}": ref.sha256 for k, ref in inputs.items()}})
        stage_run = StageRun(self.client, run.info.run_id, stage)
        _log_batch(self.client, run.info.run_id, params=params)
        try:
            yield stage_run
        except BaseException as err:
            from components.interrupts import caused_by_interrupt

            self.client.set_tag(run.info.run_id, "alignloop.error",
                                "".join(traceback.format_exception(err))[-4000:])
            self.client.set_terminated(run.info.run_id, "KILLED" if caused_by_interrupt(err) else "FAILED")
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")

    # ---- registry -----------------------------------------------------------------------------------------
    def register(self, name: str, ref: ArtifactRef, source: str, run_id: str, tags: dict[str, str]) -> str:
        """Register `source` as a version of `name`; idempotent by the artifact's content hash."""
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        existing = self.client.search_model_versions(f"name = '{name}' and tags.`{TAG_SHA}` = '{ref.sha256}'")
        if existing:
            return str(existing[0].version)
        mv = self.client.create_model_version(name, source=source, run_id=run_id,
                                              tags={TAG_SHA: ref.sha256, **tags})
        return str(mv.version)  # MLflow returns an int here, a str elsewhere

    def alias(self, name: str, alias: str):
        """The ModelVersion an alias points at, or None."""
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, version)

    def promote(self, name: str, version: str) -> None:
        """champion → previous, `version` → head and champion. `champion` is written last, so a crash at any point
        leaves the old champion in place and running promote again completes the move (tested by killing the
        process between the writes). The replaced version is kept in the tag `alignloop.promoted_over`, which lets
        rollback walk back more than one step."""
        version = str(version)
        old = self.alias(name, "champion")
        if old is not None and str(old.version) != version:  # MLflow returns versions as int
            self.client.set_model_version_tag(name, version, TAG_PROMOTED_OVER, str(old.version))
            self.set_alias(name, "previous", str(old.version))
            fault_point("promote:after-previous")
        self.set_alias(name, "head", version)
        fault_point("promote:after-head")
        self.set_alias(name, "champion", version)

    def head(self, name: str):
        """The training head (what the next iteration samples from and trains): alias `head`, else the champion
        (a registry from before heads existed, or one whose head was never set)."""
        return self.alias(name, "head") or self.alias(name, "champion")

    def rollback(self, name: str, tags: dict[str, str]) -> tuple[str, str]:
        """champion → previous (and head → the same), and previous → the version that one had replaced (or unset):
        repeated rollbacks walk back the promotion history. `tags` go on the demoted version (who, why). Returns
        (demoted, restored). A crash after the first write leaves champion == previous; a re-run then only
        finishes."""
        champ, prev = self.alias(name, "champion"), self.alias(name, "previous")
        if prev is None:
            raise LookupError(f"{name}: no `previous` alias, nothing to roll back to")
        demoted, restored = (str(champ.version) if champ is not None else ""), str(prev.version)
        if demoted != restored:
            for k, v in tags.items():
                self.client.set_model_version_tag(name, demoted, k, v)
            self.set_alias(name, "champion", restored)
            fault_point("rollback:after-champion")
        self.set_alias(name, "head", restored)  # the head may descend from the demoted champion: restart from it
        before = prev.tags.get(TAG_PROMOTED_OVER)
        if before:
            self.set_alias(name, "previous", before)
        else:
            self.client.delete_registered_model_alias(name, "previous")
        return demoted, restored

    def version_by_sha(self, name: str, sha: str):
        """The registered version of `name` holding the artifact with content hash `sha`, or None."""
        found = self.client.search_model_versions(f"name = '{name}' and tags.`{TAG_SHA}` = '{sha}'")
        return found[0] if found else None

    def log_gate(self, run_id: str, decision: dict, table_markdown: str) -> None:
        """The gate decision on a run: JSON + Markdown table as artifacts, each check's value as a metric."""
        self.client.log_dict(run_id, decision, "gate/decision.json")
        self.client.log_text(run_id, table_markdown, "gate/decision.md")
        _log_batch(self.client, run_id, [(f"gate/{c['name']}", c["value"], 0) for c in decision["checks"]],
                   {"alignloop.gate_reasons": "; ".join(decision["reasons"]) or "all passed"})


def _log_batch(client, run_id: str, metrics: list[tuple[str, float, int]] = (), tags: dict[str, str] | None = None,
               params: dict[str, Any] | None = None) -> None:
    """(key, value, step) metrics, tags and params in as few requests as MLflow allows (per request: 1000 entities,
    of them at most 100 params and 100 tags). One request per value cost ~50 ms each here (~3.5 s per iteration for
    the params alone). NaN/inf metrics are skipped (some stores reject them); param values are capped at MLflow's
    6000 characters."""
    import time

    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    ms = [Metric(k, float(v), now, step) for k, v, step in metrics
          if isinstance(v, (int, float)) and math.isfinite(v)]
    ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
    ts = [RunTag(k, v) for k, v in (tags or {}).items()]
    chunks = ([xs[i:i + n] for i in range(0, len(xs), n)] for xs, n in ((ms, 800), (ps, 100), (ts, 100)))
    for m, p, t in itertools.zip_longest(*chunks, fillvalue=[]):
        client.log_batch(run_id, metrics=m, params=p, tags=t)


class StageRun:
    def __init__(self, client, run_id: str, stage: str):
        self.client, self.run_id, self.stage = client, run_id, stage

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Metrics named `stage/metric` where they are computed, logged as they are, in one request."""
        self.log_history([{**metrics, "step": step or 0}])

    def log_history(self, rows: list[dict[str, float]]) -> None:
        """Metric trajectories (each row: metrics at row["step"]) in one request per 1000 values."""
        _log_batch(self.client, self.run_id, [(k, v, int(r["step"])) for r in rows for k, v in r.items()
                                              if k != "step"])

    def outputs(self, refs: dict[str, ArtifactRef]) -> None:
        _log_batch(self.client, self.run_id, tags={f"output.{k}": ref.sha256 for k, ref in refs.items()})

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)
