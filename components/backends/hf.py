"""Hugging Face backends: load a causal LM, sample completions, score log-probabilities, run an RM ensemble.

Every model is a `save_pretrained` directory (safetensors + its tokenizer) loaded with `from_pretrained(path)`,
so the tiny toy GPT-2 and a real 7B checkpoint go through the same code. torch/transformers are imported inside
the functions: importing this module costs only numpy.

Text conventions (shared with `components.backends.trainers` and TRL's trainers):
  * a completion starts with a space, so `prompt + completion` is the full text;
  * a scored sequence is the string `prompt + completion + eos_token`, tokenized in one piece with the
    tokenizer's defaults (as TRL's DPOTrainer and RewardTrainer do), so the tokens scored here are the ones the
    trainers train on;
  * the completion's tokens start where the tokenization of `prompt` alone stops being a prefix of it
    (TRL's `common_prefix_length` rule).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from components.seeds import derive_seed


def _device(device: str | None) -> str:
    import torch

    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_causal_lm(path: str, *, device: str | None = None):
    """(model, tokenizer) from a `save_pretrained` directory or hub id; eval mode, left padding.

    The pad token falls back to eos only when the tokenizer has none (reward models need a distinct pad).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path).to(_device(device))
    model.eval()
    return model, tokenizer


@dataclass
class Generation:
    prompt_index: int  # index into the `prompts` list given to `generate`
    sample_index: int  # 0..n-1
    completion: str  # decoded new tokens, starting with a space; `prompt + completion` is the full text
    num_tokens: int  # generated tokens up to and including eos (padding excluded)


def _decode_completion(tokenizer, prompt_ids: list[int], new_ids: list[int]) -> str:
    """Text of `new_ids` as it continues the prompt: decode(prompt + new) minus decode(prompt).

    Decoding the continuation together with its prompt keeps the joining space (word-level tokenizers join
    tokens with spaces; byte-level BPE carries the space in the token). Falls back to decoding the new tokens
    alone, with a space put in front, if the decoded prompt is not a prefix of the decoded whole.
    """
    kw = {"skip_special_tokens": True, "clean_up_tokenization_spaces": False}
    if not new_ids:
        return ""
    head = tokenizer.decode(prompt_ids, **kw)
    whole = tokenizer.decode(prompt_ids + new_ids, **kw)
    text = whole[len(head) :] if whole.startswith(head) else tokenizer.decode(new_ids, **kw)
    if text and not text[0].isspace():
        text = " " + text
    return text


def forbidden_token_ids(tokenizer) -> list[int]:
    """pad/bos/unk (eos excepted): never words of a completion, and decoding skips them, so a sampled one would
    silently vanish from the text. Every sampler forbids them; a trained model puts ~no mass there."""
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    return sorted({t for t in specials if t is not None} - {tokenizer.eos_token_id})


def _sampling_config(tokenizer, *, max_new_tokens: int, temperature: float, top_p: float):
    """Pure temperature/top-p sampling: every other knob set to neutral explicitly, so a checkpoint's own
    generation_config (top_k, penalties, beams) cannot change the distribution."""
    from transformers import GenerationConfig

    eos_id = tokenizer.eos_token_id
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    return GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,
        min_p=None,
        typical_p=1.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_beams=1,
        min_new_tokens=0,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        suppress_tokens=forbidden_token_ids(tokenizer) or None,
    )


def _sample_batch(model, tokenizer, prompts: list[str], jobs: list[tuple[int, int]], gen_cfg, seed: int):
    """One left-padded `generate` call over `jobs` ((prompt index, sample index) pairs), seeded with `seed`."""
    import torch

    eos_id = tokenizer.eos_token_id
    enc = tokenizer([prompts[i] for i, _ in jobs], return_tensors="pt", padding=True)
    enc = {k: v.to(model.device) for k, v in enc.items()}
    torch.manual_seed(seed)
    with torch.no_grad():
        seqs = model.generate(**enc, generation_config=gen_cfg)
    new = seqs[:, enc["input_ids"].shape[1] :].tolist()
    ids, mask = enc["input_ids"].tolist(), enc["attention_mask"].tolist()
    out = []
    for (i, j), row, prow, pmask in zip(jobs, new, ids, mask):
        prompt_ids = [t for t, m in zip(prow, pmask) if m]
        stop = row.index(eos_id) if eos_id in row else None
        # after eos `generate` pads; a row without eos ran to max_new_tokens and has no padding
        kept = row[:stop] if stop is not None else row
        num = stop + 1 if stop is not None else len(row)
        out.append(Generation(i, j, _decode_completion(tokenizer, prompt_ids, kept), num))
    return out


