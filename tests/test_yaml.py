"""Reading user YAML safely: every hostile file is one `UserError` line naming file and line."""

from __future__ import annotations

import codecs
from pathlib import Path

import pytest

from personae._yaml import MAX_DEPTH, load_yaml
from personae.errors import UserError
from personae.scenario import load_scenario

BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9 if prev else ['lol'] * 9)}]\n"
    for prev, name in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
)


def _error(tmp_path: Path, content: str | bytes, name: str = "f.yaml") -> str:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    with pytest.raises(UserError) as info:
        load_yaml(path, "scenario file")
    line = str(info.value)
    assert "\n" not in line and str(path) in line
    return line


def test_plain_yaml_with_anchors_and_merge_keys_loads(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  x: 3\nd: [*b]\n", encoding="utf-8")
    assert load_yaml(path) == {
        "base": {"x": 1, "y": 2},
        "c": {"x": 3, "y": 2},
        "d": [{"x": 1, "y": 2}],
    }


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.yaml"
    path.write_bytes(codecs.BOM_UTF8 + "name: café\n".encode())
    assert load_yaml(path) == {"name": "café"}


def test_duplicate_key_names_the_key_and_both_lines(tmp_path: Path) -> None:
    line = _error(tmp_path, "agents:\n  a: {role: x}\n  b: {role: y}\n  a: {role: z}\n")
    assert "duplicate key 'a'" in line and "f.yaml:4" in line and "first at line 2" in line


def test_duplicate_top_level_key(tmp_path: Path) -> None:
    assert "duplicate key 'seed'" in _error(tmp_path, "seed: 1\nname: x\nseed: 2\n")


def test_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    assert "alias" in _error(
        tmp_path, f"name: x\nbackend_options:\n  {BOMB.replace(chr(10), chr(10) + '  ')}"
    )


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    assert "recursive alias" in _error(tmp_path, "a: &a [1, *a]\n")


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused(tmp_path: Path, levels: int) -> None:
    assert "nested more than" in _error(tmp_path, "a: " + "[" * levels + "]" * levels + "\n")


def test_nesting_at_the_limit_loads(tmp_path: Path) -> None:
    path = tmp_path / "deep.yaml"
    depth = MAX_DEPTH - 1  # the top-level mapping is one level
    path.write_text("a: " + "[" * depth + "]" * depth + "\n", encoding="utf-8")
    assert isinstance(load_yaml(path), dict)


@pytest.mark.parametrize(
    ("codec", "bom", "expected"),
    [
        ("utf-16-le", codecs.BOM_UTF16_LE, "UTF-16"),
        ("utf-16-be", codecs.BOM_UTF16_BE, "UTF-16"),
        ("utf-32-le", codecs.BOM_UTF32_LE, "UTF-32"),
        ("utf-16-le", b"", "NUL bytes"),
    ],
)
def test_utf16_and_utf32_are_named(tmp_path: Path, codec: str, bom: bytes, expected: str) -> None:
    assert expected in _error(tmp_path, bom + "name: x\n".encode(codec))


def test_latin1_names_the_line_and_byte(tmp_path: Path) -> None:
    line = _error(tmp_path, "name: x\ndescription: caf\xe9\n".encode("latin-1"))
    assert "not UTF-8" in line and "f.yaml:2" in line and "0xE9" in line


def test_control_character_is_refused(tmp_path: Path) -> None:
    assert "U+0007" in _error(tmp_path, "name: x\ndescription: a\x07b\n")


def test_python_tags_are_not_constructed(tmp_path: Path) -> None:
    assert "malformed YAML" in _error(tmp_path, "a: !!python/object/apply:os.getcwd []\n")


def test_two_documents_are_refused(tmp_path: Path) -> None:
    assert "more than one document" in _error(tmp_path, "a: 1\n---\nb: 2\n")


def test_a_directory_is_not_a_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a file"):
        load_yaml(tmp_path, "scenario file")


def test_scenario_and_persona_files_go_through_the_safe_loader(tmp_path: Path) -> None:
    persona = tmp_path / "client.yaml"
    persona.write_text("id: c\nname: A\nname: B\n", encoding="utf-8")
    scenario = tmp_path / "s.yaml"
    scenario.write_text(
        "name: s\nbackend: scripted\nagents:\n"
        "  counselor: {role: counselor, persona: client.yaml}\n"
        "  client: {role: client, persona: client.yaml}\n",
        encoding="utf-8",
    )
    from personae.scenario import plan_episodes

    with pytest.raises(UserError, match=r"client\.yaml:3: duplicate key 'name'"):
        plan_episodes(load_scenario(scenario))
