"""Inputs that used to corrupt a run silently are refused before any stage runs (components/validation.py), the
sample stage never draws a prompt twice in an iteration, and pair construction cannot mix prompts."""

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import preferences as P
from components import validation
from components.config import LabelConfig, LoopConfig, SampleConfig
from components.contract import Backends, Seeds
from components.schemas import SchemaError
from components.stages import label, sample_prompts
from flows.iteration import validate_inputs


def _pool(n_train=6, n_eval=2, **cols) -> pa.Table:
    n = n_train + n_eval
    base = {"prompt_id": [f"id{i}" for i in range(n)], "prompt": [f"review topic {i} :" for i in range(n)],
            "source": [f"s{i % 2}" for i in range(n)], "split": ["train"] * n_train + ["eval"] * n_eval}
    return pa.table({**base, **cols})


def _validate(tmp_path, table, **sample):
    policy = tmp_path / "policy"
    policy.mkdir(exist_ok=True)
    (policy / "config.json").write_text("{}")
    path = tmp_path / "pool.parquet"
    pq.write_table(table, path)
    cfg = LoopConfig(prompt_pool=str(path), policy_init=str(policy), sample={"n_prompts": 4, **sample})
    validate_inputs(cfg, "cfg.yaml")
    return path


def test_a_valid_pool_passes(tmp_path):
    _validate(tmp_path, _pool())


def test_duplicate_prompt_ids_name_the_file_and_the_ids(tmp_path):
    ids = ["a", "a", "b", "b", "c", "d", "e", "e"]
    with pytest.raises(ValueError, match=r"pool\.parquet: column 'prompt_id' has 3 duplicated id\(s\): 'a', 'b', "
                                         r"'e'") as err:
        _validate(tmp_path, _pool(prompt_id=ids))
    assert str(tmp_path) in str(err.value)
    many = [f"x{i // 2}" for i in range(16)]  # 8 ids twice: up to 5 named
    with pytest.raises(ValueError, match=r"8 duplicated id\(s\): 'x0', 'x1', 'x2', 'x3', 'x4' \(\+3 more\)"):
        _validate(tmp_path, _pool(n_train=12, n_eval=4, prompt_id=many))


@pytest.mark.parametrize("column,values", [("prompt", list(range(8))), ("prompt_id", list(range(8))),
                                           ("source", [1.5] * 8), ("split", [True] * 8)])
def test_non_string_columns_are_refused_not_cast(tmp_path, column, values):
    with pytest.raises(SchemaError, match=rf"column '{column}' is \w+, expected string"):
        _validate(tmp_path, _pool(**{column: values}))


def test_empty_and_whitespace_prompts_are_counted(tmp_path):
    prompts = ["", "  \t", "ok :", "ok 2 :", "ok 3 :", "ok 4 :", "\n", "ok 5 :"]
    with pytest.raises(ValueError, match=r"column 'prompt' has 3 empty or whitespace-only prompt"):
        _validate(tmp_path, _pool(prompt=prompts))


def test_long_prompts_name_the_limit(tmp_path):
    prompts = ["x" * 101, "x" * 100] + [f"p{i} :" for i in range(6)]
    with pytest.raises(ValueError, match=r"1 prompt\(s\) longer than sample.max_prompt_chars=100 characters"):
        _validate(tmp_path, _pool(prompt=prompts), max_prompt_chars=100)
    _validate(tmp_path, _pool(prompt=prompts), max_prompt_chars=101)


def test_n_prompts_over_the_train_split_is_an_error_or_a_cap(tmp_path):
    with pytest.raises(ValueError, match=r"sample.n_prompts=10 is larger than the prompt pool's train split \(6 "
                                         r"rows\).*sample.when_pool_smaller=cap"):
        _validate(tmp_path, _pool(), n_prompts=10)
    _validate(tmp_path, _pool(), n_prompts=10, when_pool_smaller="cap")


