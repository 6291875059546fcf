"""`alignloop prompts import`: every source format gives the same pool with its chat structure kept, ids are stable
content ids, --append adds only new prompts as a new DVC version, and a bad row stops the import with FILE:LINE
and the field, leaving the pool untouched. Also: the sample stage and pool validation keep / check `messages`."""

import csv
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from components.prompt_import import file_md5, pool_version, prompt_id
from flows.cli import app

SYSTEM_CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime."}]
CHAT = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Tell me a joke."}]
ROWS = [{"messages": SYSTEM_CHAT, "source": "logs"}, {"prompt": "Write a haiku about rain."},
        {"messages": CHAT, "split": "eval"}, {"prompt": "Summarise: the cat sat.", "split": "train"},
        {"prompt": "Write a haiku about rain."}]  # a duplicate


def run(*args, cwd=None):
    old = os.getcwd()
    try:
        if cwd:
            os.chdir(cwd)
        r = CliRunner().invoke(app, ["prompts", "import", *map(str, args)])
    finally:
        os.chdir(old)
    return r


def write(path, rows):
    """`rows` in the format `path`'s extension (or a directory: datasets save_to_disk) names."""
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, ["prompt", "messages", "source", "split"])
            w.writeheader()
            for r in rows:
                w.writerow({**r, "messages": json.dumps(r["messages"]) if "messages" in r else ""})
    else:
        cols = {k: [r.get(k) for r in rows] for k in ("prompt", "messages", "source", "split")}
        table = pa.table({k: pa.array(v, pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])))
                          if k == "messages" else pa.array(v, pa.string()) for k, v in cols.items()})
        if path.suffix == ".parquet":
            pq.write_table(table, path)
        else:
            from datasets import Dataset

            Dataset(table).save_to_disk(str(path))
    return path


@pytest.mark.parametrize("name", ["p.jsonl", "p.json", "p.csv", "p.parquet", "p_ds"])
def test_every_format_gives_the_same_pool(tmp_path, name):
    src = write(tmp_path / name, ROWS)
    r = run(src, "--out", tmp_path / "pool.parquet", "--source", "mine")
    assert r.exit_code == 0, r.output
    pool = pq.read_table(tmp_path / "pool.parquet").to_pylist()
    assert "duplicates skipped" in r.output and len(pool) == 4
    by_id = {row["prompt_id"]: row for row in pool}
    first = by_id[prompt_id(SYSTEM_CHAT)]
    assert first["messages"] == SYSTEM_CHAT and first["source"] == "logs"  # system turn kept, structure kept
    assert first["prompt"] == "System: You are terse.\n\nUser: Name a prime."
    assert by_id[prompt_id(CHAT)]["split"] == "eval" and by_id[prompt_id(CHAT)]["messages"] == CHAT
    plain = by_id[prompt_id("Write a haiku about rain.")]
    assert plain["messages"] is None and plain["source"] == "mine"
    assert {row["split"] for row in pool} == {"train", "eval"}


def test_ids_and_splits_are_stable_across_imports(tmp_path):
    rows = [{"prompt": f"prompt number {i}"} for i in range(40)]
    a = run(write(tmp_path / "a.jsonl", rows), "--out", tmp_path / "a.parquet", "--eval-fraction", "0.25")
    b = run(write(tmp_path / "b.jsonl", rows[::-1]), "--out", tmp_path / "b.parquet", "--eval-fraction", "0.25")
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    ta, tb = (pq.read_table(tmp_path / f"{x}.parquet").to_pylist() for x in "ab")
    splits = {r["prompt_id"]: r["split"] for r in ta}
    assert splits == {r["prompt_id"]: r["split"] for r in tb}  # same id, same split, whatever the order
    assert 3 <= list(splits.values()).count("eval") <= 18
    assert run(tmp_path / "a.jsonl", "--out", tmp_path / "a.parquet").exit_code == 2  # exists: --append/--overwrite


