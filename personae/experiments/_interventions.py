"""Intervention functions: named policies that rank test items for explanation.

A function receives one `ItemEstimate` per test item and a seeded `random.Random`, and returns a
score per item it is willing to explain (higher first). Items without a score are never explained.
For budget b over N items the first ⌊b·N⌋ ranked items are explained (`explained_at`). Register
your own with `@register_intervention("name")`; set `needs_student_post=True` when the function
peeks at the real student's answer *with* the explanation (it is then ranked in hindsight, after
every item's outcome is known).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from personae.registry import Registry, first_line


@dataclass(frozen=True, slots=True)
class ItemEstimate:
    """What an intervention function may look at for one item (one explanation style).

    Attributes:
        item_id: The item.
        index: Its position in the test set.
        teacher_confidence: The teacher's own probability of the gold answer.
        student_confidence: The real student's probability of its own answer (no explanation).
        student_p_gold: The real student's probability of the gold answer (no explanation).
        student_correct: Whether the real student answered correctly on its own.
        c_pre: The teacher's mental-model estimate ĉ_pre: probability that the student answers
            correctly without the explanation.
        c_post: The mental-model estimate ĉ_post: the same with the teacher's explanation.
        student_post_p_gold: The real student's probability of the gold answer with the
            explanation (hindsight; None unless the function needs it).
    """

    item_id: str
    index: int
    teacher_confidence: float
    student_confidence: float
    student_p_gold: float
    student_correct: bool
    c_pre: float
    c_post: float
    student_post_p_gold: float | None = None

    @property
    def utility(self) -> float:
        """The mental model's expected utility of explaining: ĉ_post - ĉ_pre."""
        return self.c_post - self.c_pre


Scorer = Callable[[Sequence[ItemEstimate], random.Random], Mapping[str, float]]


@dataclass(frozen=True, slots=True)
class Intervention:
    """A registered intervention function."""

    name: str
    scorer: Scorer
    needs_student_post: bool = False
    description: str = ""

    def rank(self, items: Sequence[ItemEstimate], rng: random.Random) -> list[tuple[str, float]]:
        """(item id, score) of the items this function would explain, best first; ties keep
        test-set order."""
        scores = self.scorer(items, rng)
        order = {e.item_id: e.index for e in items}
        ranked = [(i, float(s)) for i, s in scores.items() if i in order and not math.isnan(s)]
        return sorted(ranked, key=lambda pair: (-pair[1], order[pair[0]]))


INTERVENTIONS: Registry[Intervention] = Registry("intervention function")


def register_intervention(
    name: str, *, needs_student_post: bool = False
) -> Callable[[Scorer], Scorer]:
    """Decorator registering `scorer(items, rng) -> {item_id: score}` under `name`.

    Args:
        name: The name scenario files use.
        needs_student_post: The scorer reads `student_post_p_gold` (the real student with the
            explanation), so it can only rank once every item's outcome is known.
    """

    def decorate(scorer: Scorer) -> Scorer:
        doc = first_line(scorer.__doc__)
        INTERVENTIONS.add(name, Intervention(name, scorer, needs_student_post, doc), doc)
        return scorer

    return decorate


def intervention_names() -> list[str]:
    """Names of the registered intervention functions."""
    return INTERVENTIONS.names()


def get_intervention(name: str, *, where: str = "functions") -> Intervention:
    """The function registered as `name`; `UserError` with a suggestion if unknown."""
    return INTERVENTIONS.get(name, where=where)


def budget_items(n_items: int, budget: float) -> int:
    """⌊budget · n_items⌋, robust to float error (0.6 · 30 is 18, not 17)."""
    return min(n_items, math.floor(budget * n_items + 1e-9))


def explained_at(ranking: Sequence[tuple[str, float]], n_items: int, budget: float) -> set[str]:
    """The items explained at `budget`: the first ⌊budget · n_items⌋ of `ranking`."""
    return {item for item, _ in ranking[: budget_items(n_items, budget)]}


# -- the built-in functions ----------------------------------------------------------------


@register_intervention("random")
def _random(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Explain items in a random order."""
    return {e.item_id: rng.random() for e in items}


@register_intervention("teacher_confidence")
def _teacher_confidence(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Explain where the teacher is most confident of the right answer."""
    return {e.item_id: e.teacher_confidence for e in items}


@register_intervention("least_student_confidence")
def _least_student_confidence(
    items: Sequence[ItemEstimate], rng: random.Random
) -> Mapping[str, float]:
    """Explain where the real student is least confident of its own answer."""
    return {e.item_id: -e.student_confidence for e in items}


@register_intervention("expected_utility")
def _expected_utility(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Explain where the mental model predicts the largest gain, ĉ_post - ĉ_pre."""
    return {e.item_id: e.utility for e in items}


@register_intervention("pre_utility")
def _pre_utility(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Explain where the mental model predicts the student is least likely right alone."""
    return {e.item_id: -e.c_pre for e in items}


@register_intervention("post_utility")
def _post_utility(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Explain where the mental model predicts the student is most likely right if explained."""
    return {e.item_id: e.c_post for e in items}


@register_intervention("true_utility", needs_student_post=True)
def _true_utility(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Upper bound: the real student's gain in P(gold) from the explanation."""
    return {
        e.item_id: e.student_post_p_gold - e.student_p_gold
        for e in items
        if e.student_post_p_gold is not None
    }


@register_intervention("oracle")
def _oracle(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Explain exactly the items the real student gets wrong on its own."""
    return {e.item_id: -e.student_p_gold for e in items if not e.student_correct}


@register_intervention("misaligned")
def _misaligned(items: Sequence[ItemEstimate], rng: random.Random) -> Mapping[str, float]:
    """Expected utility reversed: explain where the explanation is predicted to hurt most."""
    return {e.item_id: -e.utility for e in items}
