"""The action language of computer-use agents: one text line, `NAME ARG...`.

Each environment declares its actions (`Environment.actions`: `sh <command>` for the shell;
`click <ref>`, `fill <ref> <text>`, ... for a web page) and the agent loop adds its own three,
`LOOP_ACTIONS`: `done`, `fail <reason>` and `ask <question>`. Arguments are separated by one
space; the last one may hold spaces; an argument named `ref` is an element reference, `e`
followed by digits (`e12`).

- `parse_action(text, specs)` reads one line as an `Action`, or a `ParseError` whose message
  is shown to the agent as its next observation (it never raises).
- `action_grammar(specs)` is the same language as a `Grammar` for constrained decoding: one
  action line of bounded length (optionally ended by a newline), nothing else.
- `parse_output(text, specs, mode)` reads a model's whole reply: in `constrained` mode the reply
  is the action; in `free` mode the model writes its reasoning, then a line `ACTION: ...`, and
  the last such line is the action.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from personae.backends._grammar import CharClass, Grammar, Lit, Node, Ref, alt, rep, seq
from personae.environments._base import Action, ActionSpec

ActionMode = Literal["constrained", "free"]

#: The actions the agent loop understands itself (they end the episode).
LOOP_ACTIONS: Mapping[str, ActionSpec] = {
    "done": ActionSpec((), "say the task is finished"),
    "fail": ActionSpec(("reason",), "give up, saying why"),
    "ask": ActionSpec(("question",), "stop and ask the user a question"),
}
#: Characters allowed in the last argument (it may hold spaces) and in every other one.
MAX_LAST_ARG = 400
MAX_ARG = 200
#: The prefix of the action line in free-form replies.
ACTION_PREFIX = "ACTION:"

_REF = re.compile(r"e[0-9]{1,6}")
_ACTION_LINE = re.compile(r"^\s*\**\s*ACTION\s*\**\s*:\s*\**\s*(.*?)\s*\**\s*$", re.MULTILINE)
# No control character, no surrogate (xgrammar would take one UTF-8-encoded); and no space.
_ANY = CharClass(r"[^\x00-\x1F\x7F\uD800-\uDFFF]", r"[^\x00-\x1f\x7f\ud800-\udfff]")
_WORD = CharClass(r"[^ \x00-\x1F\x7F\uD800-\uDFFF]", r"[^ \x00-\x1f\x7f\ud800-\udfff]")


@dataclass(frozen=True, slots=True)
class ParseError:
    """Why a text is not an action; `message` is shown to the agent."""

    message: str


def with_loop_actions(specs: Mapping[str, ActionSpec]) -> dict[str, ActionSpec]:
    """An environment's actions plus `LOOP_ACTIONS` (the environment's first)."""
    return {**specs, **LOOP_ACTIONS}


def usage(name: str, spec: ActionSpec) -> str:
    """How an action is written: `fill <ref> <text>`."""
    return " ".join((name, *(f"<{a}>" for a in spec.args)))


def _is_ref(arg: str) -> bool:
    return arg == "ref"


def parse_action(text: str, specs: Mapping[str, ActionSpec]) -> Action | ParseError:
    """`text` (one line) as one of `specs`' actions, or why it is not one."""
    line = text.strip()
    names = ", ".join(usage(n, s) for n, s in specs.items())
    if not line:
        return ParseError(f"no action given; write one line, one of: {names}")
    if "\n" in line:
        return ParseError("an action is one line; write a single action")
    name, _, rest = line.partition(" ")
    spec = specs.get(name)
    if spec is None:
        return ParseError(f"unknown action {name[:40]!r}; the actions are: {names}")
    rest = rest.strip()
    if not spec.args:
        if rest:
            return ParseError(f"{name} takes no argument; write just `{name}`")
        return Action(name)
    parts = rest.split(None, len(spec.args) - 1) if rest else []
    if len(parts) < len(spec.args):
        return ParseError(f"{name} needs {len(spec.args)} argument(s): {usage(name, spec)}")
    for arg, value in zip(spec.args, parts, strict=True):
        if _is_ref(arg) and not _REF.fullmatch(value):
            return ParseError(f"{value[:40]!r} is not an element reference (e.g. e12)")
    return Action(name, tuple(parts))


def _argument(arg: str, last: bool) -> Node:
    if _is_ref(arg):
        return seq(Lit("e"), rep(CharClass("[0-9]", "[0-9]"), 1, 6))
    if last:
        return seq(_WORD, rep(_ANY, 0, MAX_LAST_ARG - 1))
    return rep(_WORD, 1, MAX_ARG)


def action_grammar(specs: Mapping[str, ActionSpec]) -> Grammar:
    """The grammar of one action line of `specs` (then, optionally, a newline).

    Every text it accepts parses with `parse_action` (after stripping), and is at most one
    name, `MAX_ARG` characters per argument and `MAX_LAST_ARG` for the last one long.
    """
    if not specs:
        raise ValueError("an action grammar needs at least one action")
    options: list[Node] = []
    rules: dict[str, Node] = {}
    for name, spec in specs.items():
        parts: list[Node] = [Lit(name)]
        for i, arg in enumerate(spec.args):
            parts += [Lit(" "), _argument(arg, i == len(spec.args) - 1)]
        rule = re.sub(r"[^A-Za-z0-9]+", "-", f"act-{name}")
        rules[rule] = seq(*parts)
        options.append(Ref(rule))
    return Grammar.of(seq(alt(*options), rep(Lit("\n"), 0, 1)), **rules)


def parse_output(
    text: str, specs: Mapping[str, ActionSpec], mode: ActionMode
) -> tuple[Action | ParseError, str]:
    """A model's reply as its action and its reasoning (free mode: the text before the last
    `ACTION:` line; constrained mode: none)."""
    if mode == "constrained":
        return parse_action(text, specs), ""
    found = list(_ACTION_LINE.finditer(text))
    if not found:
        return (
            ParseError(f"no line `{ACTION_PREFIX} ...` found; end your reply with one"),
            text.strip(),
        )
    last = found[-1]
    reasoning = text[: last.start()].strip()
    return parse_action(last.group(1), specs), reasoning
