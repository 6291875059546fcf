import pytest
from pydantic import ValidationError

from components.config import ConfigError, LoopConfig, config_hash, load_config


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_override(tmp_path):
    cfg = load_config(write(tmp_path, "name: t\n"), ["train_policy.beta=0.3", "generate.samples_per_prompt=4"])
    assert cfg.train_policy.beta == 0.3 and cfg.generate.samples_per_prompt == 4
    assert config_hash(cfg) != config_hash(LoopConfig(name="t"))


def test_unknown_key_names_file_and_key(tmp_path):
    p = write(tmp_path, "train_policy:\n  betta: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(p) in str(err.value) and "train_policy.betta: unknown key" in str(err.value)


@pytest.mark.parametrize("override,field", [("generate.samples_per_prompt=1", "generate.samples_per_prompt"),
                                            ("train_policy.beta=-0.1", "train_policy.beta"),
                                            ("evaluate.confidence=1.5", "evaluate.confidence")])
def test_impossible_values(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(write(tmp_path, "{}"), [override])


def test_frozen_and_gold_requirement(tmp_path):
    cfg = load_config(write(tmp_path, "{}"))
    with pytest.raises(ValidationError):
        cfg.seed = 3
    with pytest.raises(ConfigError, match="gold"):
        load_config(write(tmp_path, "gold: null\n"))


def test_bad_yaml_and_bad_override(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [\n"))
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        load_config(write(tmp_path, "{}"), ["novalue"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_heldout_signal_is_the_evaluate_stages_and_the_old_gate_key_names_its_new_place(tmp_path):
    with pytest.raises(ConfigError, match=r"gate\.heldout_judge: moved to evaluate\.heldout"):
        load_config(write(tmp_path, "gate:\n  heldout_judge: none\n"))
    tiny = load_config("configs/tiny.yaml")  # the embedded default: the toy judge plays the held-out LLM judge
    assert tiny.evaluate.heldout == "noisy_gold" and tiny.evaluate.heldout_judge().backend == "toy"
    assert tiny.evaluate.heldout_judge() is not tiny.label.judge
    for exp in ("gold-oracle", "unconstrained", "unconstrained-dpo", "rloo", "small"):
        load_config(["configs/tiny.yaml", f"configs/experiments/{exp}.yaml"])
    # noisy_gold without a toy judge config: noise 0.1, position bias 0.1, a budget that covers the comparisons
    judge = LoopConfig(evaluate={"heldout": "noisy_gold", "n_prompts": 8, "samples_per_prompt": 2}).evaluate
    assert (judge.heldout_judge().noise, judge.heldout_judge().budget) == (0.1, 32)
    problems = {
        "gold: null\nlabel: {seed_gold_pairs: 0}\nevaluate: {regression_set: none, heldout: noisy_gold}":
            "evaluate.heldout='noisy_gold' needs `gold: toy`",
        "evaluate: {heldout: judge}": r"evaluate.heldout='judge' needs evaluate.judge.backend",
        "evaluate: {heldout: noisy_gold, judge: {backend: hf, model: m}}": "toy backend",
        "evaluate: {heldout: judge, n_prompts: 64, samples_per_prompt: 4, judge: {backend: toy, budget: 511}}":
            r"evaluate.judge.budget=511 does not cover.*512 calls",
        "evaluate: {heldout: judge, n_prompts: 8, samples_per_prompt: 2, reference_completions: r.parquet,"
        " judge: {backend: toy, budget: 32}}": r"evaluate.judge.budget=32 .*96 calls.*3 comparisons",
        "evaluate: {heldout: none, reference_completions: r.parquet}": "needs a held-out signal",
        "gate: {max_reference_regression: 0.05}": "needs evaluate.reference_completions",
    }
    for text, message in problems.items():
        with pytest.raises(ConfigError, match=message):
            load_config(write(tmp_path, text))
