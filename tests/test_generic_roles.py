"""Generic roles: a three-party scenario written in YAML only (three `persona` agents with extra
fields, a `group` graph) runs on `scripted`; every agent's prompt holds its own persona with the
extra fields in file order, and speaker labels come from the agent names."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from conftest import db_rows

import personae
from personae.agents import Persona, PersonaAgent, default_label
from personae.export import sft_conversations
from personae.replay import verify_run

WriteScenario = Callable[..., Path]

# Written as a researcher would: no Python anywhere, extra fields in no particular order.
THREE_PARTY = """\
name: flat_viewing
backend: scripted
seed: 11
graph:
  kind: group
  policy: round_robin
  max_turns: 6
agents:
  seller:
    role: persona
    persona:
      id: seller_rita
      name: Rita
      description: Is selling her late mother's flat.
      stance: will not go below 310k
      age: 58
      goals: [sell before winter]
      private_notes: Already has a lower offer in writing.
  buyer:
    role: persona
    persona:
      id: buyer_tom
      description: A first-time buyer.
      zodiac: Virgo
      budget: {max: 300k, deposit: 30k}
      age: 29
  buyer_advisor:
    role: persona
    persona:
      id: advisor_li
      name: Li
      speaking_style: brief and dry
      years_of_practice: 12
      specialities: [surveys, leases]
"""


def test_yaml_only_three_party_scenario_runs_with_extra_fields_in_file_order(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    result = personae.run(write_scenario(THREE_PARTY), db=db)
    assert (result.episodes, result.failed, result.turns) == (1, 0, 6)
    turns = db_rows(db, "SELECT agent, role FROM turns ORDER BY idx")
    assert [t["agent"] for t in turns] == ["seller", "buyer", "buyer_advisor"] * 2
    assert {t["role"] for t in turns} == {"persona"}
    first = {
        c["agent"]: c["prompt"]
        for c in db_rows(db, "SELECT agent, prompt FROM llm_calls WHERE turn_idx < 3")
    }
    seller = first["seller"]
    header = seller.split("\n\n")[1]
    assert header.splitlines() == [
        "Seller is Rita.",
        "Is selling her late mother's flat.",
        "Stance: will not go below 310k",
        "Age: 58",
        "Rita's goals: sell before winter",
        "Private notes (only Rita knows them): Already has a lower offer in writing.",
        "Rita says at most 4 sentences per turn.",
    ]
    buyer_header = first["buyer"].split("\n\n")[1].splitlines()
    assert buyer_header[:5] == [
        "About Buyer:",
        "A first-time buyer.",
        "Zodiac: Virgo",
        "Budget: max: 300k; deposit: 30k",
        "Age: 29",
    ]
    advisor = first["buyer_advisor"]
    assert "Buyer Advisor is Li." in advisor
    assert "Years of practice: 12\nSpecialities: surveys; leases\nHow Li talks: brief and dry" in (
        advisor
    )
    # each persona is private: nobody else's prompt holds it
    assert "lower offer" not in first["buyer"] + advisor
    assert "Virgo" not in seller + advisor


def test_default_labels_come_from_agent_names(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    assert default_label("buyer_advisor") == "Buyer Advisor"
    assert default_label("co-host") == "Co Host"
    db = tmp_path / "run.db"
    personae.run(write_scenario(THREE_PARTY), db=db)
    calls = db_rows(db, "SELECT agent, prompt, params_json FROM llm_calls ORDER BY turn_idx")
    last = calls[-1]
    assert last["agent"] == "buyer_advisor"
    assert last["prompt"].endswith("\nBuyer Advisor:")
    assert "Seller: This is seller, turn 3.\nBuyer: This is buyer, turn 4.\n" in last["prompt"]
    stops = json.loads(last["params_json"])["stop"]
    assert {"\nSeller:", "\nBuyer:", "\nBuyer Advisor:"} <= set(stops)


def test_a_label_in_the_scenario_wins_over_the_name(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    text = THREE_PARTY.replace("  buyer_advisor:\n", "  buyer_advisor:\n    label: Mr Li\n")
    db = tmp_path / "run.db"
    personae.run(write_scenario(text), db=db)
    (call,) = db_rows(db, "SELECT prompt FROM llm_calls WHERE agent = 'buyer_advisor' LIMIT 1")
    assert call["prompt"].endswith("\nMr Li:") and "Mr Li is Li." in call["prompt"]


def test_export_and_replay_rebuild_the_extra_fields_in_file_order(
    write_scenario: WriteScenario, tmp_path: Path
) -> None:
    db = tmp_path / "run.db"
    personae.run(write_scenario(THREE_PARTY), db=db)
    records = {r["agent"]: r for r in sft_conversations(db, "persona")}
    system = records["seller"]["messages"][0]["content"]
    assert "Stance: will not go below 310k\nAge: 58\n" in system
    # three parties talk: chat prompts name the speaker of every other line
    assert records["seller"]["messages"][3] == {
        "role": "user",
        "content": "Buyer: This is buyer, turn 1.\nBuyer Advisor: This is buyer_advisor, turn 2.",
    }
    assert [r.identical for r in verify_run(db)] == [True]


def test_persona_keeps_extra_fields_in_the_order_given() -> None:
    data: dict[str, Any] = {"description": "x", "zeta": 1, "alpha": [1, 2], "mid": {"b": 1, "a": 2}}
    persona = Persona.model_validate(data)
    assert list(persona.model_extra or {}) == ["zeta", "alpha", "mid"]
    prompt = PersonaAgent("pat", persona).system_prompt()
    assert prompt.index("Zeta: 1") < prompt.index("Alpha: 1; 2") < prompt.index("Mid: b: 1; a: 2")
    # stored as JSON and read back (replay, export), the order holds
    again = Persona.model_validate(json.loads(json.dumps(persona.model_dump(mode="json"))))
    assert PersonaAgent("pat", again).system_prompt() == prompt
