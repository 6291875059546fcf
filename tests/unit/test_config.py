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
