"""The closed lists of the cognitive conceptualization diagram (CCD), as PATIENT-Ψ uses them:
Beck's core-belief items by category (helpless / unlovable / worthless) and the nine emotion
categories."""

from __future__ import annotations

from typing import Literal, get_args

CoreBeliefCategory = Literal["helpless", "unlovable", "worthless"]

#: Beck's core-belief items, by category (the CCD's closed lists).
CORE_BELIEFS: dict[str, tuple[str, ...]] = {
    "helpless": (
        "I am incompetent.",
        "I am helpless.",
        "I am powerless, weak, vulnerable.",
        "I am a victim.",
        "I am needy.",
        "I am trapped.",
        "I am out of control.",
        "I am a failure, loser.",
        "I am defective.",
    ),
    "unlovable": (
        "I am unlovable.",
        "I am unattractive.",
        "I am undesirable, unwanted.",
        "I am bound to be rejected.",
        "I am bound to be abandoned.",
        "I am bound to be alone.",
    ),
    "worthless": (
        "I am worthless, waste.",
        "I am immoral.",
        "I am bad - dangerous, toxic, evil.",
        "I don't deserve to live.",
    ),
}
CoreBeliefItem = Literal[
    "I am incompetent.",
    "I am helpless.",
    "I am powerless, weak, vulnerable.",
    "I am a victim.",
    "I am needy.",
    "I am trapped.",
    "I am out of control.",
    "I am a failure, loser.",
    "I am defective.",
    "I am unlovable.",
    "I am unattractive.",
    "I am undesirable, unwanted.",
    "I am bound to be rejected.",
    "I am bound to be abandoned.",
    "I am bound to be alone.",
    "I am worthless, waste.",
    "I am immoral.",
    "I am bad - dangerous, toxic, evil.",
    "I don't deserve to live.",
]
EmotionCategory = Literal[
    "sad/down/lonely/unhappy",
    "anxious/worried/fearful/scared/tense",
    "angry/mad/irritated/annoyed",
    "ashamed/humiliated/embarrassed",
    "disappointed",
    "jealous/envious",
    "guilty",
    "hurt",
    "suspicious",
]
#: The nine emotion categories.
EMOTIONS: tuple[str, ...] = get_args(EmotionCategory)
CATEGORIES: tuple[str, ...] = get_args(CoreBeliefCategory)
#: The closed lists of a CCD, by field.
CLOSED: dict[str, tuple[str, ...]] = {
    "core_belief_categories": CATEGORIES,
    "core_beliefs": get_args(CoreBeliefItem),
    "emotions": EMOTIONS,
}