@pytest.fixture
def dvc_repo(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([os.path.join(os.path.dirname(sys.executable), "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def test_append_adds_new_prompts_as_a_new_dvc_version(dvc_repo):
    first = [{"prompt": f"old prompt {i}"} for i in range(10)] + [{"messages": SYSTEM_CHAT}]
    r = run(write(dvc_repo / "day1.jsonl", first), "--out", "data/pool.parquet", cwd=dvc_repo)
    assert r.exit_code == 0, r.output
    pool, dvc_file = dvc_repo / "data/pool.parquet", dvc_repo / "data/pool.parquet.dvc"
    md5_1 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    assert md5_1 == file_md5(pool) and md5_1 in r.output
    before = pq.read_table(pool).to_pylist()

    second = [{"prompt": "old prompt 3"}, {"messages": SYSTEM_CHAT}, {"prompt": "new prompt A"},
              {"messages": CHAT, "source": "labellers"}]
    r = run(write(dvc_repo / "day2.jsonl", second), "--out", "data/pool.parquet", "--append", cwd=dvc_repo)
    assert r.exit_code == 0, r.output
    after = pq.read_table(pool).to_pylist()
    assert after[:len(before)] == before  # old rows, order and splits unchanged
    assert [x["prompt_id"] for x in after[len(before):]] == [prompt_id("new prompt A"), prompt_id(CHAT)]
    md5_2 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    assert md5_2 != md5_1 and md5_2 == file_md5(pool) == pool_version(pool)["md5"]
    assert pool_version(pool)["rows"] == len(after) == 13


BAD = [
    ({"messages": [{"role": "user", "content": ""}]}, "messages[0].content"),
    ({"prompt": None}, "'prompt' is null"),
    ({"prompt": 42}, "'prompt' must be a string"),
    ({"messages": [{"role": "robot", "content": "beep"}]}, "messages[0].role is 'robot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}, "last turn"),
    ({"prompt": "x", "split": "test"}, "field 'split'"),
    ({"prompt": "   "}, "'prompt' is empty"),
]


@pytest.mark.parametrize("bad,needle", BAD)
def test_a_bad_row_names_file_line_and_field_and_writes_nothing(tmp_path, bad, needle):
    pool = tmp_path / "pool.parquet"
    assert run(write(tmp_path / "ok.jsonl", [{"prompt": "a"}, {"prompt": "b"}]), "--out", pool).exit_code == 0
    before = pool.read_bytes()
    src = write(tmp_path / "bad.jsonl", [{"prompt": "fine"}, bad])
    r = run(src, "--out", pool, "--append")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"{src}:2" in r.output.replace("\n", "") and needle in r.output.replace("\n", ""), r.output
    assert pool.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.jsonl", "ok.jsonl", "pool.parquet"]


def test_bad_rows_in_csv_and_parquet_name_their_place(tmp_path):
    src = tmp_path / "p.csv"
    src.write_text('prompt,messages\nfine,\n"two\nlines",\n,"[{""role"": ""robot"", ""content"": ""x""}]"\n')
    r = run(src, "--out", tmp_path / "pool.parquet")
    assert r.exit_code == 2 and f"{src}:5" in r.output.replace("\n", "") and "robot" in r.output, r.output
    src = write(tmp_path / "p.parquet", [{"prompt": "fine"}, {}])
    r = run(src, "--out", tmp_path / "pool.parquet")
    assert r.exit_code == 2 and f"{src}: row 2" in r.output.replace("\n", ""), r.output
    assert not (tmp_path / "pool.parquet").exists()


def test_sample_prompts_keeps_the_conversation(tmp_path, stage_inputs):
    from components.config import SampleConfig
    from components.contract import Backends, Seeds
    from components.stages import sample_prompts

    rows = [{"messages": [{"role": "user", "content": f"question {i}?"}]} for i in range(8)]
    assert run(write(tmp_path / "c.jsonl", rows), "--out", tmp_path / "pool.parquet").exit_code == 0
    pool = pq.read_table(tmp_path / "pool.parquet")
    out = sample_prompts.run(SampleConfig(n_prompts=3), stage_inputs(pool=pool), backends=Backends(),
                             seed=Seeds(0, 0, "sample_prompts")).outputs["prompts"].table
    assert out.num_rows == 3 and all(m and m[0]["content"].startswith("question") for m in out["messages"].to_pylist())
    held = sample_prompts.heldout_prompts(pool, 2, seed=1)
    assert held.num_rows >= 1 and held["messages"].to_pylist()[0][0]["role"] == "user"


def test_check_pool_validates_messages(tmp_path):
    from components.config import LoopConfig
    from components.validation import check_pool

    assert run(write(tmp_path / "c.jsonl", [{"messages": SYSTEM_CHAT}, {"prompt": "p"}, {"prompt": "q"}]),
               "--out", tmp_path / "pool.parquet").exit_code == 0
    pool = pq.read_table(tmp_path / "pool.parquet")
    cfg = LoopConfig(sample={"n_prompts": 1})
    assert check_pool(pool, cfg, "pool.parquet").num_rows == 3
    broken = pool.to_pylist()
    broken[0]["messages"] = [{"role": "robot", "content": "x"}]
    with pytest.raises(ValueError, match=r"pool.parquet: row 1: messages\[0\].role is 'robot'"):
        check_pool(pa.Table.from_pylist(broken, schema=pool.schema), cfg, "pool.parquet")


def test_lineage_names_the_pool_version_an_iteration_sampled(tmp_path):
    from components.artifacts import ArtifactStore
    from components.workspace import Workspace
    from flows.cmd_registry import _pool_of

    assert run(write(tmp_path / "c.jsonl", ROWS), "--out", tmp_path / "pool.parquet").exit_code == 0
    ws, path = Workspace.at(tmp_path / "ws"), str(tmp_path / "pool.parquet")
    # what flows/iteration.py _start_state stores as the iteration's pool
    ref = ArtifactStore(ws.store).put_table("prompts", pq.read_table(path), meta={"origin": path,
                                                                                  **pool_version(path)})
    ws.write_ledger(0, {"iteration": 0, "start": {"pool": ref.model_dump(mode="json")}})
    assert _pool_of(ws, 0) == {"path": path, "md5": file_md5(path), "rows": 4, "artifact_sha": ref.sha256}
    assert _pool_of(ws, 1) is None
