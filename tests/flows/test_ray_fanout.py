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

from components.config import FanoutConfig, GenerateConfig, RewardConfig

RM = RewardConfig(members=2, epochs=1, batch_size=16, learning_rate=1e-3, heldout_frac=0.2)
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


def test_ensemble_members_train_on_ray_workers(prefect_backend, tiny_bootstrap, local_ray, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.stages import train_reward
    from tasks.fanout import ray_map

    prefs, init = _preferences(tiny_bootstrap["prompts"]), str(tiny_bootstrap["policy"])
    returned = []  # what the Ray tasks handed back, before the stage keeps its metrics

    def on_ray(train, jobs):
        returned.extend(ray_map(FanoutConfig(task_runner="ray"))(train, jobs))
        return returned

    @flow
    def fan_out():
        from prefect.runtime import flow_run

        return flow_run.id, train_reward.run(RM, prefs, init_path=init, out_dir=tmp_path / "ray", seed=0,
                                             map_members=on_ray)

    run_id, on_workers = fan_out()
    sequential = train_reward.run(RM, prefs, init_path=init, out_dir=tmp_path / "local", seed=0)

    # trained in Ray worker processes, as Prefect task runs of the flow
    assert len(returned) == 2 and all(r["worker_pid"] != os.getpid() for r in returned), returned
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    members = [r for r in runs if r.name.startswith("train_reward_member")]
    assert len(members) == 2 and all(r.state.is_completed() for r in members), [(r.name, r.state) for r in runs]

    # the same ensemble as the sequential path: same members, trained away from init and apart, same metrics
    assert sorted(p.name for p in (tmp_path / "ray").iterdir()) == ["member-0", "member-1"]
    assert on_workers.keys() == sequential.keys()
    init_w = _weights(Path(init))[KEY]
    w = [_weights(tmp_path / "ray" / f"member-{k}")[KEY] for k in range(2)]
    assert not (w[0] == init_w).all() and not (w[1] == init_w).all() and not (w[0] == w[1]).all()
    for k in range(2):  # same seeds and data; a tolerance only for thread-count-dependent float sums
        np.testing.assert_allclose(w[k], _weights(tmp_path / "local" / f"member-{k}")[KEY], rtol=1e-5, atol=1e-6)
        assert on_workers[f"member_{k}/train_loss"] == pytest.approx(sequential[f"member_{k}/train_loss"], rel=1e-5)


def test_ray_fanout_needs_in_process_training():
    from components.config import LoopConfig

    with pytest.raises(ValueError, match=r"fanout\.task_runner='ray' needs train_launch\.mode='in_process'"):
        LoopConfig(fanout={"task_runner": "ray"}, train_launch={"mode": "accelerate"})


GEN = GenerateConfig(samples_per_prompt=2, max_new_tokens=6, batch_size=4)


def _prompts(pool: Path, n: int = 5) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.read_table(pool).select(["prompt_id", "prompt"]).slice(0, n)


def test_one_shard_is_the_unsharded_generation(tiny_bootstrap):
    from components.stages import generate

    prompts, policy = _prompts(tiny_bootstrap["prompts"]), str(tiny_bootstrap["policy"])
    table, stats = generate.run(GEN, prompts, policy, policy_sha="abc", seed=7)
    gens, _ = models.sample(GEN, prompts["prompt"].to_pylist(), policy, 7)
    assert stats["shards"] == 1
    assert table["completion"].to_pylist() == [g.completion for g in gens]
    assert table["num_tokens"].to_pylist() == [g.num_tokens for g in gens]
    assert table["prompt_id"].to_pylist() == [prompts["prompt_id"][g.prompt_index].as_py() for g in gens]


def test_generation_shards_sample_on_ray_workers(prefect_backend, tiny_bootstrap, local_ray):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from components.stages import generate
    from tasks.fanout import ray_shard_map

    prompts, policy = _prompts(tiny_bootstrap["prompts"]), str(tiny_bootstrap["policy"])
    returned = []  # what the Ray tasks handed back, before the stage builds the table

    def on_ray(fn, jobs):
        returned.extend(ray_shard_map(FanoutConfig(task_runner="ray", generate_shards=2))(fn, jobs))
        return returned

    @flow
    def fan_out():
        from prefect.runtime import flow_run

        return flow_run.id, generate.run(GEN, prompts, policy, policy_sha="abc", seed=7, shards=2, map_shards=on_ray)

    run_id, (on_workers, stats) = fan_out()
    sequential, _ = generate.run(GEN, prompts, policy, policy_sha="abc", seed=7, shards=2)
    unsharded, _ = generate.run(GEN, prompts, policy, policy_sha="abc", seed=7)

    # sampled in Ray worker processes, as Prefect task runs of the flow: shards of 2 and 3 prompts
    assert len(returned) == 2 and all(s["worker_pid"] != os.getpid() for _, s in returned), returned
    assert [len(g) for g, _ in returned] == [2 * GEN.samples_per_prompt, 3 * GEN.samples_per_prompt]
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
    shards = [r for r in runs if r.name.startswith("generate_shard")]
    assert len(shards) == 2 and all(r.state.is_completed() for r in shards), [(r.name, r.state) for r in runs]

    # the unsharded table's rows, schema and prompt order; the same rollouts as the 2 shards sampled here
    assert on_workers.schema == unsharded.schema and stats["shards"] == 2
    ids, texts = prompts["prompt_id"].to_pylist(), prompts["prompt"].to_pylist()
    assert on_workers["prompt_id"].to_pylist() == [i for i in ids for _ in range(GEN.samples_per_prompt)]
    assert on_workers["prompt"].to_pylist() == [t for t in texts for _ in range(GEN.samples_per_prompt)]
    assert on_workers["rollout_id"].to_pylist() == unsharded["rollout_id"].to_pylist()
    assert on_workers.equals(sequential)
    # shard 1 draws from its own seed: its samples are not the unsharded ones' (shard 0 keeps the stage seed)
    assert on_workers["completion"].to_pylist() != unsharded["completion"].to_pylist()
