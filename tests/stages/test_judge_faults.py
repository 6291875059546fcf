"""The OpenAI-compatible judge against a fault-injecting server (tests/stages/fault_judge_server.py, on
127.0.0.1): per fault mode, no pair gets a label from anything but a verdict marker in both orders, each fault is
counted where it belongs, and the label stage finishes (0 judge labels and a warning when the judge is down)."""

import logging
import time

import numpy as np
import pyarrow as pa
import pytest
from fault_judge_server import FaultJudgeServer

from components.backends.judge_openai import OpenAIJudge, retry_after_s
from components.config import LabelConfig
from components.contract import Backends, Seeds
from components.judge import JudgeRunner
from components.stages import label

PAIRS = (["p0", "p1"], ["review pizza :", "review coffee :"], [" great pizza .", " bad coffee ."],
         [" bad pizza .", " great coffee ."])
VERDICT_MODES = {"ok": ["a", "b"], "verbose": ["a", "b"], "e429": ["a", "b"]}
# mode -> (outcome of every pair, the stats that count it: 4 questions = 2 pairs x 2 orders)
FAULT_MODES = {
    "plain": ("no_verdict", {"label/judge_no_verdict": 4, "label/judge_errors": 0}),
    "e500": ("error", {"label/judge_errors/transport": 4}),
    "slow": ("error", {"label/judge_errors/transport": 4}),
    "badjson": ("error", {"label/judge_errors/bad_response": 4}),
    "nochoices": ("error", {"label/judge_errors/bad_response": 4}),
    "e400": ("error", {"label/judge_errors/too_long": 4, "label/judge_calls": 4}),
}


@pytest.fixture(scope="module")
def server():
    with FaultJudgeServer(slow_s=1.5) as s:
        yield s


def _runner(server, mode, tmp_path, **kw):
    judge = OpenAIJudge(server.base_url, mode, timeout_s=0.4, max_tokens=256)
    opts = {"budget": 20, "concurrency": 2, "max_retries": 1, "backoff_s": 0.05, "cache_path": tmp_path / "c.jsonl"}
    return JudgeRunner(judge, **{**opts, **kw})


def _no_label_without_verdicts(runner, outcomes):
    by_pair = {}
    for t in runner.transcript:
        by_pair.setdefault(t["pair_id"], []).append(t)
    for pid, out in zip(PAIRS[0], outcomes):
        if out in ("a", "b"):
            assert all(t["verdict"] in ("A", "B") and f"[[{t['verdict']}]]" in t["raw"] for t in by_pair[pid])
    assert all(a.verdict is not None for a in runner.cache.entries.values())  # only verdicts are cached


@pytest.mark.parametrize("mode", sorted(VERDICT_MODES))
def test_markers_are_verdicts_whatever_surrounds_them(server, mode, tmp_path):
    server.reset()
    runner = _runner(server, mode, tmp_path)
    t0 = time.monotonic()
    out = runner.judge_pairs(*PAIRS)
    assert out == VERDICT_MODES[mode]
    _no_label_without_verdicts(runner, out)
    s = runner.stats()
    assert s["label/judge_calls"] == 4 and s["label/judge_tokens"] == 4 * 42 and s["label/judge_errors"] == 0
    if mode == "e429":  # retried once, no earlier than Retry-After: 1 (plus jitter)
        (_, t_429, _), *rest = [r for r in server.requests]
        assert server.requests[0][2] == 429 and len(rest) == 4
        assert sorted(t["attempts"] for t in runner.transcript) == [1, 1, 1, 2]
        retried = max(t for _, t, _ in rest)
        assert retried - t_429 >= 1.0 and time.monotonic() - t0 < 5


@pytest.mark.parametrize("mode", sorted(FAULT_MODES))
def test_faults_are_never_labels(server, mode, tmp_path):
    server.reset()
    runner = _runner(server, mode, tmp_path)
    t0 = time.monotonic()
    out = runner.judge_pairs(*PAIRS)
    outcome, counts = FAULT_MODES[mode]
    assert out == [outcome, outcome]
    s = runner.stats()
    assert {k: s[k] for k in counts} == counts, s
    retried = mode in ("e500", "slow")
    assert all(t["attempts"] == (2 if retried else 1) for t in runner.transcript)
    assert runner.cache.entries == {} and runner.health_warning() is not None
    assert time.monotonic() - t0 < 6


def test_401_is_a_configuration_error(server, tmp_path):
    with pytest.raises(ValueError, match="HTTP 401"):
        _runner(server, "e401", tmp_path).judge_pairs(*PAIRS)


def test_a_judge_that_stays_down_is_given_up_on(server, tmp_path):
    server.reset()
    n = 12
    runner = _runner(server, "e500", tmp_path, give_up_after=3, concurrency=1, max_retries=0)
    out = runner.judge_pairs([f"p{i}" for i in range(n)], [f"review pizza {i} :" for i in range(n)],
                             [" great pizza ."] * n, [" bad pizza ."] * n)
    assert out == ["error"] * n and len(server.requests) <= 4
    assert runner.stats()["label/judge_calls"] == len(server.requests)


def test_retry_after_header():
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None and retry_after_s("soon") is None
    from email.utils import formatdate

    assert 5 < retry_after_s(formatdate(time.time() + 10, usegmt=True)) <= 10


class SplitEnsemble:
    """Member scores that leave every pair uncertain (members disagree): all go to the judge."""

    aggregation = "mean"

    def __init__(self, n):
        self.size, self.n = 2, n

    def score(self, prompts, completions):
        first = np.array([1.0 if "great" in c else 0.0 for c in completions])
        return np.stack([first, 1.0 - first * 1.2])

    def reward(self, members):
        return members.mean(axis=0)


class Models:
    def __init__(self, ensemble):
        self._e = ensemble

    def ensemble(self, name="reward_model"):
        return self._e


@pytest.mark.parametrize("mode", ["ok", *sorted(FAULT_MODES)])
def test_label_stage_finishes_with_no_judge_label_from_a_fault(server, mode, tmp_path, stage_inputs, caplog):
    server.reset()
    prompts = [p for p in PAIRS[1] for _ in range(2)]
    completions = [c for pair in zip(PAIRS[2], PAIRS[3]) for c in pair]
    rollouts = pa.table({"prompt": prompts, "completion": completions, "prompt_id": ["g0", "g0", "g1", "g1"],
                         "rollout_id": [f"r{i}" for i in range(4)]})
    cfg = LabelConfig(judge={"backend": "openai", "model": mode, "budget": 20}, uncertain="human_queue")
    backends = Backends(models=Models(SplitEnsemble(4)), judge=_runner(server, mode, tmp_path))
    with caplog.at_level(logging.WARNING, logger="components.stages.label"):
        result = label.run(cfg, stage_inputs(iteration=1, rollouts=rollouts), backends=backends,
                           seed=Seeds(0, 1, "label"))
    rows, m = result.outputs["preferences"].table.to_pylist(), result.metrics
    assert m["label/routed"] == 2 and m["label/judge_pairs_offered"] == 2
    if mode == "ok":
        assert [r["label_source"] for r in rows] == ["judge", "judge"]
        assert all("great" in r["chosen"] for r in rows) and not caplog.records
    else:
        assert rows == [] and m["label/kept/judge"] == 0 and m["label/human_queued"] == 2
        assert {q["meta"]["reason"] for q in result.records["human_queue"]} == {FAULT_MODES[mode][0]}
        assert any("no verdict from any" in r.getMessage() for r in caplog.records)
    assert "judge_transcript" in result.outputs
