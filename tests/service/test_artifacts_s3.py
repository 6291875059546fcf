"""The artifact store's S3 mirror against a real S3 endpoint (moto's server on loopback, as in the stack)."""

import os

import pyarrow as pa
import pytest


@pytest.fixture
def s3(tmp_path, monkeypatch):
    from infra import stack

    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
    url = stack.s3_endpoint(tmp_path / "stack", stack.free_port(), env)
    for k, v in {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    yield url
    stack.stop(tmp_path / "stack", "s3")


def test_published_on_one_machine_read_on_another(tmp_path, s3):
    from components.artifacts import ArtifactStore

    writer = ArtifactStore(tmp_path / "a", remote=f"s3://{'alignloop'}/store")
    table = pa.table({"prompt_id": ["p1"], "prompt": ["review pizza :"], "source": ["pizza"], "split": ["train"],
                      "iteration": [0]})
    t_ref = writer.put_table("prompts", table)
    with writer.staging_dir() as d:
        (d / "m").mkdir()
        (d / "m" / "config.json").write_text("{}")
        (d / "m" / "sub").mkdir()
        (d / "m" / "sub" / "w.safetensors").write_bytes(b"\0" * 10)
        m_ref = writer.put_dir("policy", d / "m")

    reader = ArtifactStore(tmp_path / "b", remote="s3://alignloop/store")  # empty local cache
    assert reader.ref("prompts", t_ref.sha256) == t_ref
    assert reader.read_table(t_ref).equals(writer.read_table(t_ref))
    got = reader.path(reader.ref("policy", m_ref.sha256))
    assert sorted(p.relative_to(got).as_posix() for p in got.rglob("*") if p.is_file()) == \
        ["config.json", "sub/w.safetensors"]
    assert not any((tmp_path / "b" / ".staging").iterdir())


def test_upload_without_sidecar_is_invisible(tmp_path, s3):
    from components.artifacts import ArtifactStore

    store = ArtifactStore(tmp_path / "a", remote="s3://alignloop/store")
    store.remote.s3.put_object(Bucket="alignloop", Key="store/eval_report/abc.json", Body=b"{}")  # crashed upload
    with pytest.raises(FileNotFoundError, match=r"eval_report/abc\.ref\.json"):
        ArtifactStore(tmp_path / "b", remote="s3://alignloop/store").ref("eval_report", "abc")
    ref = store.put_json("eval_report", {"x": 1})
    assert store.remote.has(f"eval_report/{ref.sha256}.ref.json")


def test_a_corrupt_local_copy_is_replaced_from_the_mirror(tmp_path, s3):
    import os

    from components.artifacts import ArtifactStore, CorruptArtifact

    store = ArtifactStore(tmp_path / "a", remote="s3://alignloop/store")
    with store.staging_dir() as d:
        (d / "m").mkdir()
        (d / "m" / "model.safetensors").write_bytes(b"\1" * 64)
        ref = store.put_dir("policy", d / "m")
    weights = store.root / ref.uri / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"\1" * 63 + b"\2")  # a flipped byte, mtime moved
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert (store.path(ref) / "model.safetensors").read_bytes() == b"\1" * 64  # re-fetched, verified, replaced
    assert not any((tmp_path / "a" / ".staging").iterdir())

    # the mirror's copy is bad too: nothing good to fetch, the error names the artifact
    store.remote.s3.put_object(Bucket="alignloop", Key=f"store/{ref.uri}/model.safetensors", Body=b"\3" * 64)
    weights.write_bytes(b"\1" * 63 + b"\2")
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000))
    with pytest.raises(CorruptArtifact, match=f"corrupt policy artifact {ref.sha256}"):
        store.path(ref)