@pytest.mark.parametrize("dedup", [True, False])
def test_capped_draw_takes_every_train_prompt_once(stage_inputs, caplog, dedup):
    pool = _pool(n_train=6)
    cfg = SampleConfig(n_prompts=10, when_pool_smaller="cap", dedup_history=dedup)
    for iteration in range(3):
        with caplog.at_level(logging.WARNING, logger="components.stages.sample_prompts"):
            out = sample_prompts.run(cfg, stage_inputs(iteration=iteration, pool=pool), backends=Backends(),
                                     seed=Seeds(0, iteration, "sample_prompts")).outputs["prompts"].table
        ids = out["prompt_id"].to_pylist()
        assert sorted(ids) == [f"id{i}" for i in range(6)]  # all of the train split, none twice, no eval row
    assert "each iteration draws all 6 once" in caplog.text
    with pytest.raises(ValueError, match=r"sample\.n_prompts=10 is larger"):
        sample_prompts.run(SampleConfig(n_prompts=10), stage_inputs(pool=pool), backends=Backends(),
                           seed=Seeds(0, 0, "sample_prompts"))


def test_uncapped_draw_never_repeats_within_an_iteration(stage_inputs):
    pool = _pool(n_train=40, n_eval=2)
    for dedup in (True, False):
        cfg = SampleConfig(n_prompts=30, dedup_history=dedup)
        for iteration in range(3):
            out = sample_prompts.run(cfg, stage_inputs(iteration=iteration, pool=pool), backends=Backends(),
                                     seed=Seeds(0, iteration, "sample_prompts")).outputs["prompts"].table
            assert out.num_rows == 30 and len(set(out["prompt_id"].to_pylist())) == 30


def test_pairs_cannot_mix_prompts():
    groups, prompts = ["g", "g", "h", "h"], ["a :", "a :", "b :", "b :"]
    P.check_same_prompt(groups, prompts, np.array([0, 2]), np.array([1, 3]))
    with pytest.raises(ValueError, match=r"1 of 2 preference pairs mix prompts, e.g. rows 0 and 2: prompt_id 'g' "
                                         r"vs 'h'"):
        P.check_same_prompt(groups, prompts, np.array([0, 2]), np.array([2, 3]))
    # one id, two prompt texts (a pool with repeated ids): refused whatever the ids say
    with pytest.raises(ValueError, match=r"prompt 'a :' vs 'b :'"):
        P.check_same_prompt(["g"] * 4, prompts, np.array([0]), np.array([3]))


def test_label_stage_refuses_a_group_holding_two_prompts(stage_inputs):
    """Rollouts of two different prompts under one prompt_id (what a pool with duplicate ids produced): best vs
    worst of the group pairs one prompt's completion with the other's; the stage raises instead of writing it."""
    from test_labeling import FakeEnsemble, FakeModels, _rollouts

    prompts, completions = ["review a :"] * 2 + ["review b :"] * 2, [" good .", " ok .", " meh .", " bad ."]
    members = np.array([[3.0, 1.0, 0.5, -2.0]] * 2)
    inputs = stage_inputs(iteration=1, rollouts=_rollouts(prompts, completions, ["dup"] * 4))
    backends = Backends(models=FakeModels(FakeEnsemble(members, prompts, completions)))
    with pytest.raises(ValueError, match="preference pairs mix prompts"):
        label.run(LabelConfig(min_margin_over_std=0), inputs, backends=backends, seed=Seeds(0, 1, "label"))


def test_single_member_ensemble_warns_that_routing_is_inert(caplog):
    validation._warned.clear()
    inert = LoopConfig(ensemble={"members": 1}, label={"min_margin_over_std": 1.0, "min_agreement": 0.6})
    with caplog.at_level(logging.WARNING, logger="components.validation"):
        [msg] = validation.check_settings(inert)
        validation.check_settings(inert)  # once per process
    assert "ensemble.members=1" in msg and "label.min_margin_over_std=1.0 and label.min_agreement=0.6" in msg
    assert caplog.text.count("ensemble.members=1") == 1
    assert validation.check_settings(LoopConfig(ensemble={"members": 1}, label={"min_margin_over_std": 0})) == []
    assert validation.check_settings(LoopConfig(ensemble={"members": 2})) == []
    assert validation.check_settings(LoopConfig(ensemble={"members": 1}, label={"labeler": "gold"})) == []
