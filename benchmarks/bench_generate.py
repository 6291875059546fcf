"""Generation throughput: the `generate` stage vs raw `model.generate` on the same model, batches and sampling
settings (target ≥ 0.95×), and how tokens/s scales with batch size.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 128 --samples 8 --max-new-tokens 32 --repeats 5]

Both sides decode the same sequences in the same batches with the same per-batch seeds, so they do the same
work; they alternate, and medians are reported. The stage's figure is end to end (model load from disk,
tokenization, decoding, building the rollouts table); "decode only" is the stage's own timer. With
`--backend vllm` on a GPU machine the stage side runs vLLM (the raw side stays HF generate).
"""

from __future__ import annotations

import argparse
import statistics
import time

import common


def raw_generate(model, tok, prompts: list[str], n: int, *, batch_size: int, max_new_tokens: int, temperature: float,
                 top_p: float, seed: int) -> tuple[int, int]:
    """(sequences, tokens up to and including eos) from plain `model.generate` calls."""
    import torch

    from components.backends.hf import _batch_seed

    jobs = [p for p in prompts for _ in range(n)]
    eos, tokens = tok.eos_token_id, 0
    for b, start in enumerate(range(0, len(jobs), batch_size)):
        enc = tok(jobs[start:start + batch_size], return_tensors="pt", padding=True).to(model.device)
        torch.manual_seed(_batch_seed(seed, b))
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=temperature, top_p=top_p, top_k=0,
                                 max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        for row in out[:, enc["input_ids"].shape[1]:].tolist():
            tokens += row.index(eos) + 1 if eos in row else len(row)
    return len(jobs), tokens


def alternate(args, cfg, model, tok, prompts, policy: str, seed: int) -> dict[str, list[tuple[float, float]]]:
    """Raw generate and the stage, alternating `args.repeats` times: (completions/s, tokens/s) per run."""
    from components.stages import generate

    texts = prompts["prompt"].to_pylist()
    rows = {"raw": [], "stage": [], "stage_decode": []}
    for r in range(args.repeats):
        s = time.perf_counter()
        seqs, tokens = raw_generate(model, tok, texts, args.samples, batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                    seed=seed)
        dt = time.perf_counter() - s
        rows["raw"].append((seqs / dt, tokens / dt))
        s = time.perf_counter()
        table, stats = generate.run(cfg, prompts, policy, policy_sha="bench", seed=seed)
        dt = time.perf_counter() - s
        n_tok = sum(table["num_tokens"].to_pylist())
        rows["stage"].append((table.num_rows / dt, n_tok / dt))
        rows["stage_decode"].append((table.num_rows / stats["seconds"], stats["tokens_per_s"]))
        print(f"repeat {r}: raw {rows['raw'][-1][1]:.0f} tok/s ({tokens} tokens), stage {rows['stage'][-1][1]:.0f}"
              f" tok/s ({n_tok} tokens), stage decode-only {stats['tokens_per_s']:.0f} tok/s", flush=True)
    return rows


def batch_scaling(cfg, prompts, policy: str, seed: int) -> dict[int, float]:
    """The stage's decode tokens/s at batch sizes 16, 64, 256."""
    from components.stages import generate

    scaling = {}
    for bs in (16, 64, 256):
        s = time.perf_counter()
        _, stats = generate.run(cfg.model_copy(update={"batch_size": bs}), prompts, policy, policy_sha="b", seed=seed)
        scaling[bs] = stats["tokens_per_s"]
        print(f"  batch {bs:4d}: {stats['tokens_per_s']:8.0f} tokens/s (decode), {time.perf_counter() - s:.1f} s")
    return scaling


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=128)  # the embedded default's generate stage: 128 × 8
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--backend", choices=["hf", "vllm"], default="hf")
    ap.add_argument("--policy", default=None, help="checkpoint directory (default: the embedded default's policy)")
    args = ap.parse_args()
    common.setup_env(common.scratch("generate"))
    common.warm_imports()
    import pyarrow.parquet as pq

    from components.backends import hf
    from components.config import GenerateConfig

    boot = common.bootstrap()
    policy = args.policy or str(boot["policy"])
    prompts = pq.read_table(boot["prompts"]).slice(0, args.prompts)
    cfg = GenerateConfig(samples_per_prompt=args.samples, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, backend=args.backend)
    model, tok = hf.load_causal_lm(policy)
    seed = 1234

    rows = alternate(args, cfg, model, tok, prompts, policy, seed)
    med = {k: (statistics.median(c for c, _ in v), statistics.median(t for _, t in v)) for k, v in rows.items()}
    ratio = med["stage"][1] / med["raw"][1]
    ratio_decode = med["stage_decode"][1] / med["raw"][1]
    print(f"\n{args.prompts} prompts × {args.samples} samples, ≤{args.max_new_tokens} new tokens, batch "
          f"{args.batch_size}, backend {args.backend} (median of {args.repeats})")
    for k, (c, t) in med.items():
        print(f"  {k:13s} {c:8.1f} completions/s {t:9.0f} tokens/s")
    print(f"stage / raw tokens/s: end to end {ratio:.3f}, decode only {ratio_decode:.3f} (target ≥ 0.95)")

    scaling = batch_scaling(cfg, prompts, policy, seed)
    common.emit("generate", {
        "prompts": args.prompts, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size, "backend": args.backend, "repeats": args.repeats,
        "raw": {"completions_per_s": med["raw"][0], "tokens_per_s": med["raw"][1]},
        "stage": {"completions_per_s": med["stage"][0], "tokens_per_s": med["stage"][1]},
        "stage_decode_only": {"completions_per_s": med["stage_decode"][0], "tokens_per_s": med["stage_decode"][1]},
        "ratio_stage_over_raw": ratio, "ratio_decode_only_over_raw": ratio_decode,
        "tokens_per_s_by_batch_size": scaling})


if __name__ == "__main__":
    main()
