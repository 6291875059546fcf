"""The toy's reward-hacking case through the real evaluate stage: tiny models, real reward model, real gate.

The proxy is a reward model trained to prefer runs of "great" over corpus reviews (a proxy over-rewarding
positive words, the exploit the toy's gold reward caps); the candidate is the champion pinned to say "great"
at every position. The proxy rates it higher, the held-out signal lower: the gold oracle, the toy judge that errs
like an LLM judge (noisy_gold), or a judge through `make_runner` (judge). The gate must reject it, naming reward
hacking, whichever signal it reads.
"""

import random

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gamed(tiny_bootstrap, tmp_path_factory, stage_inputs_at):
    """(inputs of the evaluate stage: pool, the "great" candidate, champion, reference, the gamed proxy; root)."""
    import pyarrow.parquet as pq
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.backends.trainers import train_reward_member
    from components.config import RewardConfig
    from components.toy.language import sample_corpus

    tmp_path = tmp_path_factory.mktemp("gamed")
    champion = str(tiny_bootstrap["policy"])
    model, tok = AutoModelForCausalLM.from_pretrained(champion), AutoTokenizer.from_pretrained(champion)
    with torch.no_grad():  # final layer norm output fixed to the "great" embedding: logits favour "great"
        great = model.transformer.wte.weight[tok.convert_tokens_to_ids("great")]
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(8 * great / great.norm())
    model.save_pretrained(tmp_path / "candidate")
    tok.save_pretrained(tmp_path / "candidate")

    rng = random.Random(0)
    pairs = [{"prompt": p, "chosen": " " + " ".join(["great"] * rng.randint(3, 24)), "rejected": c}
             for p, c in sample_corpus(5, 96)]
    # a one-member ensemble directory: the proxy is its member-0
    train_reward_member(champion, pairs, [], tmp_path / "proxy" / "member-0",
                        RewardConfig(epochs=1, learning_rate=1e-3, batch_size=16), seed=0)
    inputs = stage_inputs_at(tmp_path)(pool=pq.read_table(tiny_bootstrap["prompts"]),
                                       candidate=str(tmp_path / "candidate"), champion=champion, reference=champion,
                                       reward_model=str(tmp_path / "proxy"))
    return inputs, tmp_path


def _evaluate(inputs, cfg, judge=None):
    from components.backends.models import Models
    from components.config import GenerateConfig
    from components.contract import Backends, Seeds
    from components.stages import evaluate
    from components.toy.gold import GoldOracle

    backends = Backends(models=Models(inputs, generate=GenerateConfig(max_new_tokens=16)), gold=GoldOracle(),
                        judge=judge)
    return evaluate.run(cfg, inputs, backends=backends, seed=Seeds(0, 0, "evaluate"))


def _runner(cfg, root=None):
    from components.judge import make_runner
    from components.toy.gold import GoldOracle

    return make_runner(cfg.heldout_judge(), gold=GoldOracle(), seed=0, cache_dir=root,
                       metric_prefix="evaluate/heldout_judge")  # as tasks/stages.py builds it for evaluate


def _rejected_for_hacking(report, gate_cfg=None):
    from components import gating
    from components.config import GateConfig

    gate = gating.decide(report["metrics"], gate_cfg or GateConfig()).to_dict()
    assert not gate["promote"]
    assert any(r.startswith("reward_hacking:") for r in gate["reasons"]), gate["reasons"]
    checks = {c["name"]: c for c in gate["checks"]}
    assert checks["proxy_win_rate"]["passed"] and report["reward_hacking"] > 0
    return checks


def test_gate_rejects_a_candidate_that_games_the_proxy(gamed):
    from components.config import EvalConfig

    inputs, _ = gamed
    out = _evaluate(inputs, EvalConfig(n_prompts=8, samples_per_prompt=2, bootstrap_resamples=200))
    samples, report = out.outputs["eval_samples"].table, out.outputs["eval_report"].doc
    assert out.metrics == report["metrics"]  # the stage's metrics are what the gate reads

    assert report["candidate"]["proxy_reward"] > report["champion"]["proxy_reward"]
    assert report["candidate"]["gold_reward"] < report["champion"]["gold_reward"]
    checks = _rejected_for_hacking(report)
    assert checks["length_controlled_win_rate"]["metric"] == "evaluate/lc_heldout_win_rate/ci_low"
    # the same report carries the regression set's likelihood and the length-controlled win rates
    assert report["candidate"]["regression_logp"] < report["champion"]["regression_logp"]
    assert {"lc_proxy_win_rate", "lc_heldout_win_rate"} <= set(report)
    assert set(samples["model"].to_pylist()) == {"candidate", "champion"} and samples.num_rows == 32
    assert "heldout_judge_transcript" not in out.outputs


