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
    back = store.read_table(a)  # optional columns the table lacked come back as nulls
    assert back.select(prompts().column_names).equals(prompts()) and back["messages"].null_count == 10
    assert store.put_table("prompts", prompts(8)).sha256 != a.sha256
    assert not list((tmp_path / ".staging").iterdir())  # nothing half-written left behind


def test_schema_errors_name_column_and_source(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(SchemaError, match=r"missing column\(s\) \['split'\]"):
        store.put_table("prompts", prompts().drop(["split"]))
    bad = tmp_path / "bad.parquet"
    pq.write_table(prompts().set_column(3, "split", pa.array([None] * 10, pa.string())), bad)
    # stored before the schema check existed: its hash is right, its content is not
    from components.artifacts import ArtifactRef, _file_sha

    sha = _file_sha(bad)
    ref = ArtifactRef(kind="prompts", sha256=sha, uri=f"prompts/{sha}.parquet", schema_version=1)
    (tmp_path / "prompts").mkdir(exist_ok=True)
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


def _flip_byte(path, offset=-20):
    """Corrupt one byte in place, the way bit rot or a stray write would (the mtime moves, as a write makes it)."""
    import os

    st = path.stat()
    os.chmod(path, 0o644)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))


def _model(store, payload=b"\x01" * 64):
    with store.staging_dir() as d:
        (d / "m").mkdir()
        (d / "m" / "config.json").write_text("{}")
        (d / "m" / "model.safetensors").write_bytes(payload)
        return store.put_dir("policy", d / "m")


def test_a_flipped_byte_in_a_model_is_caught_before_it_is_loaded(tmp_path):
    from components.artifacts import CorruptArtifact
    from components.contract import Inputs

    store = ArtifactStore(tmp_path)
    ref = _model(store)
    inputs = Inputs(str(tmp_path), {"policy": ref}, 0)
    assert inputs.path("policy") == str(tmp_path / ref.uri)
    _flip_byte(tmp_path / ref.uri / "model.safetensors")
    for read in (lambda: store.path(ref), lambda: ArtifactStore(tmp_path).path(ref), lambda: inputs.path("policy")):
        with pytest.raises(CorruptArtifact) as err:
            read()
        assert isinstance(err.value, ValueError)
        msg = str(err.value)
        assert f"corrupt policy artifact {ref.sha256}" in msg and str(tmp_path / ref.uri) in msg
        assert "alignloop verify --repair" in msg
    # a checkpoint named by hub id is not in the store: nothing to verify
    hub = ref.model_copy(update={"uri": "gpt2", "meta": {"hub_id": "gpt2"}})
    assert Inputs(str(tmp_path), {"policy": hub}, 0).path("policy") == "gpt2"


def test_a_corrupt_table_names_its_path_not_a_bare_arrow_error(tmp_path):
    from components.artifacts import CorruptArtifact

    store = ArtifactStore(tmp_path)
    ref = store.put_table("prompts", prompts())
    path = tmp_path / ref.uri
    _flip_byte(path, offset=len(path.read_bytes()) // 2)
    with pytest.raises(CorruptArtifact, match=rf"corrupt prompts artifact {ref.sha256} at {path}"):
        store.read_table(ref)
    # truncated: pyarrow's "Unexpected end of stream" (or similar) comes out as the same error, naming the file
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(CorruptArtifact, match=str(path)):
        store.read_table(ref)


def test_unchanged_files_are_not_hashed_again(tmp_path, monkeypatch):
    import os

    from components import artifacts

    store = ArtifactStore(tmp_path)
    ref, table = _model(store), store.put_table("prompts", prompts())
    calls = []
    real = artifacts._file_sha
    monkeypatch.setattr(artifacts, "_file_sha", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        store.path(ref)
        ArtifactStore(tmp_path).read_table(table)  # another process: the cache is on disk
    assert calls == []  # hashed once, when published
    f = tmp_path / ref.uri / "config.json"
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 5_000_000))  # touched, same bytes
    store.path(ref)
    assert calls == [f]
    store.path(ref)
    assert calls == [f]
    store.verify(ref, full=True)  # `alignloop verify`: every byte again
    assert len(calls) == 3
