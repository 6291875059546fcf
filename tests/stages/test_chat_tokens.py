"""Token-level contract of the policy side on chat models (issue 13): one BOS, every eos stops, the ids sampled are
the ids scored, chunked log-probs equal the full-logits ones, dtype as configured. Both tokenizer styles of
components/toy/chat_models.py: Llama-3 (BOS-adding tokenizer whose template holds BOS, no pad, two eos ids) and
Qwen2 (no BOS, pad = the second eos id)."""

from __future__ import annotations

import numpy as np
import pytest

STYLES = ("llama3", "qwen2")
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the hotel."}]
CHATS = [CHAT, [{"role": "user", "content": "What about the pizza and the coffee there?"}]]


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    """style -> (policy dir, (model, tokenizer)) of a random-weight toy chat LM."""
    from components.backends.hf import load_causal_lm
    from components.toy.chat_models import build_chat_lm

    out = {}
    for style in STYLES:
        path = build_chat_lm(style, tmp_path_factory.mktemp(style) / "policy")
        out[style] = (str(path), load_causal_lm(str(path), device="cpu"))
    return out


def _naive_logprobs(model, tokenizer, prompts, completions, completion_ids=None) -> np.ndarray:
    """The reference: full-vocabulary logits of every position, one sequence at a time."""
    import torch

    from components.backends.hf import encode_scored

    ids_of = completion_ids or [None] * len(prompts)
    out = []
    for p, c, k in zip(prompts, completions, ids_of):
        ids, start = encode_scored(tokenizer, p, c, completion_ids=k)
        x = torch.tensor([ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=x).logits.double(), -1)[0, :-1]
        out.append(float(logp.gather(-1, x[0, 1:, None]).squeeze(-1)[start - 1:].sum()))
    return np.array(out)


@pytest.mark.parametrize("style", STYLES)
def test_rendered_prompt_has_exactly_one_bos(chat_models, style):
    from components.backends.hf import prompt_ids

    _, (_, tok) = chat_models[style]
    ids = prompt_ids(tok, CHAT)
    text = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    if style == "llama3":
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
        assert tok(text)["input_ids"].count(tok.bos_token_id) == 2  # the hazard: re-tokenizing the rendered text
    else:
        assert tok.bos_token_id is None
        assert ids == tok(text, add_special_tokens=False)["input_ids"]  # nothing added to the template's tokens


@pytest.mark.parametrize("style", STYLES)
def test_every_generation_config_eos_stops(chat_models, style):
    import torch

    from components.backends import hf

    _, (model, tok) = chat_models[style]
    stops = hf.stop_token_ids(tok, model)
    assert stops[0] == tok.eos_token_id and len(stops) == 2
    assert not set(stops) & set(hf.forbidden_token_ids(tok, stops))  # Qwen's pad is an eos id: never suppressed
    other = stops[1]  # not the tokenizer's eos: only the generation_config names it
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(model.get_output_embeddings().weight)
        head.bias.zero_()
        head.bias[other] = 30.0  # the model all but always says `other` first
    saved = model.get_output_embeddings()
    model.set_output_embeddings(head)
    try:
        gens, _ = hf.generate(model, tok, CHATS, 2, max_new_tokens=8, temperature=1.0, top_p=1.0, batch_size=4,
                              seed=0)
    finally:
        model.set_output_embeddings(saved)
    assert all(g.finish_reason == "stop" and g.completion_ids == [other] and g.num_tokens == 1 for g in gens)
    assert all(g.completion == "" for g in gens)


