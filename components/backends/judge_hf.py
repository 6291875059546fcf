"""A local Hugging Face causal LM as a pairwise judge: which verdict marker is more likely after the rubric?

    label.judge: {backend: hf, model: path/or/hub-id, rubric: configs/rubrics/toy.md}

The rubric (`label.judge.rubric`, components.backends.judge_base.Rubric; the system prompt, if any, first) is
filled with the prompt and both responses, and the judge's verdict is the most likely continuation among
" [[A]]", " [[B]]" and " [[tie]]", by log π(marker | rubric) (components.backends.hf.sequence_logprobs, no eos
appended). No text is sampled, so the answer is deterministic and always a verdict; the rubric should end where
the verdict is due (the shipped ones ask for the marker last). Instruction-tuned checkpoints judge best; any
`from_pretrained` causal LM works.
"""

from __future__ import annotations

import threading

from components.backends.judge_base import Answer, Rubric

MARKERS = (("A", " [[A]]"), ("B", " [[B]]"), ("tie", " [[tie]]"))


class HFJudge:
    def __init__(self, path: str, *, rubric: Rubric | None = None, device: str | None = None):
        from components.backends.hf import load_causal_lm

        self.model, self.tokenizer = load_causal_lm(path, device=device)
        self.rubric = rubric or Rubric.load()
        self.name = f"hf:{path}"
        self._lock = threading.Lock()  # one forward at a time: the runner's threads share the model

    def ask(self, prompt: str, first: str, second: str) -> Answer:
        from components.backends.hf import sequence_logprobs

        text = self.rubric.render(prompt, first, second)
        if self.rubric.system:
            text = f"{self.rubric.system}\n\n{text}"
        with self._lock:
            logp = sequence_logprobs(self.model, self.tokenizer, [text] * len(MARKERS), [m for _, m in MARKERS],
                                     add_eos=False)
        best = max(range(len(MARKERS)), key=lambda i: float(logp[i]))
        return Answer(MARKERS[best][0], "logp " + " ".join(f"{v}={float(lp):.4f}" for (v, _), lp in
                                                             zip(MARKERS, logp)))  # type: ignore[arg-type]
