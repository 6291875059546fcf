"""Hugging Face backends: load a causal LM, sample completions, score log-probabilities, run an RM ensemble.

Every model is a `save_pretrained` directory (safetensors + its tokenizer) loaded with `from_pretrained(path)`,
so the tiny toy GPT-2 and a real 7B checkpoint go through the same code. torch/transformers are imported inside
the functions: importing this module costs only numpy.

Prompts are plain strings or chat messages (components.chat): a chat prompt is rendered by the policy tokenizer's
own chat template (`prompt_ids`), and the ids sampled are the ids scored and trained (`Generation.completion_ids`,
`encode_scored(..., completion_ids=...)`). Text conventions for plain prompts (shared with
`components.backends.trainers` and TRL's trainers):
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


def torch_dtype(setting=None, device: str | None = None):
    """`models.dtype` as a torch dtype: "auto" (or None) = bfloat16 on CUDA, float32 on CPU; else the named one.
    A torch dtype passes through."""
    import torch

    if isinstance(setting, torch.dtype):
        return setting
    if setting in (None, "auto"):
        return torch.bfloat16 if str(_device(device)).startswith("cuda") else torch.float32
    if setting not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"models.dtype: {setting!r} is not one of auto, bfloat16, float16, float32")
    return getattr(torch, setting)


def load_causal_lm(path: str, *, device: str | None = None, dtype=None):
    """(model, tokenizer) from a `save_pretrained` directory or hub id; eval mode, left padding, weights in
    `torch_dtype(dtype, device)` (`models.dtype`; None = auto: bfloat16 on CUDA, float32 on CPU).

    The pad token falls back to eos only when the tokenizer has none (a Llama-3 style tokenizer: inputs are padded
    with an eos id, which the attention mask hides; reward models need a distinct pad).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype, device)).to(_device(device))
    model.eval()
    return model, tokenizer


@dataclass
class Generation:
    prompt_index: int  # index into the `prompts` list given to `generate`
    sample_index: int  # 0..n-1
    completion: str  # decoded new tokens; plain prompts: starting with a space, `prompt + completion` the full text
    num_tokens: int  # generated tokens up to and including eos (padding excluded)
    completion_ids: list[int] | None = None  # the sampled ids, up to and including the stopping eos
    finish_reason: str = "stop"  # "stop" (an eos id ended it) or "length" (max_new_tokens reached)


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