@pytest.mark.parametrize("style", STYLES)
def test_scored_tokens_are_the_sampled_tokens(chat_models, style):
    from components.backends import hf

    _, (model, tok) = chat_models[style]
    gens, stats = hf.generate(model, tok, CHATS, 3, max_new_tokens=5, temperature=1.0, top_p=1.0, batch_size=4,
                              seed=1)
    assert len(gens) == 6 and stats["prompts_too_long"] == 0
    stops = set(hf.stop_token_ids(tok, model))
    for g in gens:
        prompt = CHATS[g.prompt_index]
        ids, start = hf.encode_scored(tok, prompt, g.completion, completion_ids=g.completion_ids)
        assert ids[:start] == hf.prompt_ids(tok, prompt)
        assert ids[start] == g.completion_ids[0]  # the first scored completion token is the first sampled one
        assert len(g.completion_ids) == g.num_tokens <= 5
        ended = g.completion_ids[-1] in stops
        assert g.finish_reason == ("stop" if ended else "length")
        assert ended or len(g.completion_ids) == 5
        assert not g.completion.startswith(" ") or tok.decode(g.completion_ids[:1]).startswith(" ")
    got = hf.sequence_logprobs(model, tok, [CHATS[g.prompt_index] for g in gens], [g.completion for g in gens],
                               completion_ids=[g.completion_ids for g in gens], batch_size=4, chunk=2)
    want = _naive_logprobs(model, tok, [CHATS[g.prompt_index] for g in gens], [g.completion for g in gens],
                           [g.completion_ids for g in gens])
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_non_canonical_ids_are_scored_as_sampled(chat_models, style):
    """A completion sampled as single characters decodes to a word whose canonical encoding has fewer tokens: the text
    re-encodes to other ids, and the log-prob of the sampled ids is not the log-prob of the re-encoded ones."""
    from components.backends import hf

    _, (model, tok) = chat_models[style]
    word = next(w for w in ("hotel", "pizza", "coffee", "the", "was")
                if len(tok(w, add_special_tokens=False)["input_ids"]) < len(w))
    canonical = tok(word, add_special_tokens=False)["input_ids"]
    spelled = [tok.convert_tokens_to_ids(ch) for ch in word] + [tok.eos_token_id]
    assert tok.decode(spelled, skip_special_tokens=True) == word and spelled[:-1] != canonical
    text_ids, start = hf.encode_scored(tok, CHAT, word)
    assert text_ids[start:start + len(canonical)] == canonical  # the text path re-encodes canonically
    by_ids = hf.sequence_logprobs(model, tok, [CHAT], [word], completion_ids=[spelled])
    by_text = hf.sequence_logprobs(model, tok, [CHAT], [word])
    np.testing.assert_allclose(by_ids, _naive_logprobs(model, tok, [CHAT], [word], [spelled]), atol=1e-5)
    assert abs(by_ids[0] - by_text[0]) > 1e-3


def test_chunked_logprobs_match_full_logits_on_plain_gpt2(tiny_policy):
    from components.backends.hf import load_causal_lm, sequence_logprobs

    model, tok = load_causal_lm(tiny_policy, device="cpu")
    prompts = ["review pizza :", "the coffee was", "hotel staff were very friendly and the room"]
    completions = [" great crust and sauce", " cold", " was fine but the ending was slow and bad"]
    for chunk in (1, 3, 128):
        got = sequence_logprobs(model, tok, prompts, completions, batch_size=2, chunk=chunk)
        np.testing.assert_allclose(got, _naive_logprobs(model, tok, prompts, completions), atol=1e-5)


@pytest.mark.parametrize("style", STYLES)
def test_chunked_logprobs_match_full_logits_on_chat(chat_models, style):
    from components.backends.hf import sequence_logprobs

    _, (model, tok) = chat_models[style]
    completions = ["The hotel was fine.", "Pizza good, coffee cold!"]
    for chunk in (1, 4, 128):
        got = sequence_logprobs(model, tok, CHATS, completions, batch_size=2, chunk=chunk)
        np.testing.assert_allclose(got, _naive_logprobs(model, tok, CHATS, completions), atol=1e-5)


def test_prompts_over_max_prompt_length_are_skipped(chat_models):
    from components.backends import hf

    _, (model, tok) = chat_models["qwen2"]
    lengths = [len(hf.prompt_ids(tok, p)) for p in CHATS]
    limit = min(lengths)
    gens, stats = hf.generate(model, tok, CHATS, 2, max_new_tokens=3, temperature=1.0, top_p=1.0, batch_size=4,
                              seed=0, max_prompt_length=limit)
    assert stats["prompts_too_long"] == sum(n > limit for n in lengths) == 1
    assert {g.prompt_index for g in gens} == {lengths.index(limit)}


