"""Peak memory of the label and evaluate stages with K = 3 reward models: staged loading (one model at a time)
vs one model's footprint.

    .venv/bin/python benchmarks/bench_stage_memory.py [--completions 256 --batch-size 32]

Builds three random-weight Qwen2-style sequence-classification reward models of ~69M parameters (hidden 768,
8 layers, fp32, `components.toy.chat_models.build_reward_model`) and, in a fresh subprocess per case (peak RSS
= `resource.getrusage(RUSAGE_SELF).ru_maxrss`, which only grows), scores the same chat completions through
`components.backends.hf.RewardEnsemble` as the label stage does: K = 1; K = 3 staged (the default: load RM 1,
score, free, RM 2, ...); K = 3 with `keep_loaded` (all held, the old behaviour). A case that only imports torch
gives the interpreter's baseline. Evaluate: the real `components.stages.evaluate.run` with three distinct
random-weight Qwen2 causal LMs of the same size as candidate, champion and reference, and the three RMs as the
(frozen, pretrained) ensemble, against one causal LM sampling and scoring the same held-out prompts alone.
Target: each stage staged ≤ 1.3× its one-model case.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SIZE = {"hidden": 768, "layers": 8, "heads": 12, "kv_heads": 4, "intermediate": 3072}
CHATS = [[{"role": "user", "content": "Write a short poem about the sea."}],
         [{"role": "system", "content": "You answer in one sentence."},
          {"role": "user", "content": "Explain why the sky is blue."}]]


def case(paths: list[str], n: int, batch_size: int, keep_loaded: bool) -> dict:
    """Score `n` completions with the reward models at `paths`; peak RSS of this process (MiB)."""
    import resource

    import torch

    from components.backends.hf import RewardEnsemble

    torch.set_num_threads(2)
    out = {"rss_mib_import": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if paths:
        prompts = [CHATS[k % 2] for k in range(n)]
        completions = [" ".join(["the sea is calm and blue"] * (1 + k % 4)) for k in range(n)]
        r = RewardEnsemble(paths, batch_size=batch_size, keep_loaded=keep_loaded).score(prompts, completions)
        out["rows"] = int(r.shape[0])
    out["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def eval_case(spec: dict, keep_loaded: bool) -> dict:
    """evaluate.run over policies `spec["lms"]` (candidate, champion, reference) and RMs `spec["rms"]`, or, with one
    LM and no RM, that LM sampling and scoring the held-out prompts alone; peak RSS of this process (MiB)."""
    import resource

    import pyarrow as pa
    import torch

    from components import chat
    from components.artifacts import ArtifactRef, ArtifactStore
    from components.backends.models import Models
    from components.config import EnsembleConfig, EvalConfig, GenerateConfig, ModelsConfig, PretrainedRM
    from components.contract import Backends, Inputs, Seeds
    from components.stages import evaluate

    torch.set_num_threads(2)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    prompts = [[*CHATS[k % 2][:-1], {"role": "user", "content": f"{CHATS[k % 2][-1]['content']} ({k})"}]
               for k in range(16)]
    pool = pa.table({"prompt_id": [f"p{k}" for k in range(16)], **chat.prompt_columns(prompts),
                     "source": ["s"] * 16, "split": ["eval"] * 15 + ["train"]})
    store = ArtifactStore(Path(spec["root"]) / "store")
    lms = spec["lms"] if spec["rms"] else spec["lms"][:1] * 3  # one model: the same checkpoint, loaded once
    refs = {"pool": store.put_table("prompts", pool), **{
        name: ArtifactRef(kind="policy", sha256=f"{k:064d}", uri=p, meta={"hub_id": p})
        for k, (name, p) in enumerate(zip(("candidate", "champion", "reference"), lms))}}
    ens = EnsembleConfig(members=0, pretrained=[PretrainedRM(path=p) for p in spec["rms"]]) if spec["rms"] \
        else EnsembleConfig(members=0, pretrained=[PretrainedRM(path=spec["rms_one"])])
    models = Models(Inputs(str(store.root), refs, 0, scratch=spec["root"]), ensemble=ens,
                    generate=GenerateConfig(max_new_tokens=32, batch_size=32),
                    models=ModelsConfig(keep_loaded=keep_loaded))
    cfg = EvalConfig(n_prompts=15, samples_per_prompt=2, heldout="none", regression_set="none",
                     bootstrap_resamples=200)
    evaluate.run(cfg, models.inputs, backends=Backends(models=models), seed=Seeds(0, 0, "evaluate"))
    return {"rss_mib_import": base, "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_case(paths, args, keep_loaded: bool = False, stage: str = "label") -> dict:
    cmd = [sys.executable, __file__, "--case", json.dumps(paths), "--stage", stage, "--completions",
           str(args.completions), "--batch-size", str(args.batch_size)] + (["--keep-loaded"] if keep_loaded else [])
    res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parents[1])
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--completions", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--case", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--keep-loaded", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--stage", default="label", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case is not None:
        sys.path.insert(0, str(Path(__file__).parents[1]))
        spec = json.loads(args.case)
        print(json.dumps(eval_case(spec, args.keep_loaded) if args.stage == "evaluate" else
                         case(spec, args.completions, args.batch_size, args.keep_loaded)))
        return
    sys.path.insert(0, str(Path(__file__).parents[1]))
    from components.toy.chat_models import build_chat_lm, build_reward_model

    with tempfile.TemporaryDirectory() as d:
        paths = [str(build_reward_model("qwen2", Path(d) / f"rm-{k}", seed=k, **SIZE)) for k in range(3)]
        lms = [str(build_chat_lm("qwen2", Path(d) / f"lm-{k}", seed=10 + k, **SIZE)) for k in range(3)]
        size = sum(f.stat().st_size for f in (Path(paths[0])).glob("*.safetensors")) / 2**20
        base = run_case([], args)
        label = {"K=1": run_case(paths[:1], args), "K=3 staged (default)": run_case(paths, args),
                 "K=3 keep_loaded": run_case(paths, args, keep_loaded=True)}
        spec = {"root": d, "lms": lms, "rms": [], "rms_one": paths[0]}
        full = {**spec, "rms": paths}
        evaluate = {"one LM + one RM": run_case(spec, args, stage="evaluate"),
                    "3 LMs + K=3 staged (default)": run_case(full, args, stage="evaluate"),
                    "3 LMs + K=3 keep_loaded": run_case(full, args, keep_loaded=True, stage="evaluate")}
    print(f"one model: {size:.0f} MiB of weights (fp32); label: {args.completions} chat completions, batch "
          f"{args.batch_size}; evaluate: 15 held-out chat prompts x 2 samples x 2 sides, <= 32 new tokens")
    _table("label", base, label)
    _table("evaluate", base, evaluate)


def _table(stage: str, base: dict, rows: dict) -> None:
    one, staged, *_ = rows.values()
    print(f"\n{stage + ' case':<34}{'peak RSS MiB':>14}{'over import':>14}{'vs one':>9}")
    for name, r in [("import torch (baseline)", base), *rows.items()]:
        print(f"{name:<34}{r['rss_mib']:>14.0f}{r['rss_mib'] - base['rss_mib']:>14.0f}"
              f"{r['rss_mib'] / one['rss_mib']:>9.2f}")
    print(f"target: {stage} staged <= 1.3x one model: "
          f"{'met' if staged['rss_mib'] <= 1.3 * one['rss_mib'] else 'NOT met'}")


if __name__ == "__main__":
    main()
