"""Labeling on hand-built data: pair construction, routing, the judge runner (toy judge), the label stage's
routing path, and the human review queue round trip."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from components import preferences as P
from components import routing
from components.backends.judge_toy import ToyJudge
from components.config import LabelConfig
from components.contract import Backends, Seeds
from components.judge import Answer, JudgeRunner, TransportError, parse_verdict
from components.stages import label
from components.toy.gold import GoldOracle, gold_reward
from components.uncertainty import aggregate

TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
PROMPT = "review pizza crust :"
GOOD = " the crust was great ."  # gold prefers it clearly over the two below
BAD = " the battery was bad bad bad"
MID = " the crust was fine ."


def test_all_pairs_and_margin_threshold():
    groups = ["a"] * 3 + ["b"] * 2
    reward = np.array([0.0, 1.0, 0.5, 2.0, 2.0])
    c, r = P.all_pairs(groups, reward, 0.0)
    assert sorted(zip(c.tolist(), r.tolist())) == [(1, 0), (1, 2), (2, 0)]  # the tie in b carries no preference
    c, r = P.all_pairs(groups, reward, 0.6)
    assert sorted(zip(c.tolist(), r.tolist())) == [(1, 0)]


def test_rejection_sampling_pairs_follow_beta():
    groups = ["g"] * 8
    reward = np.arange(8.0)
    rng = np.random.default_rng(0)
    sharp = [P.rejection_sampling_pairs(groups, reward, 0.01, 1, rng) for _ in range(50)]
    assert all(c.tolist() == [7] and r.tolist() == [6] for c, r in sharp)  # β → 0: best vs second best
    flat = [P.rejection_sampling_pairs(groups, reward, 1e6, 1, rng) for _ in range(400)]
    assert all(reward[c[0]] > reward[r[0]] for c, r in flat)
    assert np.mean([reward[c[0]] for c, _ in flat]) < 6.0  # β → ∞: close to a uniform pair (E[max] = 4.67)
    c, r = P.rejection_sampling_pairs(groups * 1, reward, 1.0, 3, rng)
    assert len(c) == 3 and len(set(c.tolist()) | set(r.tolist())) == 6


def test_routing_uncertain_order_and_resolve():
    margin = np.array([2.0, 0.1, 0.5, 3.0])
    std = np.array([0.5, 1.0, 1.0, 0.1])
    agree = np.array([1.0, 0.6, 0.6, 0.5])
    unsure = routing.uncertain(margin, std, agree, 1.0, 0.6)
    assert unsure.tolist() == [False, True, True, True]  # pair 3 is confident by margin but members split
    order = routing.judge_order(unsure, margin, std, "uncertainty", np.random.default_rng(0), spend="routed")
    assert order.tolist() == [1, 2, 3]  # least certain (lowest margin/std) first
    # spend = budget (the default): then the certain pairs, least certain first, so the budget is always spent
    assert routing.judge_order(unsure, margin, std, "uncertainty", np.random.default_rng(0)).tolist() == [1, 2, 3, 0]
    certain = np.zeros(4, bool)  # nothing under the threshold: the budget still buys the lowest-z pairs
    assert routing.judge_order(certain, margin, std, "uncertainty", np.random.default_rng(0)).tolist() == [1, 2, 0, 3]
    assert sorted(routing.judge_order(unsure, margin, std, "random", np.random.default_rng(0))) == [0, 1, 2, 3]
    routed = routing.resolve(unsure, order[:2], ["b", "inconsistent"], to_human_queue=True)
    assert routed.source.tolist() == ["rm_ensemble", "judge", "", ""]
    assert routed.flip.tolist() == [False, True, False, False]
    assert routed.to_human.tolist() == [False, False, True, True]
    assert routed.reason.tolist() == ["", "", "inconsistent", "not_judged"]
    m = routing.routing_metrics(unsure, order[:2], ["b", "inconsistent"], routed)
    assert m["label/routed"] == 3 and m["label/judge_settled"] == 1 and m["label/rm_judge_agreement"] == 0.0
    assert m["label/human_queued"] == 2 and m["label/dropped_uncertain"] == 0


def test_parse_verdict_reads_only_the_final_marker():
    assert parse_verdict("[[A]]") == "A" and parse_verdict("B looks better. [[B]]") == "B"
    assert parse_verdict("Neither wins. [[Tie]]") == "tie" and parse_verdict("[[ b ]]") == "B"
    assert parse_verdict("At first [[A]], but on reflection [[B]]") == "B"  # the last marker is the verdict
    # no marker is no verdict, however clear the prose: never read a letter out of a sentence
    for text in ["A", " A", "Response B.", "A is worse than B.", "Comparing A and B, B is better.", "", None,
                 "[A]", "[[C]]", "**B**"]:
        assert parse_verdict(text) is None, text
    # reasoning models: the thinking is not the answer
    assert parse_verdict("<think>maybe [[A]]? no</think>\nFinal: [[B]]") == "B"
    assert parse_verdict("<think>it is [[A]] surely") is None  # cut off while thinking
    assert parse_verdict("opened in the prompt [[A]]</think> so [[tie]]") == "tie"


def test_resolve_never_labels_ties_or_non_verdicts():
    unsure = np.array([True, True, True, True, True, False])
    outcomes = ["a", "tie", "no_verdict", "error", "inconsistent", "tie"]
    routed = routing.resolve(unsure, np.arange(6), outcomes, to_human_queue=True)
    assert routed.source.tolist() == ["judge", "", "", "", "", "rm_ensemble"]  # a tie on a sure pair: the RMs'
    assert routed.reason.tolist() == ["", "tie", "no_verdict", "error", "inconsistent", ""]
    assert routed.to_human.tolist() == [False, True, True, True, True, False]
    m = routing.routing_metrics(unsure, np.arange(6), outcomes, routed)
    assert (m["label/judge_settled"], m["label/judge_pairs_tie"], m["label/judge_pairs_no_verdict"],
            m["label/judge_pairs_error"], m["label/judge_inconsistent"]) == (1, 2, 1, 1, 1)


def _toy_runner(tmp_path, noise=0.0, bias=0.0, budget=100, **kw):
    judge = ToyJudge(gold_reward, noise=noise, position_bias=bias, seed=0)
    return JudgeRunner(judge, budget=budget, cache_path=tmp_path / "cache.jsonl", **kw)


def test_judge_both_orders_budget_and_cache(tmp_path):
    runner = _toy_runner(tmp_path, budget=5, concurrency=2)
    ids, prompts = ["p0", "p1", "p2", "p3"], [PROMPT] * 4
    first, second = [GOOD, BAD, BAD, GOOD], [BAD, MID, GOOD, MID]
    out = runner.judge_pairs(ids, prompts, first, second)
    # 2 calls per pair; p2 asks p0's questions again (free); p3 does not fit in the 5 left after 4 paid
    assert out == ["a", "b", "b", "over_budget"]
    assert runner.calls == 4 and len(runner.transcript) == 6
    assert {(t["pair_id"], t["order"]) for t in runner.transcript if not t["cached"]} == {
        ("p0", "ab"), ("p0", "ba"), ("p1", "ab"), ("p1", "ba")}
    assert all(t["attempts"] == 1 and t["latency_s"] >= 0 for t in runner.transcript if not t["cached"])
    again = _toy_runner(tmp_path, budget=2)  # re-run with the persisted cache: only p3 is paid
    assert again.judge_pairs(ids, prompts, first, second) == ["a", "b", "b", "a"]
    assert again.calls == 2 and again.stats()["label/judge_cache_hits"] == 6


def test_position_bias_and_noise_make_verdicts_inconsistent(tmp_path):
    runner = _toy_runner(tmp_path, bias=1.0)
    assert runner.judge_pairs(["p"], [PROMPT], [BAD], [GOOD]) == ["inconsistent"]  # "A" in both orders
    noisy = _toy_runner(tmp_path / "n", noise=0.3, budget=10_000)
    n = 400
    out = noisy.judge_pairs([str(i) for i in range(n)], [f"review pizza crust {i} :" for i in range(n)],
                            [GOOD] * n, [BAD] * n)
    share = {k: out.count(k) / n for k in ("a", "b", "inconsistent")}
    assert abs(share["inconsistent"] - 2 * 0.3 * 0.7) < 0.08 and abs(share["b"] - 0.09) < 0.05


class Flaky:
    """A judge whose first `fails` calls raise a transport error (a fake inside a unit test of the runner)."""

    name = "flaky"

    def __init__(self, fails):
        self.fails, self.calls = fails, 0

    def ask(self, prompt, first, second):
        self.calls += 1
        if self.calls <= self.fails:
            raise TransportError("connection reset")
        return Answer("A" if first == GOOD else "B", "ok")


def test_runner_retries_with_backoff_then_gives_up():
    runner = JudgeRunner(Flaky(2), budget=10, max_retries=2, backoff_s=0.0)
    assert runner.judge_pairs(["p"], [PROMPT], [GOOD], [BAD]) == ["a"]
    assert max(t["attempts"] for t in runner.transcript) == 3
    dead = JudgeRunner(Flaky(100), budget=10, max_retries=1, backoff_s=0.0)
    assert dead.judge_pairs(["p"], [PROMPT], [GOOD], [BAD]) == ["error"]
    assert dead.stats()["label/judge_errors"] == 2 and dead.cache.entries == {}  # failures are never cached
    assert dead.stats()["label/judge_errors/transport"] == 2 and "no verdict" in dead.health_warning()


def test_runner_gives_up_on_a_judge_that_is_down_and_counts_ties():
    down = JudgeRunner(Flaky(10**6), budget=100, max_retries=0, backoff_s=0.0, give_up_after=3)
    out = down.judge_pairs([str(i) for i in range(10)], [f"{PROMPT} {i}" for i in range(10)], [GOOD] * 10,
                           [BAD] * 10)
    assert out == ["error"] * 10 and down.judge.calls <= 4  # ~3 failures, then nothing more is sent
    s = down.stats()
    assert s["label/judge_calls"] == down.judge.calls and s["label/judge_errors/unavailable"] >= 16
    toy = JudgeRunner(ToyJudge(gold_reward, noise=0.0, position_bias=0.0), budget=10, metric_prefix="x/j")
    assert toy.judge_pairs(["p"], [PROMPT], [GOOD], [GOOD + " "]) in (["a"], ["b"], ["tie"])
    assert toy.judge_pairs(["q"], [PROMPT], [MID], [MID]) == ["tie"]  # the same response twice: equal gold
    assert toy.stats()["x/j_ties"] >= 1 and toy.stats()["x/j_calls"] == 3 and toy.health_warning() is None


def test_token_budget_stops_new_pairs():
    class Costly(Flaky):
        def ask(self, prompt, first, second):
            return Answer("A" if first == GOOD else "B", "[[x]]", tokens=100)

    runner = JudgeRunner(Costly(0), budget=100, budget_tokens=250)
    out = runner.judge_pairs([str(i) for i in range(4)], [f"{PROMPT} {i}" for i in range(4)], [GOOD] * 4,
                             [BAD] * 4)
    assert out == ["a", "a", "over_budget", "over_budget"]  # pair 1 starts at <= 200 spent, pair 2 sees >= 300
    assert runner.stats()["label/judge_tokens"] == 400 and runner.calls == 4


class FakeEnsemble:
    """Fixed member scores [K, N] for exactly the rollouts of a test (a fake inside a unit test of the label stage):
    the `components.contract.Ensemble` protocol, aggregated by the mean."""

    aggregation = "mean"

    def __init__(self, members, prompts, completions):
        self.members, self.expected = np.asarray(members, dtype=np.float64), (list(prompts), list(completions))
        self.size = len(self.members)

    def score(self, prompts, completions):
        assert (list(prompts), list(completions)) == self.expected  # label scores every rollout, in order
        return self.members

    def reward(self, member_rewards):
        return aggregate(member_rewards, self.aggregation, 1.0)


class FakeModels:
    """`backends.models` with only the reward-model ensemble the label stage asks for."""

    def __init__(self, ensemble):
        self._ensemble = ensemble

    def ensemble(self, name="reward_model"):
        assert name == "reward_model"
        return self._ensemble


def _rollouts(prompts, completions, groups) -> pa.Table:
    return pa.table({"prompt": prompts, "completion": completions, "prompt_id": groups,
                     "rollout_id": [f"r{i}" for i in range(len(prompts))]})


def _label(cfg, stage_inputs, prompts, completions, groups, members, judge=None, iteration=3):
    """label.run on hand-built rollouts and member scores; (preferences, metrics, human-queue records)."""
    inputs = stage_inputs(iteration=iteration, rollouts=_rollouts(prompts, completions, groups))
    backends = Backends(models=FakeModels(FakeEnsemble(members, prompts, completions)), judge=judge)
    out = label.run(cfg, inputs, backends=backends, seed=Seeds(0, iteration, "label"))
    return out.outputs["preferences"].table, out.metrics, out.records.get("human_queue", [])


def test_label_routes_uncertain_pairs_to_judge_then_human_queue(tmp_path, stage_inputs):
    prompts = [PROMPT] * 4 + ["review pizza sauce :"] * 2
    completions = [GOOD, BAD, MID, " the crust was bad .", " the sauce was great .", BAD]
    groups = ["g1"] * 4 + ["g2"] * 2
    # member rewards [K=3, N=6]: group 1 confidently prefers GOOD over BAD; group 2 is split (uncertain) and its
    # mean prefers BAD (wrong by gold)
    members = np.array([[2.0, -2.0, 0.0, -1.0, -0.5, 0.5],
                        [2.1, -2.1, 0.0, -1.0, 1.0, -0.9],
                        [1.9, -1.9, 0.0, -1.0, -0.8, 0.6]])
    cfg = LabelConfig(judge={"backend": "toy", "noise": 0.0, "position_bias": 0.0, "budget": 10, "spend": "routed"},
                      uncertain="human_queue")
    runner = _toy_runner(tmp_path)
    table, metrics, queue = _label(cfg, stage_inputs, prompts, completions, groups, members, runner)
    rows = table.to_pylist()
    assert [r["label_source"] for r in rows] == ["rm_ensemble", "judge"]
    assert rows[1]["chosen"] == " the sauce was great ." and rows[1]["margin"] < 0  # the judge flipped the RMs
    assert metrics["label/rm_judge_agreement"] == 0.0 and metrics["label/judge_settled"] == 1 and queue == []
    # without budget the uncertain pair goes to the human queue instead
    broke = _toy_runner(tmp_path / "b", budget=0)
    table, metrics, queue = _label(cfg, stage_inputs, prompts, completions, groups, members, broke)
    assert table.num_rows == 1 and len(queue) == 1 and queue[0]["meta"]["reason"] == "over_budget"
    assert queue[0]["data"]["response_a"] == BAD and queue[0]["choice"] is None
    # spend = budget: the budget left after the uncertain pair buys a verdict on the certain one too (it agrees)
    spend = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"spend": "budget"})})
    table, metrics, queue = _label(spend, stage_inputs, prompts, completions, groups, members,
                                   _toy_runner(tmp_path / "c"))
    rows = table.to_pylist()
    assert [r["label_source"] for r in rows] == ["judge", "judge"] and rows[0]["chosen"] == GOOD
    assert metrics["label/judge_settled"] == 2 and metrics["label/judge_calls"] == 4
    assert metrics["label/oracle_calls"] == 4  # the toy judge is the gold oracle with noise: every call counts


def test_min_margin_over_std_moves_pairs_from_the_ensemble_to_routing(stage_inputs):
    """Five prompts with two completions each: one best-vs-worst pair per prompt. Member k scores the first
    completion m_k and the second 0, so with K=2 the pair's aggregate (mean) margin is (m_1 + m_2)/2 and its
    ensemble std is |m_1 - m_2|/2. Margins over std z = inf, 10, 3, 2, 0.5: a pair is kept by the ensemble iff
    z > min_margin_over_std, else routed (no judge: dropped)."""
    member_margins = [(2.0, 2.0), (11.0, 9.0), (4.0, 2.0), (3.0, 1.0), (3.0, -1.0)]  # z = inf, 10, 3, 2, 0.5
    members = np.array([[m[k] if j == 0 else 0.0 for m in member_margins for j in range(2)] for k in range(2)])
    groups = [f"g{i}" for i in range(5) for _ in range(2)]
    prompts = [PROMPT] * 10
    completions = [f" pair {i} side {j} ." for i in range(5) for j in range(2)]
    expected = {0.0: (5, 0), 1.0: (4, 1), 5.0: (2, 3)}  # (kept by the ensemble, routed), by hand from z above
    for k, (kept, routed) in expected.items():
        table, m, queue = _label(LabelConfig(min_margin_over_std=k), stage_inputs, prompts, completions, groups,
                                 members)
        assert m["label/pairs_built"] == 5
        assert (m["label/kept/rm_ensemble"], m["label/routed"]) == (kept, routed), (k, m)
        assert m["label/dropped_uncertain"] == routed and m["label/pairs_kept"] == kept == table.num_rows
        assert table["label_source"].to_pylist() == ["rm_ensemble"] * kept and queue == []
        assert all(c.endswith("side 0 .") for c in table["chosen"].to_pylist())  # oriented by the aggregate


def test_human_queue_import_round_trip(tmp_path, stage_inputs):
    from components.human_queue import import_labels, pending_imports, queue_records, write_queue
    from components.workspace import Workspace

    ws = Workspace.at(tmp_path / "ws")
    recs = queue_records([PROMPT, PROMPT], [BAD, MID], [GOOD, BAD], [0.1, 0.2], [1.0, 1.0], [0.6, 0.6],
                         ["inconsistent", "over_budget"], iteration=2)
    write_queue(ws, 2, recs)
    bad = tmp_path / "bad.jsonl"
    for lines, msg in [([{"id": "nope", "choice": "a"}], "bad.jsonl:1: unknown pair id"),
                       ([{"id": recs[0]["id"], "choice": "b"}, {"id": recs[0]["id"], "choice": "a"}],
                        "bad.jsonl:2: duplicate pair id"),
                       ([{"id": recs[0]["id"], "choice": "left"}], "choice must be"),
                       (["{not json"], "bad.jsonl:1: not valid JSON")]:
        bad.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
        with pytest.raises(ValueError, match=msg):
            import_labels(ws, bad)
    reviewed = tmp_path / "done.jsonl"
    reviewed.write_text(json.dumps({**recs[0], "choice": "b"}) + "\n" + json.dumps({**recs[1], "choice": None}) + "\n")
    ref, counts = import_labels(ws, reviewed)
    assert counts == {"labels": 1, "skipped": 1, "conflicting": 0}
    with pytest.raises(ValueError, match="already imported"):
        import_labels(ws, reviewed)
    assert [r.sha256 for r in pending_imports(ws, set())] == [ref.sha256]
    assert pending_imports(ws, {ref.sha256}) == []
    from components.artifacts import ArtifactStore

    human = ArtifactStore(ws.store).read_table(ref)
    row = human.to_pylist()[0]
    assert (row["chosen"], row["rejected"], row["label_source"]) == (GOOD, BAD, "human")
    # the next iteration's label stage appends them (gold seed path: no reward model yet)
    rollouts = pa.table({"prompt": [PROMPT] * 3, "completion": [GOOD, BAD, MID], "prompt_id": ["g"] * 3,
                         "rollout_id": ["r0", "r1", "r2"]})
    out = label.run(LabelConfig(seed_gold_pairs=3), stage_inputs(iteration=5, rollouts=rollouts, human=human),
                    backends=Backends(gold=GoldOracle()), seed=Seeds(0, 5, "label"))
    assert out.metrics["label/kept/human"] == 1 and out.metrics["label/kept/gold"] == 3
    assert out.outputs["preferences"].table.to_pylist()[-1]["iteration"] == 5


def test_labels_import_cli_reports_file_and_line(tmp_path):
    from typer.testing import CliRunner

    from components.human_queue import queue_records, write_queue
    from components.workspace import Workspace
    from flows.cli import app

    ws = Workspace.at(tmp_path / "ws")
    rec = queue_records([PROMPT], [BAD], [GOOD], [0.1], [1.0], [0.6], ["not_judged"], iteration=0)[0]
    write_queue(ws, 0, [rec])
    f = tmp_path / "in.jsonl"
    f.write_text(json.dumps({"id": rec["id"], "choice": "b"}) + "\n" + json.dumps({"id": "x", "choice": "a"}) + "\n")
    res = CliRunner().invoke(app, ["labels", "import", str(f), "--workspace", str(ws.root)])
    assert res.exit_code == 2 and "in.jsonl:2" in res.output and "unknown pair id" in res.output
    f.write_text(json.dumps({"id": rec["id"], "choice": "b"}) + "\n")
    res = CliRunner().invoke(app, ["labels", "import", str(f), "--workspace", str(ws.root)])
    assert res.exit_code == 0 and "imported 1 human label" in res.output


def test_label_studio_export_and_import_formats(tmp_path):
    """Without a server: tasks for the Pairwise template out, Label Studio's documented JSON export back in
    (tests/service/test_label_studio.py does the same against a real Label Studio)."""
    from typer.testing import CliRunner

    from components.artifacts import ArtifactStore
    from components.human_queue import import_labels, pending_imports, queue_records, write_queue
    from components.label_studio import LABEL_CONFIG, pairwise_result
    from components.workspace import Workspace
    from flows.cli import app

    ws = Workspace.at(tmp_path / "ws")
    recs = queue_records([PROMPT] * 3, [BAD, MID, GOOD], [GOOD, BAD, MID], [0.1] * 3, [0.9, 0.3, 0.5], [0.6] * 3,
                         ["inconsistent"] * 3, iteration=1)
    write_queue(ws, 1, recs)
    res = CliRunner().invoke(app, ["labels", "export", "--out", str(tmp_path / "ls"), "--workspace", str(ws.root)])
    assert res.exit_code == 0, res.output
    tasks = json.loads((tmp_path / "ls" / "tasks.json").read_text())
    assert (tmp_path / "ls" / "labeling-config.xml").read_text() == LABEL_CONFIG
    assert '<Pairwise name="pw" toName="text1,text2"/>' in LABEL_CONFIG
    assert [(t["data"]["text1"], t["data"]["text2"], t["predictions"][0]["score"]) for t in tasks] == [
        (BAD, GOOD, 0.9), (MID, BAD, 0.3), (GOOD, MID, 0.5)]
    assert tasks[0]["predictions"][0]["result"][0]["value"] == {"selected": "left"}

    def exported(*picks):  # what Label Studio's JSON export holds: its ids, our data, annotations per task
        return [{"id": 10 + i, **t, "annotations": [{"id": 100 + i, "was_cancelled": p == "cancel",
                                                       "result": [] if p in (None, "cancel") else pairwise_result(p)}
                                                      for p in (ps if isinstance(ps, tuple) else (ps,))]}
                for i, (t, ps) in enumerate(zip(tasks, picks))]

    f = tmp_path / "export.json"
    for doc, msg in [(exported("right", "sideways"), r"export.json:1: task #2 \(Label Studio id 11\).*'left' or"),
                     ([*exported("right"), exported("right")[0]], "task #2.*duplicate pair id"),
                     ([{**exported("left")[0], "data": {**tasks[0]["data"], "pair_id": "zz"}}], "unknown pair id"),
                     ([{**exported("left")[0], "data": {**tasks[0]["data"], "text1": "edited"}}], "neither response"),
                     ([{"id": 1, "data": {"text1": BAD}}], "no data.pair_id")]:
        f.write_text(json.dumps(doc))
        with pytest.raises(ValueError, match=msg):
            import_labels(ws, f)
    assert not (ws.root / "human_labels").exists()  # nothing partially imported
    f.write_text(json.dumps(exported("right", ("left", "right"), "cancel"), indent=2))
    res = CliRunner().invoke(app, ["labels", "import", str(f), "--workspace", str(ws.root)])
    assert res.exit_code == 0 and "imported 1 human label" in res.output, res.output
    assert "skipped 1 unreviewed, 1 where annotators disagreed" in res.output
    (ref,) = pending_imports(ws, set())
    (row,) = ArtifactStore(ws.store).read_table(ref).to_pylist()
    assert (row["chosen"], row["rejected"], row["label_source"], row["iteration"]) == (GOOD, BAD, "human", 1)
    res = CliRunner().invoke(app, ["labels", "export", "--out", str(tmp_path / "ls2"), "--workspace", str(ws.root)])
    assert len(json.loads((tmp_path / "ls2" / "tasks.json").read_text())) == 2  # what is still unlabelled


def test_rubric_is_configuration(tmp_path):
    from components.backends.judge_base import Rubric
    from components.config import ConfigError, load_config
    from components.judge import make_runner

    with pytest.raises(ConfigError, match=r"label\.judge\.rubric_version: moved to label\.judge\.rubric"):
        load_config(TINY, ["label.judge.rubric_version=v2"])
    with pytest.raises(ConfigError, match=r"label\.judge\.rubric: .*not found: nope\.md"):
        load_config(TINY, ["label.judge.rubric=nope.md"])
    real = Rubric.load("configs/real/judge-rubric.md", "Be fair.")
    text = real.render("<b>hi</b>", "first one", "second one")
    assert real.is_jinja and "<b>hi</b>" in text and text.index("first one") < text.index("second one")
    assert real.sha256 != Rubric.load("configs/real/judge-rubric.md").sha256  # the system prompt is in the key
    bad = tmp_path / "r.md"
    bad.write_text("Compare {response_a} with something.")
    with pytest.raises(ValueError, match="never shows prompt, response_b"):
        Rubric.load(str(bad))
    sys_file = tmp_path / "sys.txt"
    sys_file.write_text("You are a strict judge.")
    cfg = load_config(TINY, [f"label.judge.system_prompt={sys_file}"]).label.judge
    runner = make_runner(cfg, gold=gold_reward, cache_dir=tmp_path)
    assert runner.rubric_sha256 == Rubric.load(cfg.rubric, "You are a strict judge.").sha256
