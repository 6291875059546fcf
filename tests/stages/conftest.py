"""Tiny models built from config (no hub): a word-level tokenizer and a 2-layer GPT-2 saved with save_pretrained."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "review pizza burger coffee hotel movie crust sauce cheese patty bun espresso room staff plot ending "
    "the a it was is were and but very really not quite great bad good awful fine tasty cold fresh stale "
    "friendly slow loved hated okay today yesterday again : . ,"
).split()


def make_tokenizer(out_dir, *, add_bos: bool = False):
    """Word-level tokenizer like the toy's (<pad> distinct from <eos>, left padding); `add_bos` adds a
    post-processor that prepends <bos> to every encoding (the Llama-style case)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(SPECIALS)
    if add_bos:
        core.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
        )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    tok.save_pretrained(str(out_dir))
    return tok


def make_policy(out_dir, tok, *, seed: int = 0, n_layer: int = 2, n_embd: int = 32):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=len(tok),
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=2,
        n_positions=64,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model = GPT2LMHeadModel(cfg)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return str(out_dir)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory, tiny_tokenizer):
    """Path of a randomly initialised 2-layer 32-dim GPT-2 policy directory (model + tokenizer)."""
    return make_policy(tmp_path_factory.mktemp("policy"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_factory():
    """`make_tokenizer(dir, add_bos=False)` and `make_policy(dir, tok, seed=0, n_layer=2, n_embd=32)`."""
    return SimpleNamespace(make_tokenizer=make_tokenizer, make_policy=make_policy)
