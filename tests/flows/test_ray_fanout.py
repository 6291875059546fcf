"""Reward-ensemble fan-out on a local Ray instance: K=2 members trained as Prefect tasks on prefect-ray's
RayTaskRunner (tasks/fanout.py), checked against the sequential path on the same data; and the generate stage's
prompt shards sampled the same way."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from components.config import EnsembleConfig, FanoutConfig, GenerateConfig, RewardConfig
from components.contract import Backends, Seeds

RM = RewardConfig(epochs=1, batch_size=16, learning_rate=1e-3, heldout_frac=0.2)
TWO = EnsembleConfig(members=2)
KEY = "transformer.h.0.attn.c_attn.weight"


def _preferences(pool: Path, n: int = 96) -> pa.Table:
    """Gold-labelled pairs on the toy pool's prompts: a positive review beats a negative one."""
    import pyarrow.parquet as pq

    from components.preferences import pair_id
    from components.toy.language import NEGATIVE_ADJECTIVES, POSITIVE_ADJECTIVES

    rng = random.Random(0)
    prompts = pq.read_table(pool)["prompt"].to_pylist()
    rows = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        chosen, rejected = (f" it was {rng.choice(words)} ." for words in (POSITIVE_ADJECTIVES, NEGATIVE_ADJECTIVES))
        rows.append({"pair_id": pair_id(prompt, chosen, rejected), "prompt": prompt, "chosen": chosen,
                     "rejected": rejected, "label_source": "gold", "iteration": 0})
    return pa.Table.from_pylist(rows)


