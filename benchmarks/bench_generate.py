"""Generation throughput: the `generate` stage vs raw `model.generate` on the same model, batches and sampling
settings (target ≥ 0.95×), and how tokens/s scales with batch size.

    .venv/bin/python benchmarks/bench_generate.py [--prompts 128 --samples 8 --max-new-tokens 32 --repeats 5]

Both sides decode the same sequences in the same batches with the same per-batch seeds, so they do the same
work; they alternate, and medians are reported. The stage's figure is end to end (the stage function
`components.stages.generate.run` called as the flow calls it: prompts read from the store, model load from disk,
tokenization, decoding, building the rollouts table); "decode only" is the stage's own timer
(`generate/seconds`). With `--backend vllm` on a GPU machine the stage side runs vLLM (the raw side stays HF
generate).
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


def alternate(args, plain, cfg, model, tok, prompts, policy, seed: int) -> dict[str, list[tuple[float, float]]]:
    """Raw generate and the stage, alternating `args.repeats` times: (completions/s, tokens/s) per run. `seed` is
    the generate stage's seed (its first shard's), so both sides draw the same per-batch seeds."""
    rows = {"raw": [], "stage": [], "stage_decode": []}
    texts = plain.store.read_table(prompts)["prompt"].to_pylist()
    for r in range(args.repeats):
        s = time.perf_counter()
        seqs, tokens = raw_generate(model, tok, texts, args.samples, batch_size=args.batch_size,
                                    max_new_tokens=args.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                    seed=seed)
        dt = time.perf_counter() - s
        rows["raw"].append((seqs / dt, tokens / dt))
        s = time.perf_counter()
        result = plain.call("generate", cfg, iteration=0, prompts=prompts, policy=policy)
        dt = time.perf_counter() - s
        table, stats = result.outputs["rollouts"].table, result.metrics
        n_tok = sum(table["num_tokens"].to_pylist())
        rows["stage"].append((table.num_rows / dt, n_tok / dt))
        rows["stage_decode"].append((table.num_rows / stats["generate/seconds"], stats["generate/tokens_per_s"]))
        print(f"repeat {r}: raw {rows['raw'][-1][1]:.0f} tok/s ({tokens} tokens), stage {rows['stage'][-1][1]:.0f}"
              f" tok/s ({n_tok} tokens), stage decode-only {stats['generate/tokens_per_s']:.0f} tok/s", flush=True)
    return rows


def batch_scaling(plain, cfg, prompts, policy) -> dict[int, float]:
    """The stage's decode tokens/s at batch sizes 16, 64, 256."""
    scaling = {}
    for bs in (16, 64, 256):
        s = time.perf_counter()
        tps = plain.call("generate", cfg.model_copy(update={"batch_size": bs}), iteration=0, prompts=prompts,
                         policy=policy).metrics["generate/tokens_per_s"]
        scaling[bs] = tps
        print(f"  batch {bs:4d}: {tps:8.0f} tokens/s (decode), {time.perf_counter() - s:.1f} s")
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
    root = common.scratch("generate")
    common.setup_env(root)
    common.warm_imports()
    import pyarrow.parquet as pq

    from components.backends import hf
    from components.config import GenerateConfig, LoopConfig
    from components.contract import Seeds

    boot = common.bootstrap()
    policy = args.policy or str(boot["policy"])
    cfg = GenerateConfig(samples_per_prompt=args.samples, max_new_tokens=args.max_new_tokens,
                         batch_size=args.batch_size, backend=args.backend)
    loop_seed = 1234
    plain = common.PlainStages(LoopConfig(generate=cfg, seed=loop_seed), root / "store")
    prompts = plain.put_table("prompts", pq.read_table(boot["prompts"]).slice(0, args.prompts))
    model, tok = hf.load_causal_lm(policy)
    seed = Seeds(loop_seed, 0, "generate").value  # what the stage samples with (shard 0 keeps the stage seed)

    rows = alternate(args, plain, cfg, model, tok, prompts, common.checkpoint_ref(policy), seed)
    med = {k: (statistics.median(c for c, _ in v), statistics.median(t for _, t in v)) for k, v in rows.items()}
    ratio = med["stage"][1] / med["raw"][1]
    ratio_decode = med["stage_decode"][1] / med["raw"][1]
    print(f"\n{args.prompts} prompts × {args.samples} samples, ≤{args.max_new_tokens} new tokens, batch "
          f"{args.batch_size}, backend {args.backend} (median of {args.repeats})")
    for k, (c, t) in med.items():
        print(f"  {k:13s} {c:8.1f} completions/s {t:9.0f} tokens/s")
    print(f"stage / raw tokens/s: end to end {ratio:.3f}, decode only {ratio_decode:.3f} (target ≥ 0.95)")

    scaling = batch_scaling(plain, cfg, prompts, common.checkpoint_ref(policy))
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