def decode_completion(tokenizer, prompt, prompt_ids: list[int], new_ids: list[int]) -> str:
    """A completion's text: plain prompts as `_decode_completion` (a leading space, `prompt + completion` the full
    text); chat prompts the assistant turn's own text (special tokens skipped, no space forced in front)."""
    if isinstance(prompt, str):
        return _decode_completion(tokenizer, prompt_ids, new_ids)
    return tokenizer.decode(new_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Every id that ends a completion: the tokenizer's eos and all eos ids of the checkpoint's generation_config
    (an int or a list: Llama-3 stops on <|eot_id|> and <|end_of_text|>, Qwen2 on <|im_end|> and <|endoftext|>)."""
    ids = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    gen = getattr(model, "generation_config", None) if model is not None else None
    extra = getattr(gen, "eos_token_id", None)
    for t in extra if isinstance(extra, (list, tuple)) else [extra]:
        if t is not None and int(t) not in ids:
            ids.append(int(t))
    return ids


def forbidden_token_ids(tokenizer, stop_ids=()) -> list[int]:
    """pad/bos/unk (eos and the other `stop_ids` excepted): never words of a completion, and decoding skips them, so
    a sampled one would silently vanish from the text. Every sampler forbids them; a trained model puts ~no mass
    there."""
    specials = {tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id}
    return sorted({t for t in specials if t is not None} - {tokenizer.eos_token_id, *stop_ids})


def _sampling_config(tokenizer, *, max_new_tokens: int, temperature: float, top_p: float, stop_ids=None):
    """Pure temperature/top-p sampling: every other knob set to neutral explicitly, so a checkpoint's own
    generation_config (top_k, penalties, beams) cannot change the distribution. Stops on every id of `stop_ids`
    (default: the tokenizer's eos)."""
    from transformers import GenerationConfig

    eos_id = tokenizer.eos_token_id
    stop_ids = list(stop_ids or [eos_id])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
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
        eos_token_id=stop_ids if len(stop_ids) > 1 else stop_ids[0],
        pad_token_id=pad_id,
        bos_token_id=tokenizer.bos_token_id,
        suppress_tokens=forbidden_token_ids(tokenizer, stop_ids) or None,
    )


def _left_padded(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[k, width - len(r) :] = 1
    return ids, mask


def split_completion(row: list[int], stop_ids) -> tuple[list[int], str]:
    """(the sampled ids up to and including the first stop id, finish_reason): "stop" when a stop id ended the
    row, else "length" (it ran to max_new_tokens; `generate` pads only after a stop)."""
    stop = next((k for k, t in enumerate(row) if t in stop_ids), None)
    return (row[: stop + 1], "stop") if stop is not None else (list(row), "length")


def _sample_batch(model, tokenizer, prompts: list, rows: list[list[int]], jobs: list[tuple[int, int]], gen_cfg,
                  seed: int):
    """One left-padded `generate` call over `jobs` ((prompt index, sample index) pairs), seeded with `seed`;
    `rows[i]` are prompt i's ids (`prompt_ids`), never re-tokenized from rendered text."""
    import torch

    stop_ids = set(gen_cfg.eos_token_id if isinstance(gen_cfg.eos_token_id, list) else [gen_cfg.eos_token_id])
    ids, mask = _left_padded([rows[i] for i, _ in jobs], gen_cfg.pad_token_id)
    ids, mask = ids.to(model.device), mask.to(model.device)
    torch.manual_seed(seed)
    with torch.no_grad():
        seqs = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_cfg)
    out = []
    for (i, j), row in zip(jobs, seqs[:, ids.shape[1] :].tolist()):
        sampled, reason = split_completion(row, stop_ids)
        kept = sampled[:-1] if reason == "stop" else sampled
        text = decode_completion(tokenizer, prompts[i], rows[i], kept)
        out.append(Generation(i, j, text, len(sampled), completion_ids=sampled, finish_reason=reason))
    return out


def fitting_prompts(tokenizer, prompts: list, max_prompt_length: int | None) -> tuple[list[list[int]], list[int]]:
    """(every prompt's ids, the indices of those within `max_prompt_length` tokens); a longer one is warned about."""
    rows = [prompt_ids(tokenizer, p) for p in prompts]
    keep = [i for i, r in enumerate(rows) if max_prompt_length is None or len(r) <= max_prompt_length]
    if len(keep) < len(rows):
        import logging

        logging.getLogger(__name__).warning(
            "%d of %d prompts are longer than generate.max_prompt_length=%s tokens: skipped", len(rows) - len(keep),
            len(rows), max_prompt_length)
    return rows, keep


def generate(
    model,
    tokenizer,
    prompts: list,
    n: int,
    *,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    batch_size: int,
    seed: int,
    max_prompt_length: int | None = None,
) -> tuple[list[Generation], dict]:
    """`n` sampled completions per prompt (a string, or chat messages rendered by the tokenizer's chat template):
    pure temperature/top-p sampling from the model (top_k off and repetition penalties neutralised, whatever the
    checkpoint's generation_config says), so samples come from the distribution that `sequence_logprobs` scores;
    stopping on every eos id of the tokenizer and the generation_config (`stop_token_ids`).

    Prompt-major order: each prompt repeated `n` times, decoded in batches of `batch_size` sequences; batch b is
    seeded from (seed, b), so the same call gives the same completions. Prompts longer than `max_prompt_length`
    tokens get no samples. Returns (generations, stats) with stats = {"tokens", "seconds", "tokens_per_s",
    "prompts_too_long"}.
    """
    stops = stop_token_ids(tokenizer, model)
    gen_cfg = _sampling_config(tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                               stop_ids=stops)
    rows, keep = fitting_prompts(tokenizer, prompts, max_prompt_length)
    jobs = [(i, j) for i in keep for j in range(n)]
    out: list[Generation] = []
    t0 = time.perf_counter()
    for b, start in enumerate(range(0, len(jobs), batch_size)):
        out += _sample_batch(model, tokenizer, prompts, rows, jobs[start : start + batch_size], gen_cfg,
                             derive_seed(seed, b))
    seconds = time.perf_counter() - t0
    tokens = sum(g.num_tokens for g in out)
    return out, {
        "tokens": tokens,
        "seconds": seconds,
        "tokens_per_s": tokens / seconds if seconds > 0 else 0.0,
        "prompts_too_long": len(prompts) - len(keep),
    }


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    k = 0
    for x, y in zip(a, b):
        if x != y:
            break
        k += 1
    return k


def prompt_ids(tokenizer, prompt) -> list[int]:
    """The token ids the policy is conditioned on: a chat prompt rendered by the tokenizer's own chat template
    with the generation prompt (`apply_chat_template` adds no special tokens of its own, so a template holding
    BOS gives exactly one BOS even on a BOS-adding tokenizer); a plain prompt tokenized with its defaults."""
    if isinstance(prompt, str):
        return tokenizer(prompt)["input_ids"]
    if not tokenizer.chat_template:
        raise ValueError(f"{tokenizer.name_or_path}: chat prompts need a tokenizer with a chat template "
                         "(set tokenizer.chat_template, or use plain-text prompts)")
    return tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]


