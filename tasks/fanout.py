"""Ensemble fan-out: reward-model members trained in parallel as Prefect tasks on Ray (prefect-ray).

    alignloop run --config configs/tiny.yaml --set fanout.task_runner=ray [--set fanout.ray_address=auto]

`ray_map(fanout)` is the `map_members` that `components.stages.train_reward.run` trains its members with when
`fanout.task_runner: ray` (with `local` they train one after another in the train_reward task): a map that
submits one `train_reward_member` task per member to prefect-ray's `RayTaskRunner` and gathers their metrics in
member order. Only the member training moves: the train_reward task around it still reads the preferences, scores
the held-out pairs, publishes the ensemble, logs to MLflow and is the cached unit, so caching and resume are as
before. The runner is entered inside that task (a task runner is a context manager of its own), so the member
task runs nest under it in the iteration's flow run, and the jobs (training pairs included) travel through Ray's
object store rather than as Prefect flow parameters. Jobs open their inputs through the artifact store (its S3
mirror on a cluster); members write `member-k` into the task's staging directory, so Ray workers must still see
that path (one machine, or a shared filesystem) and import this package.

Generation sharding is the same pattern: `ray_shard_map(fanout)` is the `map_shards` of
`components.stages.generate.run` with `generate.shards` > 1, one `generate_shard` task per prompt shard
inside the generate task (which stays the cached unit and publishes the rollouts); `_on_ray` is the runner both
maps share.
"""

from __future__ import annotations

import os
from functools import partial

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.utilities.annotations import unmapped

from components.config import FanoutConfig
from components.contract import MapFn
from components.stages.generate import ShardJob
from components.stages.train_reward import MemberJob


# The stage's task (train_reward, generate) is the cached, retried unit: a member or shard is neither cached nor
# persisted on its own.
@task(name="train_reward_member", cache_policy=NO_CACHE, persist_result=False)
def train_member_task(fn, job: MemberJob) -> dict:
    """`fn(job)`'s metrics, plus `worker_pid`: the process that trained the member."""
    import ray

    get_run_logger().info("member %d on Ray node %s, pid %d", job.k, ray.get_runtime_context().get_node_id(),
                          os.getpid())
    return {**fn(job), "worker_pid": os.getpid()}


@task(name="generate_shard", cache_policy=NO_CACHE, persist_result=False)
def generate_shard_task(fn, job: ShardJob) -> tuple[list, dict]:
    """`fn(job)`'s (generations, stats), with `worker_pid` in the stats: the process that sampled the shard."""
    import ray

    get_run_logger().info("shard %d (%d prompts) on Ray node %s, pid %d", job.index, len(job.texts),
                          ray.get_runtime_context().get_node_id(), os.getpid())
    gens, stats = fn(job)
    return gens, {**stats, "worker_pid": os.getpid()}


def _on_ray(task, fanout: FanoutConfig, fn, jobs: list) -> list:
    """`task(fn, job)` for every job, as Prefect task runs on prefect-ray's RayTaskRunner; results in job order."""
    from prefect_ray import RayTaskRunner
    from prefect_ray.context import remote_options

    # "local" (not None) so a private instance never silently joins a cluster found via /tmp/ray; the runner
    # reuses a Ray already initialised in this process, and shuts down only an instance it started.
    init = {"address": fanout.ray_address or "local"}
    if fanout.ray_address is None:
        init["include_dashboard"] = False
    # Workers run their task with the settings serialised here: give them the API this process talks to, also when
    # it is a temporary server of this process (else each worker starts its own, ~40 s and a separate history).
    with get_client(sync_client=True) as client:
        api = str(client.api_url).rstrip("/")
    with (temporary_settings(updates={PREFECT_API_URL: api}), RayTaskRunner(init_kwargs=init) as runner,
          remote_options(num_cpus=fanout.num_cpus, num_gpus=fanout.num_gpus)):
        futures = runner.map(task, {"fn": unmapped(fn), "job": jobs})
        return [f.result() for f in futures]


def ray_map(fanout: FanoutConfig) -> MapFn:
    """The `map_members` for `fanout.task_runner: ray` (`local` keeps the stage's default, the builtin `map`)."""
    return partial(_on_ray, train_member_task, fanout)


def ray_shard_map(fanout: FanoutConfig) -> MapFn:
    """The generate stage's `map_shards` for `fanout.task_runner: ray` (`local` keeps the builtin `map`)."""
    return partial(_on_ray, generate_shard_task, fanout)
