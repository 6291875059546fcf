"""Judge backends against real models: the local HF judge, and the OpenAI-compatible HTTP judge against a real
`transformers serve` server (transformers' own OpenAI-compatible FastAPI server, `transformers[serving]`: it
needs the `openai` package, which is in the `dev` extra) running a tiny local model offline.

Why that server: it is the real OpenAI-compatible stack of the library we already depend on, it serves any
local `save_pretrained` directory without a hub, and /v1/chat/completions works on CPU. The test model is a
2-layer GPT-2 whose weights are set so it always answers "[[ A ]]": a judge with total position bias, which
both-order judging must turn into "inconsistent" for every pair, never a label.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from components.judge import JudgeRunner

PAIRS = (["p0", "p1"], ["review pizza :", "review coffee :"], [" great pizza .", " bad coffee ."],
         [" bad pizza .", " great coffee ."])


@pytest.fixture(scope="module")
def always_a(tmp_path_factory):
    """A tiny causal LM (+ word-level tokenizer with a chat template) that answers "[[ A ]]" to everything: its next
    token depends only on the current one ("[[" -> "A" -> "]]" -> eos, anything else -> "[[")."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    out = tmp_path_factory.mktemp("always_a")
    words = ["A", "B", "tie", "[[", "]]", "review", "pizza", "coffee", "great", "bad", ".", ":", "Response",
             "Answer", "Which", "better", "Verdict"]
    vocab = {t: i for i, t in enumerate(["<pad>", "<unk>", "<eos>", *words])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>")
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tok.save_pretrained(str(out))
    n = 32
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(vocab), n_layer=2, n_embd=n, n_head=2, n_positions=512,
                                       eos_token_id=vocab["<eos>"], pad_token_id=vocab["<pad>"],
                                       tie_word_embeddings=False))
    nxt = {vocab["[["]: vocab["A"], vocab["A"]: vocab["]]"], vocab["]]"]: vocab["<eos>"]}
    with torch.no_grad():  # blocks add nothing, no positions: hidden = layernorm(one-hot of the current token)
        for name, p in model.named_parameters():
            if "c_proj" in name or name.startswith("transformer.wpe"):
                p.zero_()
        model.transformer.wte.weight.copy_(torch.eye(len(vocab), n))
        hidden = torch.nn.functional.layer_norm(torch.eye(len(vocab), n), (n,))
        head = torch.zeros(len(vocab), n)
        for t in range(len(vocab)):
            head[nxt.get(t, vocab["[["])] += 10 * hidden[t]
        model.lm_head.weight.copy_(head)
    model.save_pretrained(str(out))
    return str(out)


def test_hf_judge_catches_position_bias(always_a, tmp_path):
    from components.backends.judge_hf import HFJudge

    runner = JudgeRunner(HFJudge(always_a), budget=10, cache_path=tmp_path / "c.jsonl")
    assert runner.judge_pairs(*PAIRS) == ["inconsistent", "inconsistent"]
    assert [t["verdict"] for t in runner.transcript] == ["A"] * 4 and runner.calls == 4
    assert all(t["raw"].startswith("logp A=") and " tie=" in t["raw"] for t in runner.transcript)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(always_a, tmp_path_factory):
    """`transformers serve <tiny model dir>` on a free local port; yields the base URL."""
    import httpx

    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    cli = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with log.open("w") as fh:
        proc = subprocess.Popen([str(cli), "serve", always_a, "--host", "127.0.0.1", "--port", str(port),
                                 "--device", "cpu"], stdout=fh, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}/v1"
    body = {"model": always_a, "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    deadline = time.monotonic() + 240
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"transformers serve exited {proc.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.post(f"{base}/chat/completions", json=body, timeout=30).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"transformers serve not ready in 240 s:\n{log.read_text()[-2000:]}")
            time.sleep(1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_openai_judge_against_real_server(always_a, served, tmp_path, monkeypatch):
    from components.backends.judge_base import Rubric
    from components.backends.judge_openai import OpenAIJudge

    monkeypatch.setenv("ALIGNLOOP_TEST_JUDGE_KEY", "sk-do-not-log-me")
    cache = tmp_path / "cache.jsonl"
    judge = OpenAIJudge(served, always_a, api_key_env="ALIGNLOOP_TEST_JUDGE_KEY", max_tokens=8, timeout_s=120)
    runner = JudgeRunner(judge, budget=10, concurrency=2, cache_path=cache)
    assert runner.judge_pairs(*PAIRS) == ["inconsistent", "inconsistent"]
    assert runner.calls == 4 and [t["verdict"] for t in runner.transcript] == ["A"] * 4, runner.transcript
    assert all(t["tokens"] > 0 and t["latency_s"] > 0 and t["error"] is None for t in runner.transcript)
    assert runner.stats()["label/judge_tokens"] == sum(t["tokens"] for t in runner.transcript)
    assert "sk-do-not-log-me" not in cache.read_text() + repr(runner.transcript)
    again = JudgeRunner(judge, budget=10, cache_path=cache)
    assert again.judge_pairs(*PAIRS) == ["inconsistent", "inconsistent"] and again.calls == 0
    edited = tmp_path / "rubric.md"  # an edited rubric (its content hash is in the key) pays again
    edited.write_text(Rubric.load().template.replace("concise", "brief"))
    judge.rubric = Rubric.load(str(edited))
    bumped = JudgeRunner(judge, budget=10, cache_path=cache)
    bumped.judge_pairs(*PAIRS)
    assert bumped.calls == 4 and bumped.rubric_sha256 != runner.rubric_sha256


def test_openai_judge_retries_then_reports_transport_errors():
    from components.backends.judge_openai import OpenAIJudge

    judge = OpenAIJudge(f"http://127.0.0.1:{_free_port()}/v1", "m", timeout_s=5)
    runner = JudgeRunner(judge, budget=10, max_retries=2, backoff_s=0.01)
    assert runner.judge_pairs(*PAIRS) == ["error", "error"]
    assert runner.stats()["label/judge_errors/transport"] == 4 and all(t["attempts"] == 3 for t in runner.transcript)
    assert runner.cache.entries == {}
