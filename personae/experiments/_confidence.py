"""Confidence from a constrained choice: which option was picked and a probability per option.

The request constrains the output to one option letter and asks for top-k logprobs; the first
generated token's alternatives give each letter's log-probability (letters missing from the top k
get the smallest logprob seen, an upper bound on theirs), renormalised over the options. Engines
such as llama.cpp and vLLM report the model's distribution before the grammar, which is what a
confidence should be. Without logprobs (scripted backends, some servers) the picked option gets
probability 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from personae.backends import GenerationResult


@dataclass(frozen=True, slots=True)
class Answer:
    """One constrained answer.

    Attributes:
        choice: Index of the picked option, or None when the output named no option.
        probs: Probability of each option (sums to 1).
        from_logprobs: Whether `probs` came from logprobs (False: one-hot or uniform).
    """

    choice: int | None
    probs: tuple[float, ...]
    from_logprobs: bool = False

    def p(self, index: int) -> float:
        """Probability of option `index`."""
        return self.probs[index]

    @property
    def confidence(self) -> float:
        """Probability of the picked option (0 when none was picked)."""
        return self.probs[self.choice] if self.choice is not None else 0.0

    def correct(self, gold: int) -> bool:
        """Whether the picked option is `gold`."""
        return self.choice == gold


def _key(token: str) -> str:
    return token.strip().lstrip("(").strip().upper()


def parse_choice(text: str, letters: Sequence[str]) -> int | None:
    """Index of the option letter `text` names ("B", " B", "(B)", "b) ..."), or None."""
    key = _key(text)[:1]
    return letters.index(key) if key in letters else None


def read_answer(result: GenerationResult, letters: Sequence[str]) -> Answer:
    """The picked option and per-option probabilities of a constrained choice result."""
    choice = parse_choice(result.text, letters)
    first = next((t for t in result.logprobs or () if t.token.strip()), None)
    if first is not None:
        scores: dict[str, float] = {}
        alternatives = dict(first.top)
        alternatives.setdefault(first.token, first.logprob)
        for token, logprob in alternatives.items():
            key = _key(token)
            if key in letters:
                scores[key] = max(scores.get(key, -math.inf), logprob)
        if scores:
            floor = min(alternatives.values())
            logs = [scores.get(ch, floor) for ch in letters]
            top = max(logs)
            weights = [math.exp(v - top) for v in logs]
            total = sum(weights)
            return Answer(choice, tuple(w / total for w in weights), True)
    n = len(letters)
    if choice is None:
        return Answer(None, tuple(1.0 / n for _ in letters))
    return Answer(choice, tuple(1.0 if i == choice else 0.0 for i in range(n)))
