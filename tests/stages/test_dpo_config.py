"""`train_policy.beta` and `train_policy.dpo.loss_type` reach TRL's DPOTrainer and change what it trains: the same
tiny pairs, seed and policy, trained twice with one setting changed, give the trainer that value and a different
loss and checkpoint."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from test_backends import make_pairs

from components.config import DPOConfig, PolicyConfig

PAIRS = make_pairs(32, 21)  # 4 optimizer steps of 8: β only shows once the policy has left the reference
BASE = PolicyConfig(learning_rate=1e-3, batch_size=8, epochs=1, beta=0.1, dpo=DPOConfig(loss_type="sigmoid"))


@pytest.fixture
def seen(monkeypatch) -> list[dict]:
    """What each DPOTrainer built during the test holds as its loss settings (the values its loss reads)."""
    import trl

    real_init, seen = trl.DPOTrainer.__init__, []

    def recording_init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        seen.append({"beta": self.beta, "loss_types": list(self.loss_types), "args_beta": self.args.beta})

    monkeypatch.setattr(trl.DPOTrainer, "__init__", recording_init)
    return seen


def _train(policy: str, out: Path, cfg: PolicyConfig) -> tuple[dict, str]:
    from components.backends.trainers import train_dpo

    metrics = train_dpo(policy, policy, PAIRS, out, cfg, seed=0)
    return metrics, hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.parametrize("change,expected", [
    ({"beta": 1.0}, {"beta": 1.0, "loss_types": ["sigmoid"]}),
    ({"dpo": DPOConfig(loss_type="ipo")}, {"beta": 0.1, "loss_types": ["ipo"]}),
], ids=["beta", "loss_type"])
def test_setting_reaches_trl_and_changes_the_training(tiny_policy, tmp_path, seen, change, expected):
    base, base_sha = _train(tiny_policy, tmp_path / "base", BASE)
    other, other_sha = _train(tiny_policy, tmp_path / "other", BASE.model_copy(update=change))
    assert seen == [{"beta": 0.1, "loss_types": ["sigmoid"], "args_beta": 0.1},
                    {**expected, "args_beta": expected["beta"]}]
    assert base["steps"] == other["steps"] == 4
    assert other["train_loss"] != pytest.approx(base["train_loss"], rel=1e-3)
    assert other_sha != base_sha
