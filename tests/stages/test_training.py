"""Policy and reward-model training stages on tiny models: RL (RLOO/GRPO) against an ensemble with KL control,
DPO with LoRA, warm-started replay retraining of the reward-model ensemble and its non-regression decision."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from test_backends import _state, make_pairs

from components.config import LoraSettings, PolicyConfig, RewardConfig, RLConfig
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


RM = RewardConfig(members=2, learning_rate=1e-3, epochs=3, warm_epochs=1, heldout_frac=0.2, replay_cap=64)


@pytest.fixture(scope="module")
def ensemble0(tiny_policy, tmp_path_factory):
    """Iteration 0: two members from scratch on 256 gold seed pairs ("great" beats "bad")."""
    from components.stages import train_reward

    out = tmp_path_factory.mktemp("rm0") / "ensemble"
    seed = _prefs(make_pairs(256, 0), 0, "gold")
    metrics = train_reward.run(RM, seed, init_path=tiny_policy, out_dir=out, seed=0)
    return seed, out, metrics


def test_reward_first_iteration_metrics(ensemble0):
    _, out, m = ensemble0
    assert m["accepted"] == 1.0 and m["warm_start"] == 0.0
    for k in range(2):
        assert m[f"member_{k}/heldout_accuracy"] > 0.9, m
        assert 0 <= m[f"member_{k}/heldout_ece"] < 0.5
        assert m[f"member_{k}/steps"] == 3 * int(np.ceil(m["train_pairs"] / 32))
    assert sorted(p.name for p in out.iterdir()) == ["member-0", "member-1"]


def test_reward_warm_start_replay_and_newest_accuracy(ensemble0, tmp_path):
    from components.stages import train_reward

    seed, out, m0 = ensemble0
    new = _prefs(make_pairs(48, 20), 1, "rm_ensemble")
    m = train_reward.run(RM, pa.concat_tables([seed, new]), init_path="unused-when-warm", out_dir=tmp_path / "e",
                         seed=0, previous=[str(out / "member-0"), str(out / "member-1")])
    assert m["warm_start"] == 1.0 and m["accepted"] == 1.0
    # replay: every newest (non-held-out) pair + the cap of older ones, 30% of the cap reserved for seed pairs
    assert m["train_pairs"] == m["train_pairs_newest"] + 64 and m["train_pairs_seed"] == 64
    assert m["member_0/steps"] == int(np.ceil(m["train_pairs"] / 32))  # warm_epochs = 1
    assert m["previous/newest_accuracy_ensemble"] > 0.9  # the old ensemble already ranks the new pairs
    assert m["heldout_accuracy_ensemble"] > 0.9
    assert not np.allclose(_state(out / "member-0")[KEY], _state(tmp_path / "e" / "member-0")[KEY])


def test_reward_regression_keeps_previous(ensemble0, tmp_path):
    """Self-labelled pairs that contradict the gold seed: the retrained ensemble loses held-out accuracy on the
    trusted pairs, so the decision is to keep the previous one."""
    from components.stages import train_reward

    seed, out, _ = ensemble0
    bad = _prefs(make_pairs(256, 30), 1, "rm_ensemble", flip=True)
    cfg = RM.model_copy(update={"warm_epochs": 3, "replay_cap": 8})
    m = train_reward.run(cfg, pa.concat_tables([seed, bad]), init_path="unused", out_dir=tmp_path / "e", seed=0,
                         previous=[str(out / "member-0"), str(out / "member-1")])
    assert m["previous/newest_accuracy_ensemble"] < 0.1  # flipped labels: the old ensemble disagrees
    assert m["trusted_accuracy_regression"] > 0.3 and m["accepted"] == 0.0, m


def _probe_reward(path, prompts, members):
    from components.stages.train_policy import probe

    return probe(PolicyConfig(probe_prompts=64, probe_samples=4), path, path, prompts, members, "mean", 1.0, 0)


def test_rloo_adaptive_kl_raises_ensemble_reward(ensemble0, tiny_policy, tmp_path):
    from components.stages import train_policy

    _, out, _ = ensemble0
    members = [str(out / "member-0"), str(out / "member-1")]
    prompts = sorted({p["prompt"] for p in make_pairs(64, 5)})
    cfg = PolicyConfig(algo="rloo", learning_rate=3e-3, batch_size=16, epochs=4, reference="initial",
                       rl=RLConfig(num_generations=4, max_new_tokens=10, kl_coef=0.05, kl_control="adaptive",
                                   kl_target=0.5, kl_horizon=10, shaping="par"), probe_prompts=16)
    m = train_policy.run(cfg, _prefs([], 0, "gold"), prompts=prompts, heldout_prompts=prompts,
                         policy_path=tiny_policy, ref_path=tiny_policy, reward_models=members, out_dir=tmp_path / "c",
                         seed=0)
    assert m["steps"] == 4 * int(np.ceil(len(prompts) * 4 / 16))
    for key in ("loss", "reward", "reward_std", "kl", "entropy", "kl_ref", "entropy_seq", "mean_tokens",
                "proxy_reward_mean", "proxy_reward_std"):
        assert np.isfinite(m[key]), key
    assert 0 < m["reward"] < 1  # PAR-shaped reward is bounded
    betas = [w["kl_coef"] for w in m["history"] if "kl_coef" in w]
    assert len(betas) >= 2 and betas[-1] != 0.05  # the controller moved β
    assert m["kl_ref"] > 0
    before = _probe_reward(tiny_policy, prompts, members)["proxy_reward_mean"]
    after = _probe_reward(str(tmp_path / "c"), prompts, members)["proxy_reward_mean"]
    assert after > before + 0.1, (before, after)


def test_grpo_runs_without_kl_and_no_shaping(ensemble0, tiny_policy, tmp_path):
    from components.stages import train_policy

    _, out, _ = ensemble0
    prompts = sorted({p["prompt"] for p in make_pairs(8, 6)})
    cfg = PolicyConfig(algo="grpo", learning_rate=1e-3, batch_size=8,
                       rl=RLConfig(num_generations=4, max_new_tokens=8, kl_coef=0.0, shaping="none"))
    m = train_policy.run(cfg, _prefs([], 0, "gold"), prompts=prompts, heldout_prompts=[], policy_path=tiny_policy,
                         ref_path=tiny_policy, reward_models=[str(out / "member-0")], out_dir=tmp_path / "c", seed=0)
    assert m["steps"] >= 1 and np.isfinite(m["reward"]) and np.isnan(m["kl"])  # no reference, no KL
    assert not np.allclose(_state(tiny_policy)[KEY], _state(tmp_path / "c")[KEY])


def test_dpo_lora_saves_merged_checkpoint_and_history(tiny_policy, tmp_path):
    from components.backends.hf import load_causal_lm
    from components.stages import train_policy

    cfg = PolicyConfig(learning_rate=1e-3, batch_size=8, lora=LoraSettings(r=4, alpha=8), probe_prompts=4)
    pairs = make_pairs(32, 40)
    m = train_policy.run(cfg, _prefs(pairs, 0, "gold"), prompts=[], heldout_prompts=[p["prompt"] for p in pairs],
                         policy_path=tiny_policy, ref_path=tiny_policy, reward_models=None, out_dir=tmp_path / "c",
                         seed=0)
    assert {"adapter_config.json", "adapter_model.safetensors"}.isdisjoint(p.name for p in (tmp_path / "c").iterdir())
    load_causal_lm(str(tmp_path / "c"))  # a plain checkpoint
    assert not np.allclose(_state(tiny_policy)[KEY], _state(tmp_path / "c")[KEY])  # the merged adapter
    assert {"logps/chosen", "logps/rejected", "loss"} <= set(m["history"][0]) and np.isfinite(m["kl_ref"])
    with pytest.raises(ValueError, match=r"train_policy\.trainer_args"):
        train_policy.run(cfg.model_copy(update={"trainer_args": {"no_such_arg": 1}}), _prefs(pairs, 0, "gold"),
                         prompts=[], heldout_prompts=[], policy_path=tiny_policy, ref_path=tiny_policy,
                         reward_models=None, out_dir=tmp_path / "x", seed=0)
