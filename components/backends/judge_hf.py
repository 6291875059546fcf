"""A local Hugging Face causal LM as a pairwise judge: which verdict token is more likely after the rubric?

    label.judge: {backend: hf, model: path/or/hub-id}

The rubric (components.judge.RUBRIC) is filled with the prompt and both responses, and the judge's verdict is
the more likely continuation, " A" or " B", by log π(verdict | rubric) (components.backends.hf.sequence_logprobs,
no eos appended). No text is sampled, so the answer is deterministic and never unparseable. Instruction-tuned
checkpoints judge best; any `from_pretrained` causal LM works.
"""

from __future__ import annotations

import threading

from components.backends.judge_base import RUBRIC, Answer


class HFJudge:
    def __init__(self, path: str, *, device: str | None = None):
        from components.backends.hf import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(path, device=device)
        self.name = f"hf:{path}"
        self._lock = threading.Lock()  # one forward at a time: the runner's threads share the model

    def ask(self, prompt: str, first: str, second: str) -> Answer:
        from components.backends.hf import sequence_logprobs

        text = RUBRIC.format(prompt=prompt, first=first, second=second)
        with self._lock:
            la, lb = sequence_logprobs(self.model, self.tokenizer, [text, text], [" A", " B"], add_eos=False)
        return Answer("A" if la >= lb else "B", f"logp A={la:.4f} B={lb:.4f}")