@pytest.mark.parametrize("style", STYLES)
def test_dtype_setting_loads_bf16_or_fp32(tmp_path, style):
    import torch

    from components.backends.hf import load_causal_lm, torch_dtype
    from components.toy.chat_models import build_chat_lm

    path = str(build_chat_lm(style, tmp_path / "bf16", dtype="bfloat16"))
    assert load_causal_lm(path, device="cpu", dtype="bfloat16")[0].dtype == torch.bfloat16
    assert load_causal_lm(path, device="cpu", dtype="auto")[0].dtype == torch.float32  # auto on CPU
    assert torch_dtype("auto", "cuda") == torch.bfloat16 and torch_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match=r"models\.dtype"):
        torch_dtype("int8", "cpu")


def _chat_prompts_table():
    import pyarrow as pa

    from components import chat

    return pa.table({"prompt_id": ["p0", "p1"], **chat.prompt_columns(CHATS), "source": ["s", "s"],
                     "split": ["train", "train"]})


def test_generate_stage_writes_chat_rollouts_and_counts(chat_models, stage_inputs):
    from components.backends.models import Models
    from components.config import GenerateConfig
    from components.contract import Backends, Seeds
    from components.stages import generate

    path, _ = chat_models["llama3"]
    inputs = stage_inputs(prompts=_chat_prompts_table(), policy=path)
    cfg = GenerateConfig(samples_per_prompt=2, max_new_tokens=4, batch_size=4)
    result = generate.run(cfg, inputs, backends=Backends(models=Models(inputs, generate=cfg)),
                          seed=Seeds(0, 0, "generate"))
    from components.schemas import conform

    table, m = conform(result.outputs["rollouts"].table, "rollouts", "test"), result.metrics
    assert table.num_rows == 4 and m["generate/prompts_too_long"] == 0
    assert [x[-1]["content"] for x in table["messages"].to_pylist()] == [CHATS[0][-1]["content"]] * 2 + [
        CHATS[1][-1]["content"]] * 2
    reasons, ids = table["finish_reason"].to_pylist(), table["completion_ids"].to_pylist()
    assert m["generate/truncated"] == reasons.count("length") and all(len(k) == n for k, n in
                                                                      zip(ids, table["num_tokens"].to_pylist()))
    with pytest.raises(ValueError, match=r"generate\.max_prompt_length=3"):
        generate.run(cfg.model_copy(update={"max_prompt_length": 3}), inputs,
                     backends=Backends(models=Models(inputs, generate=cfg)), seed=Seeds(0, 0, "generate"))


def test_vllm_outputs_become_generations(chat_models):
    """vLLM's CompletionOutput (token_ids incl. the stop token, finish_reason) maps onto hf's Generation."""
    from components.backends import hf
    from components.backends.vllm_backend import as_generation, sampling_args

    _, (model, tok) = chat_models["qwen2"]
    stops = hf.stop_token_ids(tok, model)
    head, word = hf.prompt_ids(tok, CHAT), tok("fine", add_special_tokens=False)["input_ids"]
    stopped = as_generation(0, 1, tok, CHAT, head, [*word, stops[1]], "stop", stops)
    assert (stopped.completion_ids, stopped.num_tokens, stopped.finish_reason) == ([*word, stops[1]], len(word) + 1,
                                                                                   "stop")
    assert stopped.completion == "fine"  # a chat completion: no space forced in front
    cut = as_generation(0, 0, tok, CHAT, head, word, "length", stops)
    assert (cut.completion_ids, cut.num_tokens, cut.finish_reason) == (word, len(word), "length")
    req = sampling_args(1, 2, max_new_tokens=4, temperature=1.0, top_p=1.0, seed=0, eos_id=stops,
                        forbidden=hf.forbidden_token_ids(tok, stops))[0]
    assert req["stop_token_ids"] == stops and req["logit_bias"] is None  # Qwen's pad is a stop id, not forbidden
