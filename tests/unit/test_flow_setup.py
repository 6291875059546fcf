"""Flow set-up that is not a stage: the loop's starting policy, and the Prefect settings of an in-process run."""

import shutil
from pathlib import Path


def test_a_local_initial_policy_is_copied_and_hashed_once_until_its_files_change(tmp_path, monkeypatch):
    from components.artifacts import ArtifactStore
    from components.lineage import POLICY, Tracker
    from flows import iteration as it

    src = tmp_path / "policy"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "model.safetensors").write_bytes(b"w" * 1000)
    store = ArtifactStore(tmp_path / "store")
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "art").as_uri(), "init")
    run = tracker.client.create_run(tracker.experiment_id).info.run_id
    copies, hashed = [], []
    real_copy, real_sha = shutil.copytree, it.ArtifactStore.put_dir
    monkeypatch.setattr(shutil, "copytree", lambda *a, **k: copies.append(a[0]) or real_copy(*a, **k))
    monkeypatch.setattr(it.ArtifactStore, "put_dir", lambda self, *a, **k: hashed.append(a) or real_sha(self, *a, **k))

    ref = it._initial_policy(store, tracker, str(src), run, earlier=[])
    path = store.path(ref)
    assert copies == [str(src)] and len(hashed) == 1
    assert (Path(path) / "model.safetensors").read_bytes() == b"w" * 1000 and Path(path).is_relative_to(store.root)
    assert str(tracker.alias(POLICY, "champion").version) == "1"

    ledgers = [{"iteration": 0, "start": {"initial": ref.model_dump()}}]
    again = it._initial_policy(store, tracker, str(src), run, earlier=ledgers)
    assert again == ref and store.path(again) == path and len(copies) == 1 and len(hashed) == 1  # reused as it was

    (src / "model.safetensors").write_bytes(b"v" * 1000)  # new weights at the same path are noticed
    changed = it._initial_policy(store, tracker, str(src), run, earlier=ledgers)
    assert len(copies) == 2 and changed.sha256 != ref.sha256
    assert str(tracker.alias(POLICY, "champion").version) == "1"  # a new initial version never moves the champion


def test_in_process_runs_turn_heartbeats_off_unless_the_user_set_them(monkeypatch):
    from prefect.settings import get_current_settings

    from flows.iteration import in_process_run

    monkeypatch.delenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", raising=False)
    default = get_current_settings().flows.heartbeat_frequency
    assert default is not None  # Prefect's default: on
    with in_process_run():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert get_current_settings().flows.heartbeat_frequency == default
    monkeypatch.setenv("PREFECT_FLOWS_HEARTBEAT_FREQUENCY", "60")  # the user's choice is kept
    with in_process_run():
        assert get_current_settings().flows.heartbeat_frequency == default


def test_the_evaluate_stage_gets_its_own_heldout_judge_not_the_labeling_one():
    """`evaluate.heldout` decides the evaluate stage's judge backend (part of its cache key); `label.judge` stays
    label's. The held-out judge's seed is fixed across iterations and its statistics are named for evaluate."""
    from components.config import LoopConfig, load_config
    from flows.iteration import evaluate_setup

    tiny = load_config("configs/tiny.yaml")
    setup = evaluate_setup(tiny)
    assert setup.judge == tiny.evaluate.judge and setup.judge.budget == 4096 and setup.gold == "toy"
    assert (setup.judge_seed, setup.judge_metrics) == ("fixed", "evaluate/heldout_judge")
    for heldout in ("gold", "none"):
        setup = evaluate_setup(LoopConfig(evaluate={"heldout": heldout}))
        assert setup.judge is None and setup.judge_seed == "iteration"
    toy = evaluate_setup(LoopConfig(evaluate={"heldout": "noisy_gold", "n_prompts": 4, "samples_per_prompt": 2}))
    assert toy.judge.backend == "toy" and toy.judge.budget == 16
