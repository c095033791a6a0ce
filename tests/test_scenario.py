"""Scenario files: loading, validation errors a user can act on, and the episode plan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import CBT_COUNSELOR, GRIEF_CLIENT, N_CLIENTS, PERSONAS, base_scenario

from personae.agents import ClientProfile, ConversationStyle, CounselorPersona
from personae.errors import UserError
from personae.scenario import load_scenario, plan_episodes, resolve_scenario_path

STYLES = ["plain", "upset", "verbose", "reserved", "tangent", "pleasing"]


def _error(path: Path) -> UserError:
    """The UserError raised while loading and planning `path`."""
    with pytest.raises(UserError) as info:
        plan_episodes(load_scenario(path))
    return info.value


# -- the shipped scenario -------------------------------------------------------------------


def test_shipped_counseling_scenario_loads() -> None:
    path = resolve_scenario_path("counseling_cbt")
    assert path.is_file() and path.name == "counseling_cbt.yaml"
    scenario = load_scenario(path)
    assert scenario.name == "counseling_cbt"
    assert scenario.graph.kind == "dyadic"
    assert scenario.graph.opener == "counselor"
    assert scenario.graph.max_turns == 12
    assert {n: a.role for n, a in scenario.agents.items()} == {
        "counselor": "counselor",
        "client": "client",
    }


def test_grid_expands_to_every_client_and_style() -> None:
    plans = plan_episodes(load_scenario(resolve_scenario_path("counseling_cbt")))
    assert N_CLIENTS == 11
    assert len(plans) == 11 * 6 == 66
    assert [p.index for p in plans] == list(range(66))
    combos = {(p.condition["client"]["persona"], p.condition["client"]["style"]) for p in plans}
    client_ids = {f.stem for f in (PERSONAS / "clients").glob("*.yaml")}
    assert combos == {(c, s) for c in client_ids for s in STYLES}
    for plan in plans:
        client = plan.personas["client"]
        counselor = plan.personas["counselor"]
        assert isinstance(client, ClientProfile) and isinstance(counselor, CounselorPersona)
        # the grid's style overrides the style written in the persona file
        assert client.style == ConversationStyle(plan.condition["client"]["style"])
        assert client.id == plan.condition["client"]["persona"]
        assert counselor.id == "cbt"
    ids = [p.episode_id for p in plans]
    assert len(set(ids)) == len(ids)


def test_episode_ids_are_stable_across_loads_and_limit_keeps_the_first() -> None:
    path = resolve_scenario_path("counseling_cbt")
    first = [p.episode_id for p in plan_episodes(load_scenario(path))]
    second = [p.episode_id for p in plan_episodes(load_scenario(path))]
    assert first == second
    limited = plan_episodes(load_scenario(path), limit=5)
    assert [p.episode_id for p in limited] == first[:5]
    assert len(plan_episodes(load_scenario(path), limit=500)) == 66


def test_episode_ids_change_with_the_seed_and_repeats_multiply(
    write_scenario: Callable[..., Path],
) -> None:
    grid = {"client.style": ["plain", "upset"]}
    base = plan_episodes(load_scenario(write_scenario(grid=grid)))
    reseeded = plan_episodes(load_scenario(write_scenario(grid=grid, seed=4)))
    repeated = plan_episodes(load_scenario(write_scenario(grid=grid, repeats=3)))
    capped = plan_episodes(load_scenario(write_scenario(grid=grid, repeats=3, episodes=4)))
    assert len(base) == 2 and len(repeated) == 6 and len(capped) == 4
    assert not {p.episode_id for p in base} & {p.episode_id for p in reseeded}
    assert len({p.episode_id for p in repeated}) == 6
    assert [p.repeat for p in repeated] == [0, 0, 1, 1, 2, 2]
    assert [p.episode_id for p in repeated[:2]] == [p.episode_id for p in base]


def test_inline_persona_mapping(
    write_scenario: Callable[..., Path], client_profile: ClientProfile
) -> None:
    inline = client_profile.model_dump(mode="json") | {"id": "ivy_inline", "name": "Ivy Inline"}
    path = write_scenario(
        agents={
            "counselor": {"role": "counselor", "persona": str(CBT_COUNSELOR)},
            "client": {"role": "client", "persona": inline},
        },
        grid={"client.style": ["reserved"]},
    )
    (plan,) = plan_episodes(load_scenario(path))
    client = plan.personas["client"]
    assert isinstance(client, ClientProfile)
    assert client.name == "Ivy Inline"
    assert client.style is ConversationStyle.reserved
    assert plan.condition["client"] == {"persona": "ivy_inline", "style": "reserved"}


def test_relative_persona_paths_resolve_against_the_scenario_file(
    tmp_path: Path, write_scenario: Callable[..., Path]
) -> None:
    folder = tmp_path / "people"
    folder.mkdir()
    (folder / "c.yaml").write_text(CBT_COUNSELOR.read_text())
    (folder / "p.yaml").write_text(GRIEF_CLIENT.read_text())
    path = write_scenario(
        agents={
            "counselor": {"role": "counselor", "persona": "people/c.yaml"},
            "client": {"role": "client", "persona": "people/p.yaml"},
        }
    )
    (plan,) = plan_episodes(load_scenario(path))
    assert plan.personas["client"].id == "margaret_grief"  # type: ignore[attr-defined]


# -- errors ---------------------------------------------------------------------------------


def test_unknown_graph_key_suggests_the_right_one(write_scenario: Callable[..., Path]) -> None:
    data = base_scenario()
    data["graph"] = {"kind": "dyadic", "max_turn": 4}
    path = write_scenario(data)
    err = _error(path)
    line = str(err)
    assert "\n" not in line
    assert str(path) in line
    assert "graph.max_turn" in line
    assert "did you mean 'max_turns'" in line


def test_unknown_top_level_key_suggests_the_right_one(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario(seeds=3)
    line = str(_error(path))
    assert "'seeds'" in line and "did you mean 'seed'" in line


def test_unknown_sampling_key_suggests_the_right_one(write_scenario: Callable[..., Path]) -> None:
    data = base_scenario()
    data["agents"]["counselor"]["sampling"] = {"temprature": 0.5}
    line = str(_error(write_scenario(data)))
    assert "agents.counselor.sampling.temprature" in line
    assert "did you mean 'temperature'" in line


def test_misspelt_persona_key_suggests_persona(write_scenario: Callable[..., Path]) -> None:
    data = base_scenario()
    data["agents"]["client"] = {"role": "client", "personna": str(GRIEF_CLIENT)}
    path = write_scenario(data)
    line = str(_error(path))
    assert str(path) in line
    # the user's actual mistake is the typo, so that is what the one-line error must name
    assert "agents.client.personna" in line
    assert "did you mean 'persona'" in line


def test_malformed_yaml_names_file_and_line(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario("name: t\nbackend: scripted\ngraph:\n\tkind: dyadic\nagents: {}\n")
    line = str(_error(path))
    assert f"{path}:4" in line
    assert "YAML" in line


def test_yaml_that_is_not_a_mapping_is_refused(write_scenario: Callable[..., Path]) -> None:
    line = str(_error(write_scenario("- just\n- a list\n")))
    assert "mapping" in line


def test_missing_scenario_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found") as info:
        load_scenario(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)


def test_unknown_role_suggests_a_registered_one(write_scenario: Callable[..., Path]) -> None:
    data = base_scenario()
    data["agents"]["counselor"]["role"] = "counsellor"
    line = str(_error(write_scenario(data)))
    assert "agents.counselor.role" in line
    assert "'counsellor'" in line and "did you mean 'counselor'" in line


def test_missing_persona_file_names_the_path(
    write_scenario: Callable[..., Path], tmp_path: Path
) -> None:
    data = base_scenario()
    data["agents"]["client"]["persona"] = "personas/ghost.yaml"
    err = _error(write_scenario(data))
    assert str(tmp_path / "personas" / "ghost.yaml") in str(err)
    assert "not found" in str(err)


def test_persona_glob_matching_nothing(write_scenario: Callable[..., Path]) -> None:
    line = str(_error(write_scenario(grid={"client.persona": "nowhere/*.yaml"})))
    assert "nowhere/*.yaml" in line


def test_bad_persona_field_value_via_grid(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario(grid={"client.style": ["plain", "angry"]})
    scenario = load_scenario(path)  # the file itself is fine ...
    with pytest.raises(UserError) as info:
        plan_episodes(scenario)  # ... the bad value is caught before any episode runs
    assert "style" in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_grid_value_error_points_at_the_grid_key(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario(grid={"client.style": ["angry"]})
    line = str(_error(path))
    # 'angry' is written in the scenario's grid, not in the persona file, so the error must
    # lead the user there
    assert "client.style" in line
    assert str(path) in line


def test_bad_grid_key_names_the_scenario_file(write_scenario: Callable[..., Path]) -> None:
    path = write_scenario(grid={"patient.style": ["plain"]})
    line = str(_error(path))
    assert "patient.style" in line
    assert str(path) in line


def test_dyadic_graph_needs_exactly_two_agents(write_scenario: Callable[..., Path]) -> None:
    data = base_scenario()
    data["agents"]["observer"] = {"role": "client", "persona": str(GRIEF_CLIENT)}
    line = str(_error(write_scenario(data)))
    assert "2 agents" in line and "got 3" in line


def test_opener_must_be_an_agent(write_scenario: Callable[..., Path]) -> None:
    data = base_scenario()
    data["graph"]["opener"] = "therapist"
    line = str(_error(write_scenario(data)))
    assert "graph.opener" in line and "'therapist'" in line
    assert "counselor" in line and "client" in line


def test_missing_required_key(write_scenario: Callable[..., Path]) -> None:
    data = base_scenario()
    del data["agents"]
    line = str(_error(write_scenario(data)))
    assert "missing required key 'agents'" in line
