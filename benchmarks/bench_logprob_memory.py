"""Peak memory of log-prob scoring at a 32k vocabulary: `hf.sequence_logprobs` (chunked gather) vs full logits.

    .venv/bin/python benchmarks/bench_logprob_memory.py [--vocab 32000 --batch 8 --length 512 --chunk 128]

A random-weight Qwen2-style causal LM (hidden 256, 2 layers, vocab `--vocab`, fp32; the toy Qwen2 tokenizer
renders the short prompt, the completion is `--length` random token ids in range, scored as sampled ids) scores
`--batch` sequences of `--length` tokens in one batch. Each variant runs in a fresh subprocess; its figure is the
growth of peak RSS (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, which only grows) over the RSS once the model is
built and one warm-up sequence has been scored, so it is the scoring's own peak. Variants: `chunked` = the library
function (decoder once, then fp32 logits `--chunk` positions at a time: B × chunk × V), `naive` = the full-logits
computation it replaced (B × L × V fp32 logits, then log_softmax over them; kept here only). Both give the same
log-probs (checked, max abs difference printed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile


def naive_logprobs(model, ids, mask, starts):
    """The replaced implementation: full-vocabulary fp32 logits for every position of the batch."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    pos = torch.arange(1, ids.shape[1])[None, :]
    keep = (pos >= torch.tensor(starts)[:, None]) & mask[:, 1:].bool()
    return (logp * keep).sum(-1).double().numpy()


def case(variant: str, tok_dir: str, vocab: int, batch: int, length: int, chunk: int) -> dict:
    import resource
    import time

    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from components.backends import hf

    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=512,
                                         max_position_embeddings=length + 64, tie_word_embeddings=True)).eval()
    prompt = "Score this completion:"
    head = hf.prompt_ids(tok, prompt)
    gen = torch.Generator().manual_seed(1)
    comp = [torch.randint(0, vocab, (length - len(head),), generator=gen).tolist() for _ in range(batch)]

    def run(rows):
        if variant == "chunked":
            return hf.sequence_logprobs(model, tok, [prompt] * len(rows), [""] * len(rows), completion_ids=rows,
                                        batch_size=batch, chunk=chunk)
        ids, mask = hf._right_padded([head + r for r in rows], tok.pad_token_id)
        return naive_logprobs(model, ids, mask, [len(head)] * len(rows))

    run([comp[0][:8]])  # warm-up: allocator and kernels, so the figure is the batch's own
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    logp = run(comp)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"variant": variant, "rss_mib_before": before, "rss_mib_peak": peak, "scoring_peak_mib": peak - before,
            "seconds": seconds, "logp": [float(x) for x in logp]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--tok", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:
        print(json.dumps(case(args.case, args.tok, args.vocab, args.batch, args.length, args.chunk)))
        return
    from components.toy.chat_models import build_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        build_tokenizer("qwen2", tmp)
        res = {}
        for variant in ("chunked", "naive"):
            cmd = [sys.executable, __file__, "--case", variant, "--tok", tmp, "--vocab", str(args.vocab),
                   "--batch", str(args.batch), "--length", str(args.length), "--chunk", str(args.chunk)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            res[variant] = json.loads(out.strip().splitlines()[-1])
    c, n = res["chunked"], res["naive"]
    diff = max(abs(a - b) for a, b in zip(c["logp"], n["logp"]))
    full = args.batch * args.length * args.vocab * 4 / 2**20
    print(f"vocab {args.vocab}, batch {args.batch}, length {args.length}, chunk {args.chunk} "
          f"(one fp32 B×L×V logits tensor = {full:.0f} MiB)")
    for v in (c, n):
        print(f"  {v['variant']:8s} scoring peak {v['scoring_peak_mib']:8.1f} MiB  (RSS {v['rss_mib_before']:.0f} -> "
              f"{v['rss_mib_peak']:.0f} MiB)  {v['seconds']:.2f} s")
    ratio = n["scoring_peak_mib"] / max(c["scoring_peak_mib"], 1e-9)
    print(f"  naive / chunked peak: {ratio:.1f}x   max |logp difference|: {diff:.2e}")


if __name__ == "__main__":
    main()
