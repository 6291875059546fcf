"""The embedded task's tokenizer: one token per word of the toy language, built locally (no hub)."""

from __future__ import annotations

from pathlib import Path

from components.toy.language import vocabulary

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"


def build_tokenizer(out_dir: Path | str):
    """Build the word-level tokenizer, `save_pretrained` it into `out_dir` and return it.

    Specials come first (<pad>=0, <unk>=1, <bos>=2, <eos>=3); pad is distinct from eos because reward models
    find a sequence's last real token through the attention mask and must not confuse padding with its end.
    No special tokens are added on encode, so `encode(prompt) + encode(completion)` equals
    `encode(prompt + completion)`, which generation and the DPO trainer rely on. With no decoder set,
    `tokenizers` joins tokens with single spaces; `clean_up_tokenization_spaces=False` keeps " ." from being
    glued to the previous word. Padding is on the left, for batched generation.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, UNK, BOS, EOS]
    vocab = {token: i for i, token in enumerate(specials + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(specials)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
