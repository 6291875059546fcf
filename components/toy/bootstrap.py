"""python -m components.toy.bootstrap {prompts,tokenizer,sft} [--params params.yaml] [--out-root .]

Bootstraps the embedded synthetic task (DESIGN.md section 4); `dvc.yaml` runs the three stages in order:

- prompts:   the prompt pool, `data/prompts/pool.parquet` (prompt_id, prompt, source, split).
- tokenizer: the word-level tokenizer, `data/bootstrap/tokenizer/`.
- sft:       a tiny GPT-2 pre-trained from scratch on the mediocre review corpus, saved with its tokenizer in
             `data/bootstrap/policy/`, and its starting figures in `data/bootstrap/sft_metrics.json`: held-out LM
             loss before and after, and the gold reward of the corpus, of the policy's samples and of the best
             of n samples per prompt (the headroom the RLHF loop can reach).

Values come from the `bootstrap:` section of params.yaml; `build_all` runs everything into any directory with
some of them overridden (the tests use it with tiny settings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from statistics import fmean
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from components.toy.gold import gold_reward
from components.toy.language import make_prompt_pool, sample_corpus
from components.toy.tokenizer import build_tokenizer

PARAMS_FILE = Path(__file__).resolve().parents[2] / "params.yaml"
PROMPT_POOL = Path("data/prompts/pool.parquet")
TOKENIZER_DIR = Path("data/bootstrap/tokenizer")
POLICY_DIR = Path("data/bootstrap/policy")
SFT_METRICS = Path("data/bootstrap/sft_metrics.json")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PromptParams(_Frozen):
    n_train_per_topic: int = Field(description="train rows per topic in the pool (16 topics)")
    n_eval_per_topic: int = Field(description="eval rows per topic; their prompt texts never appear in train")


class CorpusParams(_Frozen):
    n_reviews: int = Field(description="pre-training reviews, drawn with `seed`")
    n_heldout: int = Field(description="held-out reviews (seed + 1) for the LM loss and the corpus gold mean")


class ModelParams(_Frozen):
    n_layer: int
    n_embd: int
    n_head: int
    n_positions: int = Field(description="longest sequence; longer reviews are truncated (their eos is lost)")


class TrainParams(_Frozen):
    steps: int = Field(description="optimizer steps, over length-grouped batches, epoch after epoch")
    batch_size: int
    lr: float = Field(description="peak AdamW learning rate, reached after warmup, then cosine decay to lr/10")
    warmup_steps: int
    weight_decay: float


class EvalParams(_Frozen):
    n_prompts: int = Field(description="held-out prompts sampled from after training (temperature 1)")
    best_of: int = Field(description="samples per prompt; the best by gold gives the headroom figure")
    max_new_tokens: int


class BootstrapParams(_Frozen):
    seed: int
    prompts: PromptParams
    corpus: CorpusParams
    model: ModelParams
    train: TrainParams
    eval: EvalParams


def load_params(path: Path = PARAMS_FILE, overrides: dict[str, Any] | None = None) -> BootstrapParams:
    """The `bootstrap:` section of `path`, with `overrides` merged in section by section; unknown keys fail."""
    values = yaml.safe_load(path.read_text())["bootstrap"]
    for key, value in (overrides or {}).items():
        values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
    return BootstrapParams.model_validate(values)


def write_prompt_pool(path: Path, params: BootstrapParams) -> Path:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pool = make_prompt_pool(params.seed, params.prompts.n_train_per_topic, params.prompts.n_eval_per_topic)
    pq.write_table(pool, path)
    return path


def _encode(tokenizer, pairs: list[tuple[str, str]], max_len: int):
    """Right-padded `prompt + completion + <eos>` ids [N, max_len] and their attention mask."""
    import torch

    rows = [[*tokenizer(p + c)["input_ids"][: max_len - 1], tokenizer.eos_token_id] for p, c in pairs]
    ids = torch.full((len(rows), max_len), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _length_grouped_batches(lengths, batch_size: int, steps: int, seed: int):
    """`steps` batches of row indices, epoch after epoch, each holding rows of similar length.

    Reviews run from ~8 to ~60 tokens and a batch costs as much as its longest row: random batches padded to
    that length waste most of the compute. So each epoch is shuffled, cut into windows of 32 batches, and each
    window sorted by length before it is cut into batches, whose order is shuffled again.
    """
    import torch

    if len(lengths) < batch_size:
        raise ValueError(f"{len(lengths)} reviews cannot fill a batch of {batch_size}")
    generator = torch.Generator().manual_seed(seed)
    window = 32 * batch_size
    batches: list = []
    while len(batches) < steps:
        order = torch.randperm(len(lengths), generator=generator)
        epoch = []
        for w in range(0, len(order), window):
            rows = order[w : w + window]
            rows = rows[torch.argsort(lengths[rows], stable=True)]
            epoch += [rows[b : b + batch_size] for b in range(0, len(rows) - batch_size + 1, batch_size)]
        batches += [epoch[i] for i in torch.randperm(len(epoch), generator=generator)]
    return batches[:steps]


def _summed_lm_loss(model, ids, mask):
    """Summed next-token cross-entropy over the real tokens of a right-padded batch (prompt included).

    A sum, not a mean: batches are grouped by length, and a per-batch mean would weight each token of a short
    review several times more than a token of a long one, teaching the policy to stop early.
    """
    import torch.nn.functional as F

    width = int(mask.sum(1).max())  # drop all-padding columns: the batch's longest row sets the cost
    ids, mask = ids[:, :width], mask[:, :width]
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
    targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum")


def _heldout_loss(model, ids, mask, batch_size: int = 256) -> float:
    """Mean next-token cross-entropy (nats per token) over all held-out reviews."""
    import torch

    model.eval()
    with torch.no_grad():
        total = sum(
            _summed_lm_loss(model, ids[i : i + batch_size], mask[i : i + batch_size]).item()
            for i in range(0, len(ids), batch_size)
        )
    return total / mask[:, 1:].sum().item()


def _sample_completions(model, tokenizer, prompts: list[str], n: int, max_new_tokens: int) -> list[list[str]]:
    """`n` completions per prompt, sampled at temperature 1 from the full distribution (no top-k/top-p)."""
    import torch

    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        out = model.generate(
            **batch,
            do_sample=True,
            temperature=1.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=max_new_tokens,
            num_return_sequences=n,
        )
    texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    # Completions start with a space by the language's convention; decode joins words without one in front.
    return [[" " + t for t in texts[i * n : (i + 1) * n]] for i in range(len(prompts))]


def _gold_figures(model, tokenizer, heldout: list[tuple[str, str]], ev: EvalParams) -> dict[str, float]:
    """Where the loop starts (corpus and policy mean gold) and what reranking alone reaches (best of n)."""
    prompts = [p for p, _ in heldout[: ev.n_prompts]]
    samples = _sample_completions(model, tokenizer, prompts, ev.best_of, ev.max_new_tokens)
    rewards = [gold_reward([p] * ev.best_of, s) for p, s in zip(prompts, samples)]
    lengths = [len(tokenizer(c)["input_ids"]) for s in samples for c in s]  # eos excluded
    return {
        "sft/gold_corpus": fmean(gold_reward([p for p, _ in heldout], [c for _, c in heldout])),
        "sft/gold_policy": fmean([r for rs in rewards for r in rs]),
        f"sft/gold_best_of_{ev.best_of}": fmean([max(rs) for rs in rewards]),
        "sft/completion_tokens": fmean(lengths),
        "sft/eos_rate": fmean([n < ev.max_new_tokens for n in lengths]),  # the rest hit max_new_tokens
    }


def _fresh_policy(tokenizer, m: ModelParams):
    """A randomly initialised GPT-2 of shape `m` over the toy vocabulary (draws from torch's global RNG)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=m.n_positions,
        n_embd=m.n_embd,
        n_layer=m.n_layer,
        n_head=m.n_head,
        # The corpus is unlimited synthetic data: the model underfits, so dropout would only slow it down.
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        activation_function="gelu",  # one fused kernel; GPT-2's tanh "gelu_new" took ~15% of a CPU step
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def _warmup_cosine(optimizer, tr: TrainParams):
    """Linear warmup to the peak lr over `warmup_steps`, then cosine decay from 1 down to 0.1 of it."""
    import torch

    def lr_factor(step: int) -> float:
        if step < tr.warmup_steps:
            return (step + 1) / tr.warmup_steps
        progress = (step - tr.warmup_steps) / max(1, tr.steps - tr.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def _train(model, train_ids, train_mask, tr: TrainParams, seed: int) -> tuple[float, float]:
    """`tr.steps` AdamW steps over length-grouped batches, printing the train loss ten times; returns the wall and
    CPU seconds spent."""
    import torch

    optimizer = torch.optim.AdamW(model.parameters(), lr=tr.lr, weight_decay=tr.weight_decay)
    schedule = _warmup_cosine(optimizer, tr)
    batches = _length_grouped_batches(train_mask.sum(1), tr.batch_size, tr.steps, seed)
    # Summed losses are divided by the corpus-average tokens per batch, not the batch's own count: every token
    # weighs the same whatever the length of the batch it fell in (see _summed_lm_loss).
    tokens_per_batch = tr.batch_size * train_mask[:, 1:].sum().item() / len(train_mask)
    report_every, window_loss, window_tokens = max(1, tr.steps // 10), 0.0, 0
    model.train()
    start, start_cpu = time.perf_counter(), time.process_time()
    for step, rows in enumerate(batches, 1):
        summed_loss = _summed_lm_loss(model, train_ids[rows], train_mask[rows])
        optimizer.zero_grad(set_to_none=True)
        (summed_loss / tokens_per_batch).backward()
        optimizer.step()
        schedule.step()
        window_loss, window_tokens = window_loss + summed_loss.item(), window_tokens + train_mask[rows, 1:].sum().item()
        if step % report_every == 0:
            print(
                f"sft step {step}/{tr.steps} train loss {window_loss / window_tokens:.3f} "
                f"{time.perf_counter() - start:.0f}s",
                file=sys.stderr,
            )
            window_loss, window_tokens = 0.0, 0
    return time.perf_counter() - start, time.process_time() - start_cpu


def _save_policy(model, tokenizer, policy_dir: Path) -> None:
    """save_pretrained with the tokenizer's special ids in generation_config, so `generate` needs no arguments."""
    for key in ("pad_token_id", "eos_token_id", "bos_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(policy_dir)  # transformers 5 always writes safetensors
    tokenizer.save_pretrained(policy_dir)


def pretrain_policy(tokenizer_dir: Path, policy_dir: Path, metrics_path: Path, params: BootstrapParams) -> dict:
    """Pre-train the bootstrap policy from scratch and save it with its tokenizer; returns the metrics written."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(params.seed)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = _fresh_policy(tokenizer, params.model)
    n_positions = params.model.n_positions
    train_ids, train_mask = _encode(tokenizer, sample_corpus(params.seed, params.corpus.n_reviews), n_positions)
    heldout = sample_corpus(params.seed + 1, params.corpus.n_heldout)
    heldout_ids, heldout_mask = _encode(tokenizer, heldout, n_positions)
    loss_init = _heldout_loss(model, heldout_ids, heldout_mask)
    train_seconds, train_cpu_seconds = _train(model, train_ids, train_mask, params.train, params.seed)

    # timings go to the log, not to the DVC-tracked metrics: they differ on every run, and dvc.lock would with them
    print(f"sft: {train_seconds:.1f} s wall, {train_cpu_seconds:.1f} s CPU", file=sys.stderr)
    metrics = {
        "sft/heldout_loss_init": loss_init,
        "sft/heldout_loss": _heldout_loss(model, heldout_ids, heldout_mask),
        **_gold_figures(model, tokenizer, heldout, params.eval),
    }
    _save_policy(model, tokenizer, policy_dir)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def build_all(out_root: Path, params: dict[str, Any] | None = None) -> dict[str, Path]:
    """Run prompts, tokenizer and sft into `out_root`, with `params` overriding params.yaml's `bootstrap:`."""
    out_root = Path(out_root)
    p = load_params(overrides=params)
    paths = {
        "prompts": write_prompt_pool(out_root / PROMPT_POOL, p),
        "tokenizer": out_root / TOKENIZER_DIR,
        "policy": out_root / POLICY_DIR,
        "metrics": out_root / SFT_METRICS,
    }
    build_tokenizer(paths["tokenizer"])
    pretrain_policy(paths["tokenizer"], paths["policy"], paths["metrics"], p)
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.toy.bootstrap", description=__doc__.split("\n")[2])
    parser.add_argument("stage", choices=("prompts", "tokenizer", "sft"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--out-root", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    params = load_params(args.params)
    root = args.out_root
    if args.stage == "prompts":
        print(f"wrote {write_prompt_pool(root / PROMPT_POOL, params)}")
    elif args.stage == "tokenizer":
        build_tokenizer(root / TOKENIZER_DIR)
        print(f"wrote {root / TOKENIZER_DIR}")
    else:
        metrics = pretrain_policy(root / TOKENIZER_DIR, root / POLICY_DIR, root / SFT_METRICS, params)
        print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
