"""A simulated student with known ground truth, for checking a teaching pipeline without a model.

`SimulatedStudentBackend` answers every call of a teaching run from probabilities you set: the
student answers item i correctly with probability `p_pre[i]` on its own and, when the teacher's
explanation argues for an answer, picks that answer with probability `p_post[i]` (so a correct
explanation makes it right with `p_post[i]`, a misleading one makes it wrong that often). Other
options share the rest evenly. Each answer is drawn with the call's seed and the logprobs report
exactly these probabilities, so confidences and utilities are known to the test.

The same backend can play the teacher: its own answer is right with `teacher_accuracy`, its
explanations are placeholder text (the teacher role appends the answer it argues for), and its
mental-model predictions of the student are the student's true probabilities, blurred by
`mental_model_noise` (standard deviation, deterministic per item) — a perfect theory of mind at 0.

Calls are told apart by their `step` and `item_id` tags (set by the teaching graph); the
explanation's answer is read from the prompt, as a real student would read it.
"""

from __future__ import annotations

import asyncio
import math
import random
import re
import time
from collections.abc import Iterable, Mapping
from typing import Any

from personae.agents._teaching import EXPLANATION_LABEL, Item
from personae.backends import (
    Backend,
    GenerationRequest,
    GenerationResult,
    TokenLogprob,
    register_backend,
)

Probability = float | Mapping[str, float]
_ARGUES = re.compile(r"answer is \(([A-Z])\)")


def _lookup(value: Probability, item_id: str, default: float) -> float:
    if isinstance(value, Mapping):
        return float(value.get(item_id, default))
    return float(value)


class SimulatedStudentBackend(Backend):
    """A student (and optionally a teacher) whose answer probabilities are set per item.

    Args:
        items: The items it may be asked about (more can be added with `add_items`); unknown
            items are answered uniformly at random.
        p_pre: P(correct) without an explanation: one number, or a mapping item id -> number
            (items missing from a mapping get 0.5).
        p_post: P(following the explanation's answer) with an explanation; same forms.
        p_demo: P(correct) on an unexplained item when earlier explained items are in the
            prompt as demonstrations (multi-turn); default: `p_pre`.
        teacher_accuracy: P(correct) of the teacher's own answer; same forms.
        mental_model_noise: Standard deviation of the noise on the teacher's simulated
            probabilities (0: the teacher knows the student exactly).
        seed: Seed of that noise.
        latency_s: Seconds each call takes (to test runs that are interrupted or slow).
    """

    backend_id = "simulated"
    render_mode = "transcript"

    def __init__(
        self,
        items: Iterable[Item] = (),
        *,
        p_pre: Probability = 0.5,
        p_post: Probability = 0.8,
        p_demo: Probability | None = None,
        teacher_accuracy: Probability = 0.9,
        mental_model_noise: float = 0.0,
        seed: int = 0,
        latency_s: float = 0.0,
    ) -> None:
        self.parallelism = 1024
        self.p_pre = p_pre
        self.p_post = p_post
        self.p_demo = p_demo
        self.teacher_accuracy = teacher_accuracy
        self.mental_model_noise = float(mental_model_noise)
        self.seed = seed
        self.latency_s = float(latency_s)
        self.items: dict[str, Item] = {}
        self.add_items(items)
        self.requests: list[GenerationRequest] = []

    def add_items(self, items: Iterable[Item]) -> None:
        """Make `items` known (the teaching runner adds the run's items itself)."""
        for item in items:
            self.items[item.id] = item

    # -- the student's probabilities ----------------------------------------------------------
    def _pre(self, item_id: str) -> float:
        return _lookup(self.p_pre, item_id, 0.5)

    def _post(self, item_id: str) -> float:
        return _lookup(self.p_post, item_id, 0.5)

    def _demo(self, item_id: str) -> float:
        return self._pre(item_id) if self.p_demo is None else _lookup(self.p_demo, item_id, 0.5)

    @staticmethod
    def _argued(request: GenerationRequest) -> int | None:
        text = request.rendered()
        at = text.rfind(EXPLANATION_LABEL)
        if at < 0:
            return None
        found = _ARGUES.findall(text[at:])
        return ord(found[0]) - ord("A") if found else None

    def distribution(self, request: GenerationRequest) -> list[float]:
        """The option probabilities this backend answers `request` with."""
        n = len(request.choices or ())
        step = str(request.tags.get("step", ""))
        item = self.items.get(str(request.tags.get("item_id")))
        if n == 0 or item is None or len(item.options) != n:
            return [1.0 / n] * n if n else []
        target, p = item.answer, 0.5
        if step in ("student_pre", "simulate_pre"):
            p = self._pre(item.id)
        elif step in ("student_post", "simulate_post"):
            argued = self._argued(request)
            target = item.answer if argued is None or argued >= n else argued
            p = self._post(item.id)
        elif step == "student_multi_turn":
            p = self._demo(item.id)
        elif step == "teacher_answer":
            p = _lookup(self.teacher_accuracy, item.id, 0.9)
        if step.startswith("simulate") and self.mental_model_noise > 0:
            rng = random.Random(f"{self.seed}|{item.id}|{step}|{target}")
            p += rng.gauss(0.0, self.mental_model_noise)
        p = min(1.0, max(0.0, p))
        rest = (1.0 - p) / (n - 1)
        return [p if i == target else rest for i in range(n)]

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        start = time.perf_counter()
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        self.requests.append(request)
        if not request.choices:
            item = request.tags.get("item_id", "?")
            text = f"A worked explanation of item {item}."
            return GenerationResult(text=text, completion_tokens=len(text.split()))
        probs = self.distribution(request)
        seed: Any = request.seed if request.seed is not None else request.rendered()
        rng = random.Random(f"{self.seed}|{seed}")
        pick = rng.choices(range(len(probs)), weights=probs)[0]
        logs = {c: math.log(max(p, 1e-12)) for c, p in zip(request.choices, probs, strict=True)}
        letter = request.choices[pick]
        return GenerationResult(
            text=letter,
            prompt_tokens=len(request.rendered().split()),
            completion_tokens=1,
            latency_s=time.perf_counter() - start,
            logprobs=(TokenLogprob(letter, logs[letter], logs),),
        )


@register_backend("simulated", options=lambda: SimulatedStudentBackend)
def _simulated(target: str | None, options: dict[str, Any]) -> Backend:
    """A simulated student (and teacher) with answer probabilities you set, for teaching runs."""
    return SimulatedStudentBackend(**options)
