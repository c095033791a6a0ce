"""Experiments: teacher-student budget sweeps with theory-of-mind intervention functions.

A teacher decides which test items to explain to a student under a budget (the fraction of items
it may explain), how to explain (personalized to the student or not), and whether explanations help
later unexplained items, after Saha, Hase and Bansal (2023), "Can Language Models Teach Weaker
Agents? Teacher Explanations Improve Students via Theory of Mind". Start with
`run_teaching("teaching_budget")` or `personae experiment teaching teaching_budget`; re-score a
finished run's database with `teaching_report(db, budgets=..., functions=...)`.
"""

from personae.agents._teaching import Answer, Item, read_answer
from personae.experiments._data import load_items, numeric_options, record_to_item
from personae.experiments._generated import generated_items
from personae.experiments._interventions import (
    Intervention,
    ItemEstimate,
    budget_items,
    explained_at,
    get_intervention,
    intervention_names,
    register_intervention,
)
from personae.experiments._plot import save_plot, teaching_figure
from personae.experiments._report import teaching_report
from personae.experiments._runner import TeachingResult, arun_teaching, run_teaching
from personae.experiments._scoring import (
    Curve,
    MissingOutcomes,
    MultiTurnRow,
    StyleOutcomes,
    mean_ci,
    score_curves,
)
from personae.experiments._simulated import SimulatedStudentBackend
from personae.experiments._spec import TeachingScenario, load_data, load_teaching_scenario
from personae.experiments._study import TeachingStudy, multi_turn_passes
from personae.graphs._teaching import build_item_graph

__all__ = [
    "Answer",
    "Curve",
    "Intervention",
    "Item",
    "ItemEstimate",
    "MissingOutcomes",
    "MultiTurnRow",
    "SimulatedStudentBackend",
    "StyleOutcomes",
    "TeachingResult",
    "TeachingScenario",
    "TeachingStudy",
    "arun_teaching",
    "budget_items",
    "build_item_graph",
    "explained_at",
    "generated_items",
    "get_intervention",
    "intervention_names",
    "load_data",
    "load_items",
    "load_teaching_scenario",
    "mean_ci",
    "multi_turn_passes",
    "numeric_options",
    "read_answer",
    "record_to_item",
    "register_intervention",
    "run_teaching",
    "save_plot",
    "score_curves",
    "teaching_figure",
    "teaching_report",
]