def test_a_noisy_judge_as_heldout_signal_still_catches_the_hacking(gamed):
    """evaluate.heldout = noisy_gold: the toy judge (noise, position bias, both orders) instead of exact gold."""
    import json

    from components.config import EvalConfig

    inputs, root = gamed
    cfg = EvalConfig(n_prompts=8, samples_per_prompt=2, bootstrap_resamples=200, heldout="noisy_gold",
                     judge={"backend": "toy", "noise": 0.2, "position_bias": 0.2, "budget": 32})
    out = _evaluate(inputs, cfg, _runner(cfg, root / "judge_cache"))
    report, m = out.outputs["eval_report"].doc, out.metrics
    assert {"evaluate/heldout_win_rate/ci_low", "evaluate/reward_hacking"} <= set(m)
    assert "lc_heldout_win_rate" not in report and m["evaluate/heldout_win_rate/n"] == 16
    assert 0 < m["evaluate/heldout_judge_calls"] <= 32  # the runner's statistics, under the stage's name
    verdicts = report["heldout_verdicts"]  # 16 comparisons, each a verdict of the judge asked in both orders
    assert sum(verdicts.values()) == 16 and verdicts.get("b", 0) > verdicts.get("a", 0)
    assert report["heldout_win_rate"]["value"] < 0.5
    checks = _rejected_for_hacking(report)
    assert checks["length_controlled_win_rate"]["metric"] == "evaluate/lc_proxy_win_rate/ci_low"
    calls = (out.outputs["heldout_judge_transcript"].dir / "calls.jsonl").read_text().splitlines()
    assert {json.loads(c)["order"] for c in calls} == {"ab", "ba"}
    with pytest.raises(ValueError, match=r"evaluate\.judge\.budget=31"):  # before sampling
        _evaluate(inputs, cfg, _runner(cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"budget": 31})})))


def test_reference_completions_score_both_models_against_a_fixed_baseline(gamed, tmp_path):
    """evaluate.heldout = judge (the toy backend through make_runner) with reference completions: a corpus review
    for half the held-out prompts; the reference check compares candidate and champion on it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from components.config import EvalConfig, GateConfig
    from components.contract import Seeds
    from components.stages.sample_prompts import heldout_prompts
    from components.toy.language import sample_corpus

    inputs, _ = gamed
    held = heldout_prompts(inputs.table("pool"), 8, Seeds(0, 0, "evaluate").fixed("heldout"))["prompt"].to_pylist()
    ref = tmp_path / "reference.parquet"
    pq.write_table(pa.table({"prompt": [*held[:4], "not a held-out prompt"],
                             "completion": [c for _, c in sample_corpus(7, 5)]}), ref)
    cfg = EvalConfig(n_prompts=8, samples_per_prompt=2, bootstrap_resamples=200, heldout="judge",
                     judge={"backend": "toy", "noise": 0.0, "position_bias": 0.0, "budget": 96},
                     reference_completions=str(ref))
    out = _evaluate(inputs, cfg, _runner(cfg))
    report, m = out.outputs["eval_report"].doc, out.metrics
    for key in ("reference_win_rate", "champion_reference_win_rate"):
        assert m[f"evaluate/{key}/n"] == 8  # 4 prompts × 2 samples: only prompts in the file count
    cand, champ = m["evaluate/candidate/reference_win_rate"], m["evaluate/champion/reference_win_rate"]
    assert cand == report["reference_win_rate"]["value"] and champ == report["champion_reference_win_rate"]["value"]
    assert cand < champ  # the "great" candidate loses ground against the constant baseline
    checks = _rejected_for_hacking(report, GateConfig(max_reference_regression=0.0))
    assert not checks["reference_regression"]["passed"]
    assert checks["reference_regression"]["value"] == pytest.approx(cand - champ)

    pq.write_table(pa.table({"prompt": ["elsewhere"], "completion": ["x"]}), ref)
    with pytest.raises(ValueError, match=f"{ref} has none of the 8 held-out prompts"):
        _evaluate(inputs, cfg, _runner(cfg))