def encode_scored(tokenizer, prompt, completion: str, *, add_eos: bool = True,
                  completion_ids: list[int] | None = None) -> tuple[list[int], int]:
    """Token ids of the scored sequence and the number of leading prompt tokens.

    `completion_ids` given (the tokens the policy sampled): exactly `prompt_ids + completion_ids`, so what is
    scored and trained is what was sampled. Otherwise TRL's DPOTrainer/RewardTrainer rule: a plain prompt as the
    string `prompt + completion (+ eos)` tokenized in one piece; a chat prompt as the template's rendering of
    `prompt + [assistant: completion]`; the completion starts where the prompt's own ids stop being a prefix.
    """
    if completion_ids is not None:
        head = prompt_ids(tokenizer, prompt)
        return head + list(completion_ids), len(head)
    if isinstance(prompt, str):
        eos = tokenizer.eos_token
        text = prompt + completion
        if add_eos and eos is not None and not completion.endswith(eos):
            text += eos
        ids = tokenizer(text)["input_ids"]
        return ids, _common_prefix_length(tokenizer(prompt)["input_ids"], ids)
    ids = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=True,
                                        return_dict=True)["input_ids"]
    return ids, _common_prefix_length(prompt_ids(tokenizer, prompt), ids)


def _right_padded(rows: list[list[int]], pad_id: int):
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for k, r in enumerate(rows):
        ids[k, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[k, : len(r)] = 1
    return ids, mask


def _token_logprobs(model, ids, mask, first: int, chunk: int):
    """log π(ids[:, t] | ids[:, <t]) for t in first..L-1, float32 [B, L - first]: the decoder runs once for its
    hidden states, then the output embedding gives fp32 logits `chunk` positions at a time (logsumexp + gather of
    the next token), so the peak is B × chunk × V floats, never B × L × V."""
    import torch

    base, head = getattr(model, "base_model", None), model.get_output_embeddings()
    if base is None or base is model or head is None:  # no separable head: full logits (PEFT wrappers and the like)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, first - 1 : -1].float()
        return torch.log_softmax(logits, -1).gather(-1, ids[:, first:, None]).squeeze(-1)
    hidden = base(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    cap = getattr(model.config, "final_logit_softcapping", None)
    parts = []
    for s in range(first - 1, ids.shape[1] - 1, chunk):
        e = min(s + chunk, ids.shape[1] - 1)
        logits = head(hidden[:, s:e]).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        parts.append(torch.log_softmax(logits, -1).gather(-1, ids[:, s + 1 : e + 1, None]).squeeze(-1))
        del logits
    return torch.cat(parts, dim=1)


def sequence_logprobs(
    model,
    tokenizer,
    prompts: list,
    completions: list[str],
    *,
    batch_size: int = 16,
    chunk: int = 128,
    add_eos: bool = True,
    completion_ids: list | None = None,
) -> np.ndarray:
    """log π(y | x) = Σ_t log π(y_t | x, y_<t) over the completion's tokens (+ the appended eos), float64 [N].

    Prompts are strings or chat messages (`encode_scored`); `completion_ids[i]` (the ids the policy sampled, None
    for a text-only row) scores exactly those tokens after the rendered prompt. Sequences are right-padded
    (positions 0..L-1 exactly as unpadded, and as TRL's DPO collator builds them) and processed shortest-first in
    batches of `batch_size`, so the result does not depend on batching; logits are formed `chunk` positions at a
    time (`models.logprob_chunk`), only from the batch's first completion position on.
    """
    import torch

    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    ids_of = completion_ids if completion_ids is not None else [None] * len(prompts)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [encode_scored(tokenizer, p, c, add_eos=add_eos, completion_ids=k)
               for p, c, k in zip(prompts, completions, ids_of)]
    order = sorted(range(len(encoded)), key=lambda k: len(encoded[k][0]))
    result = np.zeros(len(encoded), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _right_padded([encoded[k][0] for k in idx], pad_id)
        if ids.shape[1] < 2:
            continue
        ids, mask = ids.to(model.device), mask.to(model.device)
        starts = torch.tensor([encoded[k][1] for k in idx], device=ids.device)[:, None]
        first = max(1, int(starts.min()))
        with torch.no_grad():
            logp = _token_logprobs(model, ids, mask, first, chunk)
        # token t (t >= first) is predicted at position t-1; keep completion tokens that are not padding
        # summed over all L-1 positions (zeros before `first`): the same reduction whatever `first` is
        logp = torch.nn.functional.pad(logp, (first - 1, 0))
        pos = torch.arange(1, ids.shape[1], device=ids.device)[None, :]
        keep = (pos >= starts) & mask[:, 1:].bool()
        result[idx] = (logp * keep).sum(-1).double().cpu().numpy()
    return result


def load_reward_model(path: str, *, device: str | None = None, dtype=None):
    """(model, tokenizer) of a sequence-classification reward model, eval mode: one head (num_labels = 1, a
    separate ensemble member) or K heads on one trunk (num_labels = K, a shared-backbone ensemble), as saved.

    `dtype`: a torch dtype, a `models.dtype` name (`torch_dtype`: auto = bf16 on CUDA, fp32 on CPU) or None (the
    checkpoint's own). A tokenizer without pad falls back to eos (a hub RM; the toy Llama-3 RM has its own)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kw = {"dtype": torch_dtype(dtype, device)} if dtype is not None else {}
    model = AutoModelForSequenceClassification.from_pretrained(path, **kw)
    model.config.pad_token_id = tokenizer.pad_token_id  # GPT-2 style heads find the last token through it
    model.to(_device(device)).eval()
    return model, tokenizer


_warned_no_template: set[str] = set()


def scored_ids(tokenizer, prompts: list, completions: list[str]) -> list[list[int]]:
    """Token ids each reward model scores, rendered by *its own* tokenizer: a chat prompt through its chat template
    (`encode_scored`); without a template, the conversation as text (`chat.as_text` + a blank line) followed by
    the completion, as a plain prompt, with one warning per tokenizer. Reward training uses the same ids."""
    from components.chat import as_text

    if not tokenizer.chat_template and any(not isinstance(p, str) for p in prompts):
        name = str(tokenizer.name_or_path)
        if name not in _warned_no_template:
            _warned_no_template.add(name)
            import logging

            logging.getLogger(__name__).warning(
                "reward model %s has no chat template: chat prompts are scored as plain text", name)
        prompts = [p if isinstance(p, str) else as_text(p) + "\n\n" for p in prompts]
    return [encode_scored(tokenizer, p, c)[0] for p, c in zip(prompts, completions)]


def reward_scores(
    model, tokenizer, prompts: list, completions: list[str], *, batch_size: int = 32
) -> np.ndarray:
    """r_k(x, y) of each of a reward model's K heads, float64 [K, N]: plain prompts on `prompt + completion + eos`
    (the text it was trained on), chat prompts on its own chat template's rendering of the conversation plus the
    assistant turn (`encode_scored`). One forward pass per batch of `batch_size` sequences whatever K."""
    import torch

    pad_id = tokenizer.pad_token_id
    rows = scored_ids(tokenizer, prompts, completions)
    order = sorted(range(len(rows)), key=lambda k: len(rows[k]))
    result = np.zeros((model.config.num_labels, len(rows)), dtype=np.float64)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = _right_padded([rows[k] for k in idx], pad_id)
        with torch.no_grad():
            out = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), use_cache=False)
        result[:, idx] = out.logits.T.double().cpu().numpy()
    return result


def _num_labels(path: str) -> int:
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(path).num_labels)


class RewardEnsemble:
    """Reward models scored on the same (prompt, completion) pairs; `score` returns r[k, i], float64 [K, N].

    Each path contributes one row per head, in order: K separate models (`member-0..K-1`) give K rows, one
    shared-backbone model with num_labels = K gives K rows from one forward pass per batch.

    Staged loading: unless `keep_loaded`, each `score` call loads the models one at a time (load RM 1, score,
    free it, RM 2, ...), so scoring with K reward models needs about one model's memory; `keep_loaded` holds them
    all after the first load (faster when a stage scores many times and memory allows)."""

    def __init__(self, paths: list[str], *, device: str | None = None, batch_size: int = 32,
                 keep_loaded: bool = False, dtype=None):
        if not paths:
            raise ValueError("RewardEnsemble needs at least one reward model path")
        self.paths = list(paths)
        self.batch_size, self.device, self.keep_loaded, self.dtype = batch_size, device, keep_loaded, dtype
        self._held: dict[str, tuple] = {}
        self.loads = 0  # models loaded so far (staged loading reloads on every `score`)
        self.size = sum(_num_labels(p) for p in self.paths)  # K, rows of `score`

    def _load(self, path: str):
        if path in self._held:
            return self._held[path]
        self.loads += 1
        loaded = load_reward_model(path, device=self.device, dtype=self.dtype)
        if self.keep_loaded:
            self._held[path] = loaded
        return loaded

    def score(self, prompts: list, completions: list[str]) -> np.ndarray:
        import gc

        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not prompts:
            return np.zeros((self.size, 0), dtype=np.float64)
        rows = []
        for path in self.paths:
            model, tokenizer = self._load(path)
            rows.append(reward_scores(model, tokenizer, prompts, completions, batch_size=self.batch_size))
            del model, tokenizer
            if not self.keep_loaded:
                gc.collect()
                _empty_cache()
        return np.concatenate(rows)


def _empty_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
