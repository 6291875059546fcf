"""Human labels through a real Label Studio (1.23, from PyPI, its own venv: label_studio_server.py): export the
review queue as Pairwise tasks, create a project with the exported config through label-studio-sdk, import the
tasks, annotate as an annotator would, export as JSON, and `alignloop labels import` the export; the labels wait
for the next iteration as label_source=human. Bad exports (re-import, unknown pair) are refused whole."""

import json
import subprocess

import pytest
from service_helpers import EXE

from components.artifacts import ArtifactStore
from components.human_queue import pending_imports, queue_records, write_queue
from components.workspace import Workspace

pytestmark = [pytest.mark.slow, pytest.mark.label_studio, pytest.mark.timeout(1200)]

PROMPT = "review pizza crust :"
PAIRS = [  # (iteration, response_a, response_b, rm_uncertainty, what the annotator does)
    (1, " the crust was great .", " the battery was bad", 0.9, "right"),
    (1, " the crust was fine .", " the crust was great .", 0.4, "left"),
    (1, " the sauce was ok .", " the sauce was sad sad", 0.7, None),  # not annotated
    (2, " lovely dough .", " bad bad bad", 0.2, "cancel"),  # skipped by the annotator
]


def _cli(*args: str, ws: Workspace) -> tuple[int, str]:
    """Exit code and output, whitespace-normalized (rich wraps long lines at 190 columns in a pipe)."""
    res = subprocess.run([EXE, "labels", *args, "--workspace", str(ws.root)], capture_output=True, text=True,
                         timeout=120)
    return res.returncode, " ".join((res.stdout + res.stderr).split())


def _queue(ws: Workspace) -> list[dict]:
    recs = []
    for it in (1, 2):
        rows = [p for p in PAIRS if p[0] == it]
        recs += write_queue(ws, it, queue_records(
            [PROMPT] * len(rows), [r[1] for r in rows], [r[2] for r in rows], [0.1] * len(rows),
            [r[3] for r in rows], [0.6] * len(rows), ["inconsistent"] * len(rows), iteration=it)).read_text(
        ).splitlines()
    return [json.loads(r) for r in recs]


def _annotate(ls, project_id: int, recs: list[dict]) -> None:
    """Submit annotations as an annotator does (the SDK's annotations.create on each task)."""
    from components.label_studio import pairwise_result

    me = ls.users.whoami()
    action = {r["id"]: p[4] for r, p in zip(recs, PAIRS)}
    for task in ls.tasks.list(project=project_id):
        what = action[task.data["pair_id"]]
        if what == "cancel":
            ls.annotations.create(task.id, result=[], was_cancelled=True, completed_by=me.id)
        elif what:
            ls.annotations.create(task.id, result=pairwise_result(what), was_cancelled=False, completed_by=me.id,
                                  lead_time=3.5)


def test_label_studio_round_trip(tmp_path, label_studio):
    from label_studio_sdk import LabelStudio

    ws = Workspace.at(tmp_path / "ws")
    recs = _queue(ws)
    out = tmp_path / "ls"
    rc, text = _cli("export", "--format", "label-studio", "--out", str(out), ws=ws)
    assert rc == 0, text
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["predictions"][0]["score"] for t in tasks] == [p[3] for p in PAIRS]

    ls = LabelStudio(base_url=label_studio.url, api_key=label_studio.token)
    project = ls.projects.create(title="alignloop review", label_config=(out / "labeling-config.xml").read_text())
    imported = ls.projects.import_tasks(project.id, request=tasks, return_task_ids=True)
    assert imported.task_count == len(PAIRS) and imported.prediction_count == len(PAIRS)
    _annotate(ls, project.id, recs)
    export = tmp_path / "project-export.json"
    export.write_bytes(b"".join(ls.projects.exports.download_sync(project.id, export_type="JSON",
                                                                  download_all_tasks=True)))
    assert {r["type"] for t in json.loads(export.read_text()) for a in t["annotations"] for r in a["result"]} \
        == {"pairwise"}

    rc, text = _cli("import", str(export), ws=ws)
    assert rc == 0 and "imported 2 human label(s)" in text and "skipped 2 unreviewed" in text, text
    # what the next iteration's start state picks up (flows/iteration.py: pending_imports of unconsumed imports)
    (ref,) = pending_imports(ws, consumed=set())
    rows = {(r["chosen"], r["rejected"]): r for r in ArtifactStore(ws.store).read_table(ref).to_pylist()}
    assert set(rows) == {(PAIRS[0][2], PAIRS[0][1]), (PAIRS[1][1], PAIRS[1][2])}
    assert {r["label_source"] for r in rows.values()} == {"human"} and {r["iteration"] for r in rows.values()} == {1}
    assert "2 imported label(s) waiting" in _cli("queue", ws=ws)[1]

    log = (ws.root / "human_labels" / "imports.jsonl").read_text()
    rc, text = _cli("import", str(export), ws=ws)  # the same export again: refused whole
    assert rc == 2 and "project-export.json:1: task #1" in text and "already imported" in text, text
    doc = json.loads(export.read_text())[2:]  # the two tasks not imported yet, one of them edited
    doc[0]["data"]["pair_id"] = "not-a-queued-pair"
    bad = tmp_path / "edited.json"
    bad.write_text(json.dumps(doc, indent=1))
    rc, text = _cli("import", str(bad), ws=ws)
    assert rc == 2 and "edited.json:2: task #1" in text and "unknown pair id" in text, text
    assert (ws.root / "human_labels" / "imports.jsonl").read_text() == log
