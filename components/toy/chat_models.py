"""Tiny chat models of real architectures, built locally from config (no hub): byte-level BPE tokenizers trained
with `tokenizers`, chat templates set, random weights. The tests, the benchmarks and `benchmarks/make_model.py`
build what a user would download, so the loop runs them through the same `from_pretrained` path.

    from components.toy.chat_models import build_chat_lm, build_reward_model
    build_chat_lm("llama3", "out/policy", dtype="bfloat16")   # Llama-3 style: BOS added, no pad, eos <|eot_id|>
    build_chat_lm("qwen2", "out/policy")                      # Qwen2 style: <|im_start|>/<|im_end|>, pad <|endoftext|>
    build_reward_model("qwen2", "out/rm")                     # …ForSequenceClassification, num_labels = 1

The templates are the published ones (Llama-3's trims content and starts with `{{ bos_token }}`, on a tokenizer
that also adds BOS itself: the double-BOS trap; Qwen2's injects a default system turn).
"""

from __future__ import annotations

from pathlib import Path

STYLES = ("llama3", "qwen2")

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

SPECIALS = {
    "llama3": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    "qwen2": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
}

CORPUS = [
    "You are a helpful assistant.", "Explain why the sky is blue in two sentences.",
    "Write a short poem about the sea.", "What is the capital of France? Paris is the capital of France.",
    "Summarise the following review: the food was great but the service was slow.",
    "How do I sort a list in Python? Use sorted(items) or items.sort().",
    "Give me three tips for better sleep: keep a schedule, avoid screens, and keep the room cool.",
    "Translate 'good morning' into Spanish: buenos dias.", "Thank you! You're welcome, happy to help.",
    "The quick brown fox jumps over the lazy dog. 0123456789 !?.,;:'\"()[]{}<>-_=+*/\\|@#$%^&~`",
]


def build_tokenizer(style: str, out_dir: str | Path | None = None, *, vocab_size: int = 512,
                    corpus: list[str] | None = None):
    """A byte-level BPE tokenizer in `style`'s conventions (special tokens, BOS, pad, chat template), trained on
    `corpus` (default: a few chat-like lines); saved to `out_dir` when given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if style not in STYLES:
        raise ValueError(f"unknown chat model style {style!r}; expected one of {STYLES}")
    specials = SPECIALS[style]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator((corpus or CORPUS) * 4, trainer=trainer)
    if style == "llama3":
        bos = "<|begin_of_text|>"
        core.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                            special_tokens=[(bos, core.token_to_id(bos))])
        tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=bos, eos_token="<|eot_id|>",
                                      clean_up_tokenization_spaces=False)
        tok.chat_template = LLAMA3_TEMPLATE
    else:
        tok = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      clean_up_tokenization_spaces=False)
        tok.chat_template = QWEN2_TEMPLATE
    if out_dir is not None:
        tok.save_pretrained(str(out_dir))
    return tok


def _config(style: str, tok, *, hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int,
            max_positions: int, **extra):
    from transformers import LlamaConfig, Qwen2Config

    eos = [tok.convert_tokens_to_ids(t) for t in
           (("<|eot_id|>", "<|end_of_text|>") if style == "llama3" else ("<|im_end|>", "<|endoftext|>"))]
    cls = LlamaConfig if style == "llama3" else Qwen2Config
    return cls(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv_heads, intermediate_size=intermediate, max_position_embeddings=max_positions,
               bos_token_id=tok.bos_token_id, eos_token_id=eos, pad_token_id=tok.pad_token_id,
               tie_word_embeddings=True, **extra), eos


def build_chat_lm(style: str, out_dir: str | Path, *, dtype: str = "float32", hidden: int = 64, layers: int = 2,
                  heads: int = 4, kv_heads: int = 2, intermediate: int = 128, max_positions: int = 2048,
                  vocab_size: int = 512, seed: int = 0, tokenizer=None) -> Path:
    """A random-weight causal LM in `style` with its tokenizer, chat template and a generation config whose
    eos ids are all of the style's stop tokens (as real checkpoints ship), saved with `save_pretrained`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    tok = tokenizer or build_tokenizer(style, vocab_size=vocab_size)
    cfg, eos = _config(style, tok, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                       intermediate=intermediate, max_positions=max_positions)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=eos,
                                               pad_token_id=tok.pad_token_id, do_sample=True, temperature=0.7,
                                               top_p=0.9)
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_reward_model(style: str, out_dir: str | Path, *, dtype: str = "float32", hidden: int = 64,
                       layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
                       vocab_size: int = 512, seed: int = 1, tokenizer=None) -> Path:
    """A random-weight `…ForSequenceClassification` reward model (one score) in `style`, with its own tokenizer
    and chat template: what a pretrained RM from the hub looks like."""
    import torch
    from transformers import AutoModelForSequenceClassification

    tok = tokenizer or build_tokenizer(style, vocab_size=vocab_size)
    cfg, _ = _config(style, tok, hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                     intermediate=intermediate, max_positions=2048, num_labels=1)
    if cfg.pad_token_id is None:  # the classification head finds each sequence's last token through pad
        cfg.pad_token_id = tok.convert_tokens_to_ids("<|end_of_text|>")
        tok.pad_token = "<|end_of_text|>"
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(cfg).to(getattr(torch, dtype))
    out = Path(out_dir)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
