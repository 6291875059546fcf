import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.artifacts import ArtifactStore
from components.config import SampleConfig
from components.schemas import SchemaError
from components.stages import sample_prompts


def prompts(n=10):
    return pa.table({"prompt_id": [f"p{i}" for i in range(n)], "prompt": [f"review x{i} :" for i in range(n)],
                     "source": ["a", "b"] * (n // 2), "split": ["train"] * (n - 2) + ["eval"] * 2})


def test_table_roundtrip_is_content_addressed(tmp_path):
    store = ArtifactStore(tmp_path)
    a = store.put_table("prompts", prompts())
    b = store.put_table("prompts", prompts(), parents=[a])
    assert a.sha256 == b.sha256 and a.meta["rows"] == 10
    assert store.read_table(a).equals(prompts())
    assert store.put_table("prompts", prompts(8)).sha256 != a.sha256
    assert not list((tmp_path / ".staging").iterdir())  # nothing half-written left behind


def test_schema_errors_name_column_and_source(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['split'\]"):
        store.put_table("prompts", prompts().drop(["split"]))
    bad = tmp_path / "bad.parquet"
    pq.write_table(prompts().set_column(3, "split", pa.array([None] * 10, pa.string())), bad)
    ref = store.put_table("prompts", prompts())
    (tmp_path / ref.uri).unlink()
    bad.rename(tmp_path / ref.uri)
    with pytest.raises(SchemaError, match="'split' has 10 null"):
        store.read_table(ref)


def test_directory_artifacts_reject_pickles(tmp_path):
    store = ArtifactStore(tmp_path)
    with store.staging_dir() as d:
        (d / "m").mkdir()
        (d / "m" / "model.safetensors").write_bytes(b"x")
        ref = store.put_dir("policy", d / "m")
    assert (store.path(ref) / "model.safetensors").exists()
    assert store.ref("policy", ref.sha256) == ref
    with store.staging_dir() as d:
        (d / "m").mkdir()
        (d / "m" / "pytorch_model.bin").write_bytes(b"x")
        with pytest.raises(ValueError, match="safetensors"):
            store.put_dir("policy", d / "m")


def test_sampling_is_stratified_disjoint_across_iterations_and_excludes_eval(stage_inputs):
    from components.contract import Backends, Seeds

    pool = prompts(20)
    cfg = SampleConfig(n_prompts=6)

    def sample(cfg, pool, iteration, seed):
        return sample_prompts.run(cfg, stage_inputs(iteration, pool=pool), backends=Backends(),
                                  seed=Seeds(seed, iteration, "sample_prompts")).outputs["prompts"].table

    it0, it1 = sample(cfg, pool, iteration=0, seed=1), sample(cfg, pool, iteration=1, seed=1)
    ids0, ids1 = set(it0["prompt_id"].to_pylist()), set(it1["prompt_id"].to_pylist())
    assert not ids0 & ids1 and len(ids0) == 6
    assert set(it0["split"].to_pylist()) == {"train"}
    assert it0["source"].to_pylist().count("a") == 3
    assert sample(cfg, pool, iteration=0, seed=1).equals(it0)
