"""Build a realistic-size Qwen2-architecture causal LM with random weights, for throughput runs on a GPU machine
(no hub is reachable there; tokens/s does not depend on weight values).

    .venv/bin/python benchmarks/make_model.py OUT_DIR [--hidden 1024 --layers 24 --intermediate 4096]
    .venv/bin/python benchmarks/bench_generate.py --policy OUT_DIR --backend vllm --prompts 256 --batch-size 256

It uses the embedded default's word-level tokenizer (vocabulary size = the tokenizer's), so every sampled id
decodes; the defaults give ~0.43B parameters in the transformer blocks. Saved as safetensors in bf16 with the
tokenizer, so `from_pretrained` and `vllm.LLM` both load it.
"""

from __future__ import annotations

import argparse

import common


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    args = ap.parse_args()
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(str(common.bootstrap()["policy"]))
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=args.hidden, num_hidden_layers=args.layers,
                      intermediate_size=args.intermediate, num_attention_heads=args.heads,
                      num_key_value_heads=args.kv_heads, max_position_embeddings=512,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, torch_dtype="bfloat16")
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"{sum(p.numel() for p in model.parameters()) / 1e9:.3f}B parameters -> {args.out}")


if __name__ == "__main__":
    main()
