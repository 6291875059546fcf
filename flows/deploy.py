"""Scheduled iterations: a Prefect deployment of the loop on a cron schedule, at most one iteration at a time.

    alignloop deploy --config configs/tiny.yaml --workspace /srv/alignloop/ws      # nightly at 02:00
    prefect worker start --pool alignloop                                           # where it should run

Each scheduled run is one iteration (a crashed one is resumed first; a failed one is history and the run
starts a fresh iteration, see flows.iteration). Two guards keep one loop from running twice at once: the
deployment's concurrency limit of 1 (Prefect decides, by `on_collision`, whether a second trigger waits in
AwaitingConcurrencySlot or is cancelled, and shows that state in the UI/API), and the workspace lock taken
by the flow itself, which also stops a manual `alignloop run` from overlapping a scheduled one.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Literal

from prefect import flow
from pydantic import BaseModel, ConfigDict, Field

from components.workspace import Workspace

REPO = Path(__file__).resolve().parents[1]


class ScheduleConfig(BaseModel):
    """How a loop is deployed; every field is a flag of `alignloop deploy`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("nightly", pattern=r"^[A-Za-z0-9_.-]+$", description="Deployment name (per loop).")
    cron: str = Field("0 2 * * *", description="When iterations start (cron, in `timezone`); default nightly.")
    timezone: str = Field("UTC", description="IANA timezone the cron expression is read in.")
    work_pool: str = Field("alignloop", description="Process work pool the iterations run in (created if missing).")
    on_collision: Literal["enqueue", "cancel_new"] = Field(
        "enqueue", description="A trigger while an iteration runs: wait for it (enqueue) or be cancelled.")
    paused: bool = Field(False, description="Create the schedule paused (trigger runs by hand only).")


@flow(name="alignloop-scheduled")
def scheduled_iteration(config_path: list[str], overrides: list[str] | None = None,
                        workspace: str = "workspace") -> dict:
    """One iteration under the workspace lock (a run that finds the lock held fails fast, saying by whom)."""
    from flows.iteration import iteration_flow

    lock = Workspace.at(workspace).lock()
    try:
        ledger = iteration_flow(config_path, overrides or [], workspace)
    finally:
        lock.close()
    return {k: ledger[k] for k in ("iteration", "status", "decision", "data_rev") if k in ledger}


def run_env(workspace: Path, offline: bool = False) -> dict[str, str]:
    """What a worker-launched flow process needs that `alignloop run` sets itself (see flows.common.quiet_env):
    persisted task results in the workspace, which is what lets a resumed iteration skip finished stages; and,
    for the embedded default only (`offline`, components.env.offline_for), HF_HUB_OFFLINE and OMP_NUM_THREADS."""
    from flows.common import quiet_env

    saved = dict(os.environ)
    try:
        quiet_env(workspace, offline=offline)
        keys = ("HF_HUB_OFFLINE", "DO_NOT_TRACK", "MLFLOW_DISABLE_TELEMETRY", "DVC_NO_ANALYTICS", "OMP_NUM_THREADS",
                "TOKENIZERS_PARALLELISM", "PREFECT_RESULTS_PERSIST_BY_DEFAULT", "PREFECT_RESULTS_LOCAL_STORAGE_PATH")
        return {k: os.environ[k] for k in keys if k in os.environ}
    finally:
        os.environ.clear()
        os.environ.update(saved)


def deploy(configs: list[Path], workspace: Path, overrides: list[str], sched: ScheduleConfig) -> str:
    """Create or update the deployment `alignloop-scheduled/<name>` and its work pool; returns the deployment id."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.exceptions import ObjectAlreadyExists

    from components.config import load_config
    from components.env import offline_for

    offline = offline_for(load_config(configs, overrides))
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(name=sched.work_pool, type="process"))
    source = scheduled_iteration.from_source(str(REPO), "flows/deploy.py:scheduled_iteration")
    deployment_id = source.deploy(
        name=sched.name, work_pool_name=sched.work_pool,
        schedule=CronSchedule(cron=sched.cron, timezone=sched.timezone), paused=sched.paused,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy(sched.on_collision.upper())),
        parameters={"config_path": [str(c.resolve()) for c in configs], "overrides": overrides,
                    "workspace": str(workspace)},
        job_variables={"env": run_env(workspace, offline), "working_dir": str(REPO)},
        tags=["alignloop"], print_next_steps=False)
    return str(deployment_id)
