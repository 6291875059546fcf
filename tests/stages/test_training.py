"""Policy and reward-model training stages on tiny models: RL (RLOO/GRPO) against an ensemble with KL control,
DPO with LoRA, warm-started replay retraining of the reward-model ensemble and its non-regression decision."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_backends import _state, make_pairs

from components.config import EnsembleConfig, LoraSettings, PolicyConfig, ProbeConfig, RewardConfig, RLConfig
from components.contract import Backends, Seeds
from components.preferences import pair_id

KEY = "transformer.h.0.attn.c_attn.weight"


def _prefs(pairs: list[dict], iteration: int, source: str, flip: bool = False) -> pa.Table:
    if flip:
        pairs = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    n = len(pairs)
    return pa.table({"pair_id": [pair_id(p["prompt"], p["chosen"], p["rejected"]) for p in pairs],
                     "prompt": [p["prompt"] for p in pairs], "chosen": [p["chosen"] for p in pairs],
                     "rejected": [p["rejected"] for p in pairs], "margin": [1.0] * n, "uncertainty": [0.0] * n,
                     "agreement": [1.0] * n, "label_source": [source] * n, "iteration": [iteration] * n})


RM = RewardConfig(learning_rate=1e-3, epochs=3, warm_epochs=1, heldout_frac=0.2, replay_cap=64)
ENSEMBLE = EnsembleConfig(members=2)


def run_stage(module, cfg, inputs, ensemble: EnsembleConfig = ENSEMBLE, iteration: int = 0):
    """`module.run` on `inputs` with the models it names (and the ensemble settings), seeds of loop seed 0."""
    from components.backends.models import Models

    return module.run(cfg, inputs, backends=Backends(models=Models(inputs, ensemble=ensemble)),
                      seed=Seeds(0, iteration, module.__name__.rsplit(".", 1)[-1]))


def _prompt_table(prompts: list[str], split: str = "train") -> pa.Table:
    """Prompts as a prompt table (eval split: a pool whose held-out prompts the probe samples)."""
    return pa.table({"prompt_id": [f"p{i}" for i in range(len(prompts))], "prompt": prompts,
                     "split": [split] * len(prompts)})


@pytest.fixture(scope="module")
def ensemble0(tiny_policy, tmp_path_factory, stage_inputs_at):
    """Iteration 0: two members from scratch on 256 gold seed pairs ("great" beats "bad")."""
    from components.stages import train_reward

    seed = _prefs(make_pairs(256, 0), 0, "gold")
    inputs = stage_inputs_at(tmp_path_factory.mktemp("rm0"))(preferences=[seed], init=tiny_policy)
    result = run_stage(train_reward, RM, inputs)
    return seed, result.outputs["reward_model"].dir, result.metrics


def test_reward_first_iteration_metrics(ensemble0):
    _, out, m = ensemble0
    assert m["train_reward/accepted"] == 1.0 and m["train_reward/warm_start"] == 0.0
    for k in range(2):
        assert m[f"train_reward/member_{k}/heldout_accuracy"] > 0.9, m
        assert 0 <= m[f"train_reward/member_{k}/heldout_ece"] < 0.5
        assert m[f"train_reward/member_{k}/steps"] == 3 * int(np.ceil(m["train_reward/train_pairs"] / 32))
    assert sorted(p.name for p in out.iterdir()) == ["member-0", "member-1"]


def test_reward_warm_start_replay_and_newest_accuracy(ensemble0, stage_inputs):
    from components.stages import train_reward

    seed, out, m0 = ensemble0
    new = _prefs(make_pairs(48, 20), 1, "rm_ensemble")
    inputs = stage_inputs(iteration=1, preferences=[seed, new], init="unused-when-warm", previous=str(out))
    result = run_stage(train_reward, RM, inputs, iteration=1)
    m, e = result.metrics, result.outputs["reward_model"].dir
    assert m["train_reward/warm_start"] == 1.0 and m["train_reward/accepted"] == 1.0
    # replay: every newest (non-held-out) pair + the cap of older ones, 30% of the cap reserved for seed pairs
    assert m["train_reward/train_pairs"] == m["train_reward/train_pairs_newest"] + 64
    assert m["train_reward/train_pairs_seed"] == 64
    assert m["train_reward/member_0/steps"] == int(np.ceil(m["train_reward/train_pairs"] / 32))  # warm_epochs = 1
    assert m["train_reward/previous/newest_accuracy_ensemble"] > 0.9  # the old ensemble already ranks the new pairs
    assert m["train_reward/heldout_accuracy_ensemble"] > 0.9
    assert not np.allclose(_state(out / "member-0")[KEY], _state(e / "member-0")[KEY])


def test_reward_regression_keeps_previous(ensemble0, stage_inputs):
    """Self-labelled pairs that contradict the gold seed: the retrained ensemble loses held-out accuracy on the
    trusted pairs, so the decision is to keep the previous one."""
    from components.stages import train_reward

    seed, out, _ = ensemble0
    bad = _prefs(make_pairs(256, 30), 1, "rm_ensemble", flip=True)
    cfg = RM.model_copy(update={"warm_epochs": 3, "replay_cap": 8})
    inputs = stage_inputs(iteration=1, preferences=[seed, bad], init="unused", previous=str(out))
    m = run_stage(train_reward, cfg, inputs, iteration=1).metrics
    assert m["train_reward/previous/newest_accuracy_ensemble"] < 0.1  # flipped labels: the old ensemble disagrees
    assert m["train_reward/trusted_accuracy_regression"] > 0.3 and m["train_reward/accepted"] == 0.0, m


def _probe_reward(path, prompts, ensemble_dir, stage_inputs):
    from components.backends.models import Models
    from components.stages.train_policy import probe

    inputs = stage_inputs(reference=path, reward_model=ensemble_dir)
    return probe(PolicyConfig(probe=ProbeConfig(prompts=64, samples=4)), Models(inputs, ensemble=ENSEMBLE), path,
                 prompts, 0)


def test_rloo_adaptive_kl_raises_ensemble_reward(ensemble0, tiny_policy, stage_inputs):
    from components.stages import train_policy

    _, out, _ = ensemble0
    prompts = sorted({p["prompt"] for p in make_pairs(64, 5)})
    # 6 epochs: with 4 the gain below is 0.06-0.10 for this ensemble under the stage seeds (seed-dependent)
    cfg = PolicyConfig(algo="rloo", learning_rate=3e-3, batch_size=16, epochs=6, reference="initial", beta=0.05,
                       rl=RLConfig(num_generations=4, max_new_tokens=10, kl_control="adaptive",
                                   kl_target=0.5, kl_horizon=10, shaping="par"), probe=ProbeConfig(prompts=16))
    inputs = stage_inputs(preferences=_prefs([], 0, "gold"), prompts=_prompt_table(prompts),
                          pool=_prompt_table(prompts, "eval"), policy=tiny_policy, reference=tiny_policy,
                          reward_model=str(out))
    result = run_stage(train_policy, cfg, inputs)
    m, c = result.metrics, str(result.outputs["candidate"].dir)
    assert m["train_policy/steps"] == cfg.epochs * int(np.ceil(len(prompts) * 4 / 16))
    for key in ("loss", "reward", "reward_std", "kl", "entropy", "kl_ref", "entropy_seq", "mean_tokens",
                "proxy_reward_mean", "proxy_reward_std"):
        assert np.isfinite(m[f"train_policy/{key}"]), key
    assert 0 < m["train_policy/reward"] < 1  # PAR-shaped reward is bounded
    betas = [w["train_policy/trajectory/beta"] for w in result.history if "train_policy/trajectory/beta" in w]
    assert len(betas) >= 2 and betas[-1] != 0.05  # the controller moved β
    assert m["train_policy/kl_ref"] > 0
    before = _probe_reward(tiny_policy, prompts, str(out), stage_inputs)["train_policy/proxy_reward_mean"]
    after = _probe_reward(c, prompts, str(out), stage_inputs)["train_policy/proxy_reward_mean"]
    assert after > before + 0.1, (before, after)


def test_grpo_runs_without_kl_and_no_shaping(ensemble0, tiny_policy, stage_inputs, tmp_path):
    import shutil

    from components.stages import train_policy

    _, out, _ = ensemble0
    one = tmp_path / "one-member"  # an ensemble of member-0 only
    shutil.copytree(out / "member-0", one / "member-0")
    prompts = sorted({p["prompt"] for p in make_pairs(8, 6)})
    cfg = PolicyConfig(algo="grpo", learning_rate=1e-3, batch_size=8, beta=0.0,
                       rl=RLConfig(num_generations=4, max_new_tokens=8, shaping="none"))
    inputs = stage_inputs(preferences=_prefs([], 0, "gold"), prompts=_prompt_table(prompts), policy=tiny_policy,
                          reference=tiny_policy, reward_model=str(one))
    result = run_stage(train_policy, cfg, inputs, ensemble=EnsembleConfig(members=1))
    m, c = result.metrics, result.outputs["candidate"].dir
    assert m["train_policy/steps"] >= 1 and np.isfinite(m["train_policy/reward"])
    assert np.isnan(m["train_policy/kl"])  # no reference, no KL
    assert not np.allclose(_state(tiny_policy)[KEY], _state(c)[KEY])


def test_dpo_lora_saves_merged_checkpoint_and_history(tiny_policy, stage_inputs):
    from components.backends.hf import load_causal_lm
    from components.stages import train_policy

    cfg = PolicyConfig(learning_rate=1e-3, batch_size=8, lora=LoraSettings(r=4, alpha=8), probe=ProbeConfig(prompts=4))
    pairs = make_pairs(32, 40)
    pool = _prompt_table([p["prompt"] for p in pairs], "eval")
    inputs = stage_inputs(preferences=_prefs(pairs, 0, "gold"), pool=pool, policy=tiny_policy, reference=tiny_policy)
    result = run_stage(train_policy, cfg, inputs)
    m, c = result.metrics, result.outputs["candidate"].dir
    assert {"adapter_config.json", "adapter_model.safetensors"}.isdisjoint(p.name for p in c.iterdir())
    load_causal_lm(str(c))  # a plain checkpoint
    assert not np.allclose(_state(tiny_policy)[KEY], _state(c)[KEY])  # the merged adapter
    logged = {f"train_policy/trajectory/{k}" for k in ("logps/chosen", "logps/rejected", "loss")}
    assert logged <= set(result.history[0])
    assert np.isfinite(m["train_policy/kl_ref"])
    bad_args = stage_inputs(preferences=_prefs(pairs, 0, "gold"), policy=tiny_policy, reference=tiny_policy)
    with pytest.raises(ValueError, match=r"train_policy\.trainer_args"):
        run_stage(train_policy, cfg.model_copy(update={"trainer_args": {"no_such_arg": 1}}), bad_args)
