"""The review queue as Label Studio tasks, and Label Studio's JSON export read back as choices. No Label Studio
code is needed here: both sides are plain JSON (its SDK is only used by the test that drives a real server).

    alignloop labels export --format label-studio --out review/   # tasks.json + labeling-config.xml
    alignloop labels import review/project-export.json            # Label Studio's "JSON" export

Export: `tasks.json`, a task list for Label Studio's JSON import, one task per queued pair, for its Pairwise
template (`labeling-config.xml`: the prompt, then text1 | text2, pick the better one):

    {"data":        {"pair_id": str, "prompt": str, "text1": str, "text2": str},
                     text1 is the queue's response_a (the side the reward-model ensemble weakly preferred)
     "meta":        {"pair_id", "iteration", "rm_margin", "rm_uncertainty", "rm_agreement", "reason"},
     "predictions": [{"model_version": "alignloop-rm-ensemble", "score": rm_uncertainty,
                      "result": [{"type": "pairwise", "value": {"selected": "left"}, ...}]}]}

The prediction is the ensemble's preference (left), its score the ensemble's uncertainty, so annotators can sort
by it in the data manager. Label Studio assigns its own numeric task ids: our pair id travels as data.pair_id.

Import: Label Studio's JSON export is a JSON array of those tasks, each with `annotations[]` whose `result[]`
holds `{"type": "pairwise", "value": {"selected": "left" | "right"}}` (left = data.text1, right = data.text2).
An annotation that was cancelled (skipped) or has no pairwise result counts as unreviewed; when annotators of one
task disagree the pair is left unlabelled (`conflicting`). The chosen side's text is matched against the queued
pair, so a task whose texts were edited is refused rather than mislabelled.
"""

from __future__ import annotations

import json
from pathlib import Path

FROM_NAME, TO_NAME = "pw", "text1,text2"
MODEL_VERSION = "alignloop-rm-ensemble"

LABEL_CONFIG = """\
<View>
  <Header value="Prompt"/>
  <Text name="prompt" value="$prompt"/>
  <Header value="Which response is better? (left or right)"/>
  <Text name="text1" value="$text1"/>
  <Text name="text2" value="$text2"/>
  <Pairwise name="pw" toName="text1,text2"/>
</View>
"""


def pairwise_result(selected: str) -> list[dict]:
    """A Pairwise tag's result as Label Studio stores it: what an annotator (or a prediction) submits."""
    return [{"from_name": FROM_NAME, "to_name": TO_NAME, "type": "pairwise", "value": {"selected": selected}}]


def to_tasks(records: list[dict]) -> list[dict]:
    """Queue records (components.human_queue) as Label Studio tasks for the Pairwise template."""
    tasks = []
    for rec in records:
        d, m = rec["data"], rec["meta"]
        tasks.append({"data": {"pair_id": rec["id"], "prompt": d["prompt"], "text1": d["response_a"],
                               "text2": d["response_b"]},
                      "meta": {"pair_id": rec["id"], "iteration": rec["iteration"], **m},
                      "predictions": [{"model_version": MODEL_VERSION, "score": float(m["rm_uncertainty"]),
                                       "result": pairwise_result("left")}]})
    return tasks


def write_export(records: list[dict], out: Path) -> tuple[Path, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks, config = out / "tasks.json", out / "labeling-config.xml"
    tasks.write_text(json.dumps(to_tasks(records), ensure_ascii=False, indent=1) + "\n")
    config.write_text(LABEL_CONFIG)
    return tasks, config


def is_export(text: str) -> bool:
    """Label Studio's JSON export is one JSON array; the queue's format is JSON lines (objects)."""
    return text.lstrip().startswith("[")


def _array_items(text: str, file: Path):
    """(line, item) for each element of a top-level JSON array, line = where the element starts."""
    dec, i = json.JSONDecoder(), text.index("[") + 1
    n = 0
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise ValueError(f"{file}:{text.count(chr(10), 0, i) + 1}: unterminated JSON array")
        if text[i] == "]":
            return
        line = text.count("\n", 0, i) + 1
        try:
            item, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}:{err.lineno}: not valid JSON ({err.msg})") from None
        n += 1
        yield line, n, item


def _selected(task: dict, where: str) -> list[str]:
    """The sides picked by the task's submitted (not cancelled) annotations."""
    picks = []
    for ann in task.get("annotations") or []:
        if not isinstance(ann, dict) or ann.get("was_cancelled"):
            continue
        for res in ann.get("result") or []:
            if not isinstance(res, dict) or res.get("type") != "pairwise":
                continue
            sel = (res.get("value") or {}).get("selected")
            if sel not in ("left", "right"):
                raise ValueError(f"{where}: annotation {ann.get('id')}: pairwise value.selected must be 'left' "
                                 f"or 'right', got {sel!r}")
            picks.append(sel)
    return picks


def read_export(file: Path, text: str, queued: dict[str, dict]) -> list[tuple[str, str | None, str | None]]:
    """(where, pair id, choice) per task of a Label Studio JSON export; choice "a" | "b" | None (unreviewed) |
    "conflict". Shape errors raise ValueError naming FILE:LINE and the task; id checks are the caller's."""
    out = []
    for line, n, task in _array_items(text, file):
        where = f"{file}:{line}: task #{n}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ValueError(f"{where}: each task needs a 'data' object")
        where += f" (Label Studio id {task['id']})" if "id" in task else ""
        data = task["data"]
        pid = data.get("pair_id") or (task.get("meta") or {}).get("pair_id")
        if not pid:
            raise ValueError(f"{where}: no data.pair_id (tasks must come from `alignloop labels export`)")
        if not isinstance(pid, str):
            raise ValueError(f"{where}: data.pair_id must be a string, got {pid!r}")
        picks = set(_selected(task, where))
        if not picks or pid not in queued:
            out.append((where, pid, None))
            continue
        if len(picks) > 1:
            out.append((where, pid, "conflict"))
            continue
        text_chosen = data.get("text1" if picks.pop() == "left" else "text2")
        q = queued[pid]["data"]
        if text_chosen == q["response_a"]:
            out.append((where, pid, "a"))
        elif text_chosen == q["response_b"]:
            out.append((where, pid, "b"))
        else:
            raise ValueError(f"{where}: the selected text is neither response of pair {pid!r} (task edited?)")
    return out