def _weights(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def local_ray():
    """A private 2-CPU Ray instance: no dashboard, small object store, its own short temp dir (socket paths)."""
    import ray

    tmp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    ray.init(address="local", num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
             _temp_dir=tmp, log_to_driver=False)
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


def _backends(inputs, **kw) -> Backends:
    from components.backends.models import Models

    return Backends(models=Models(inputs, ensemble=TWO), **kw)


def test_ensemble_members_train_on_ray_workers(prefect_backend, tiny_bootstrap, local_ray, stage_inputs):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.stages import train_reward
    from tasks.fanout import ray_map

    prefs, init = _preferences(tiny_bootstrap["prompts"]), str(tiny_bootstrap["policy"])
    ray_inputs, local_inputs = (stage_inputs(preferences=[prefs], init=init) for _ in range(2))
    seed = Seeds(0, 0, "train_reward")
    returned = []  # what the Ray tasks handed back, before the stage keeps its metrics

    def on_ray(train, jobs):
        returned.extend(ray_map(FanoutConfig(task_runner="ray"))(train, jobs))
        return returned

    # built out here: the flow's closure travels to the Ray workers, which cannot import this test module
    on_ray_backends = _backends(ray_inputs, map_members=on_ray)

    @flow
    def fan_out():
        from prefect.runtime import flow_run

        return flow_run.id, train_reward.run(RM, ray_inputs, backends=on_ray_backends, seed=seed)

    run_id, ray_result = fan_out()
    local_result = train_reward.run(RM, local_inputs, backends=_backends(local_inputs), seed=seed)
    on_workers, sequential = ray_result.metrics, local_result.metrics
    ray_dir, local_dir = ray_result.outputs["reward_model"].dir, local_result.outputs["reward_model"].dir

    # trained in Ray worker processes, as Prefect task runs of the flow
    assert len(returned) == 2 and all(r["worker_pid"] != os.getpid() for r in returned), returned
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    members = [r for r in runs if r.name.startswith("train_reward_member")]
    assert len(members) == 2 and all(r.state.is_completed() for r in members), [(r.name, r.state) for r in runs]

    # the same ensemble as the sequential path: same members, trained away from init and apart, same metrics
    assert sorted(p.name for p in ray_dir.iterdir()) == ["member-0", "member-1"]
    assert on_workers.keys() == sequential.keys()
    init_w = _weights(Path(init))[KEY]
    w = [_weights(ray_dir / f"member-{k}")[KEY] for k in range(2)]
    assert not (w[0] == init_w).all() and not (w[1] == init_w).all() and not (w[0] == w[1]).all()
    for k in range(2):  # same seeds and data; a tolerance only for thread-count-dependent float sums
        np.testing.assert_allclose(w[k], _weights(local_dir / f"member-{k}")[KEY], rtol=1e-5, atol=1e-6)
        loss = f"train_reward/member_{k}/train_loss"
        assert on_workers[loss] == pytest.approx(sequential[loss], rel=1e-5)


def test_ray_fanout_needs_in_process_training():
    from components.config import LoopConfig

    with pytest.raises(ValueError, match=r"fanout\.task_runner='ray' needs train_launch\.mode='in_process'"):
        LoopConfig(fanout={"task_runner": "ray"}, train_launch={"mode": "accelerate"})


GEN = GenerateConfig(samples_per_prompt=2, max_new_tokens=6, batch_size=4)


def _prompts(pool: Path, n: int = 5) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(pool).select(["prompt_id", "prompt"]).slice(0, n)


def _generate(cfg, inputs, **kw):
    """(rollouts, metrics) of the generate stage, stage seed of loop seed 7."""
    from components.stages import generate

    out = generate.run(cfg, inputs, backends=Backends(**kw), seed=Seeds(7, 0, "generate"))
    return out.outputs["rollouts"].table, out.metrics


def test_one_shard_is_the_unsharded_generation(tiny_bootstrap, stage_inputs):
    from components.backends import models

    prompts, policy = _prompts(tiny_bootstrap["prompts"]), str(tiny_bootstrap["policy"])
    table, stats = _generate(GEN, stage_inputs(prompts=prompts, policy=policy))
    gens, _ = models.sample(GEN, prompts["prompt"].to_pylist(), policy, Seeds(7, 0, "generate").value)
    assert stats["generate/shards"] == 1
    assert table["completion"].to_pylist() == [g.completion for g in gens]
    assert table["num_tokens"].to_pylist() == [g.num_tokens for g in gens]
    assert table["prompt_id"].to_pylist() == [prompts["prompt_id"][g.prompt_index].as_py() for g in gens]


def test_generation_shards_sample_on_ray_workers(prefect_backend, tiny_bootstrap, local_ray, stage_inputs):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.stages import generate
    from tasks.fanout import ray_shard_map

    prompts, policy = _prompts(tiny_bootstrap["prompts"]), str(tiny_bootstrap["policy"])
    inputs = stage_inputs(prompts=prompts, policy=policy)
    two = GEN.model_copy(update={"shards": 2})
    returned = []  # what the Ray tasks handed back, before the stage builds the table

    def on_ray(fn, jobs):
        returned.extend(ray_shard_map(FanoutConfig(task_runner="ray"))(fn, jobs))
        return returned

    @flow
    def fan_out():  # no function of this module inside: the closure travels to the Ray workers
        from prefect.runtime import flow_run

        out = generate.run(two, inputs, backends=Backends(map_shards=on_ray), seed=Seeds(7, 0, "generate"))
        return flow_run.id, (out.outputs["rollouts"].table, out.metrics)

    run_id, (on_workers, stats) = fan_out()
    sequential, _ = _generate(two, inputs)
    unsharded, _ = _generate(GEN, inputs)

    # sampled in Ray worker processes, as Prefect task runs of the flow: shards of 2 and 3 prompts
    assert len(returned) == 2 and all(s["worker_pid"] != os.getpid() for _, s in returned), returned
    assert [len(g) for g, _ in returned] == [2 * GEN.samples_per_prompt, 3 * GEN.samples_per_prompt]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    shards = [r for r in runs if r.name.startswith("generate_shard")]
    assert len(shards) == 2 and all(r.state.is_completed() for r in shards), [(r.name, r.state) for r in runs]

    # the unsharded table's rows, schema and prompt order; the same rollouts as the 2 shards sampled here
    assert on_workers.schema == unsharded.schema and stats["generate/shards"] == 2
    ids, texts = prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()
    assert on_workers["prompt_id"].to_pylist() == [i for i in ids for _ in range(GEN.samples_per_prompt)]
    assert on_workers["prompt"].to_pylist() == [t for t in texts for _ in range(GEN.samples_per_prompt)]
    assert on_workers["rollout_id"].to_pylist() == unsharded["rollout_id"].to_pylist()
    assert on_workers.equals(sequential)
    # shard 1 draws from its own seed: its samples are not the unsharded ones' (shard 0 keeps the stage seed)
    assert on_workers["completion"].to_pylist() != unsharded["completion"].to_pylist()