def generate(
    model,
    tokenizer,
    prompts: list[str],
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
) -> tuple[list[Generation], dict]:
    """`n` sampled completions per prompt: pure temperature/top-p sampling from the model (top_k off and
    repetition penalties neutralised, whatever the checkpoint's generation_config says), so samples come from
    the distribution that `sequence_logprobs` scores.

    Prompt-major order: each prompt repeated `n` times, decoded in batches of `batch_size` sequences; batch b is
    seeded from (seed, b), so the same call gives the same completions. Returns (generations, stats) with stats =
    {"tokens", "seconds", "tokens_per_s"}.
    """
    gen_cfg = _sampling_config(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    jobs = [(i, j) for i in range(len(prompts)) for j in range(n)]
    out: list[Generation] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    t0 = time.perf_counter()
    try:
        for b, start in enumerate(range(0, len(jobs), batch_size)):
            out += _sample_batch(model, tokenizer, prompts, jobs[start : start + batch_size], gen_cfg,
                                 derive_seed(seed, b))
    finally:
        tokenizer.padding_side = side
    seconds = time.perf_counter() - t0
    tokens = sum(g.num_tokens for g in out)
    return out, {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
    }


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def encode_scored(tokenizer, prompt: str, completion: str, *, add_eos: bool = True) -> tuple[list[int], int]:
    """Token ids of `prompt + completion (+ eos)` and the number of leading prompt tokens.

    Same text and rule as TRL's DPOTrainer/RewardTrainer preprocessing (eos appended as a string, the whole
    tokenized in one piece with the tokenizer's default special tokens, completion starting where the prompt's
    own tokenization stops being a prefix).
    """
    eos = tokenizer.eos_token
    text = prompt + completion
    if add_eos and eos is not None and not completion.endswith(eos):
        text += eos
    ids = tokenizer(text)["input_ids"]
    prompt_len = _common_prefix_length(tokenizer(prompt)["input_ids"], ids)
    return ids, prompt_len


def _right_padded(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[k, : len(r)] = 1
    return ids, mask


def sequence_logprobs(
    model,
    tokenizer,
    prompts: list[str],
    completions: list[str],
    *,
    batch_size: int = 64,
    add_eos: bool = True,
) -> np.ndarray:
    """log π(y | x) = Σ_t log π(y_t | x, y_<t) over the completion's tokens (+ the appended eos), float64 [N].

    Sequences are right-padded (positions 0..L-1 exactly as unpadded, and as TRL's DPO collator builds them)
    and processed shortest-first in batches, so the result does not depend on batching.
    """
    import torch

    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_scored(tokenizer, p, c, add_eos=add_eos) for p, c in zip(prompts, completions)]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]))
    result = np.zeros(len(encoded), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _right_padded([encoded[k][0] for k in idx], pad_id)
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        # token t (t >= 1) is predicted at position t-1; keep completion tokens that are not padding
        pos = torch.arange(1, ids.shape[1], device=ids.device)[None, :]
        starts = torch.tensor([encoded[k][1] for k in idx], device=ids.device)[:, None]
        keep = (pos >= starts) & mask[:, 1:].bool()
        result[idx] = (logp * keep).sum(-1).double().cpu().numpy()
    return result


def load_reward_model(path: str, *, device: str | None = None):
    """(model, tokenizer) of a sequence-classification reward model, eval mode: one head (num_labels = 1, a
    separate ensemble member) or K heads on one trunk (num_labels = K, a shared-backbone ensemble), as saved."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(path)
    model.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 style heads find the last token through it
    model.to(_device(device)).eval()
    return model, tokenizer


def reward_scores(
    model, tokenizer, prompts: list[str], completions: list[str], *, batch_size: int = 128
) -> np.ndarray:
    """r_k(x, y) of each of a reward model's K heads on `prompt + completion + eos` (the text it was trained on),
    float64 [K, N]: one forward pass per batch whatever K."""
    import torch

    pad_id = tokenizer.pad_token_id
    rows = [encode_scored(tokenizer, p, c)[0] for p, c in zip(prompts, completions)]
    order = sorted(range(len(rows)), key=lambda k: len(rows[k]))
    result = np.zeros((model.config.num_labels, len(rows)), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _right_padded([rows[k] for k in idx], pad_id)
        with torch.no_grad():
            out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False)
        result[:, idx] = out.logits.T.double().cpu().numpy()
    return result


class RewardEnsemble:
    """Reward models scored on the same (prompt, completion) pairs; `score` returns r[k, i], float64 [K, N].

    Each path contributes one row per head, in order: K separate models (`member-0..K-1`) give K rows, one
    shared-backbone model with num_labels = K gives K rows from one forward pass per batch."""

    def __init__(self, paths: list[str], *, device: str | None = None, batch_size: int = 128):
        if not paths:
            raise ValueError("RewardEnsemble needs at least one reward model path")
        self.paths = list(paths)
        self.batch_size = batch_size
        self.members = [load_reward_model(p, device=device) for p in self.paths]
        self.size = sum(m.config.num_labels for m, _ in self.members)  # K, rows of `score`

    def score(self, prompts: list[str], completions: list[str]) -> np.ndarray:
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return np.zeros((self.size, 0), dtype=np.float64)
        return np.concatenate(
            [reward_scores(m, t, prompts, completions, batch_size=self.batch_size) for m, t in self.members]
        )
