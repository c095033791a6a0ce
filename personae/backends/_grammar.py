"""The language a bounded grammar accepts, as a small tree rendered two ways: GBNF (llama.cpp's
grammar format, which vLLM's xgrammar also reads) and a Python regular expression (the tests'
twin of the same language). `personae.backends._structured` builds these trees from JSON
schemas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Digits allowed in an integer (or a number's integer part) on a side with no bound.
DEFAULT_MAX_DIGITS = 15


@dataclass(frozen=True, slots=True)
class Lit:
    text: str


@dataclass(frozen=True, slots=True)
class CharClass:
    gbnf: str
    regex: str


@dataclass(frozen=True, slots=True)
class Seq:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Alt:
    options: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Rep:
    item: Node
    low: int
    high: int


@dataclass(frozen=True, slots=True)
class Ref:
    name: str


Node = Lit | CharClass | Seq | Alt | Rep | Ref

CAP = 10**DEFAULT_MAX_DIGITS - 1
# Longest run written as one `x{m,n}`; longer ones go in blocks (see `_Builder.repeat`).
BLOCK = 1000
EMPTY = Lit("")
DIGIT = CharClass("[0-9]", "[0-9]")
# One string character that needs no escape: not `"`, not `\`, not a control character. Not a
# surrogate either: xgrammar would take one UTF-8-encoded, and it decodes to three U+FFFD.
CHAR = CharClass(r'[^"\\\x7F\x00-\x1F\uD800-\uDFFF]', r'[^"\\\x00-\x1f\x7f\ud800-\udfff]')


def seq(*items: Node) -> Node:
    flat: list[Node] = []
    for item in items:
        for part in item.items if isinstance(item, Seq) else (item,):
            if isinstance(part, Lit) and flat and isinstance(flat[-1], Lit):
                flat[-1] = Lit(flat[-1].text + part.text)
            elif part != EMPTY:
                flat.append(part)
    if not flat:
        return EMPTY
    return flat[0] if len(flat) == 1 else Seq(tuple(flat))


def alt(*options: Node) -> Node:
    flat: list[Node] = []
    for option in options:
        for part in option.options if isinstance(option, Alt) else (option,):
            if part not in flat:
                flat.append(part)
    return flat[0] if len(flat) == 1 else Alt(tuple(flat))


def rep(item: Node, low: int, high: int) -> Node:
    if high == 0:
        return EMPTY
    if low == high == 1:
        return item
    if isinstance(item, Lit) and low == high:
        return Lit(item.text * low)
    return Rep(item, low, high)


def has_repetition(node: Node) -> bool:
    if isinstance(node, Rep):
        return True
    if isinstance(node, Seq):
        return any(has_repetition(item) for item in node.items)
    if isinstance(node, Alt):
        return any(has_repetition(option) for option in node.options)
    return False


def digits(first: int, last: int) -> Node:
    if first == last:
        return Lit(str(first))
    return CharClass(f"[{first}-{last}]", f"[{first}-{last}]")


# --- integer ranges --------------------------------------------------------------------


def same_length(low: str, high: str) -> list[Node]:
    """Alternatives matching the decimal numbers from `low` to `high`, both of one length."""
    if low == high:
        return [Lit(low)]
    if len(low) == 1:
        return [digits(int(low), int(high))]
    if low[0] == high[0]:
        return [seq(Lit(low[0]), alt(*same_length(low[1:], high[1:])))]
    rest = len(low) - 1
    first, last = int(low[0]), int(high[0])
    out: list[Node] = []
    tail: list[Node] = []
    if low[1:] != "0" * rest:
        out.append(seq(Lit(low[0]), alt(*same_length(low[1:], "9" * rest))))
        first += 1
    if high[1:] != "9" * rest:
        tail.append(seq(Lit(high[0]), alt(*same_length("0" * rest, high[1:]))))
        last -= 1
    if first <= last:
        out.append(seq(digits(first, last), rep(DIGIT, rest, rest)))
    return out + tail


def natural_range(low: int, high: int) -> list[Node]:
    """Alternatives matching the integers from `low` to `high` (0 <= low <= high)."""
    out: list[Node] = []
    shortest, longest = len(str(low)), len(str(high))
    n = shortest
    while n <= longest:
        start = low if n == shortest else 10 ** (n - 1)
        end = high if n == longest else 10**n - 1
        whole = end == 10**n - 1 and (start == 10 ** (n - 1) if n > 1 else start <= 1)
        m = n
        while whole and (m + 1 < longest or (m + 1 == longest and high == 10**longest - 1)):
            m += 1
        if whole and m > 1:
            # Whole digit counts in a row collapse into one repetition.
            if start == 0:
                out.append(Lit("0"))
            out.append(seq(CharClass("[1-9]", "[1-9]"), rep(DIGIT, n - 1, m - 1)))
            n = m + 1
            continue
        out.extend(same_length(str(start), str(end)))
        n += 1
    return out


def integer_range(low: int, high: int) -> Node:
    options: list[Node] = []
    if high >= 0:
        options.extend(natural_range(max(low, 0), high))
    if low < 0:
        options.append(seq(Lit("-"), alt(*natural_range(max(1, -high), -low))))
    return alt(*options)


# --- GBNF and regex rendering -----------------------------------------------------------


def gbnf_literal(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def gbnf(node: Node) -> str:
    if isinstance(node, Lit):
        return gbnf_literal(node.text)
    if isinstance(node, CharClass):
        return node.gbnf
    if isinstance(node, Ref):
        return node.name
    if isinstance(node, Seq):
        return " ".join(
            gbnf_atom(item) if isinstance(item, Alt) else gbnf(item) for item in node.items
        )
    if isinstance(node, Alt):
        return " | ".join(gbnf(option) for option in node.options)
    inner = gbnf_atom(node.item)
    if (node.low, node.high) == (0, 1):
        return inner + "?"
    if node.low == node.high:
        return f"{inner}{{{node.low}}}"
    return f"{inner}{{{node.low},{node.high}}}"


def gbnf_atom(node: Node) -> str:
    return f"({gbnf(node)})" if isinstance(node, Seq | Alt) else gbnf(node)


def regex(node: Node, rules: dict[str, Node]) -> str:
    if isinstance(node, Lit):
        return re.escape(node.text)
    if isinstance(node, CharClass):
        return node.regex
    if isinstance(node, Ref):
        return f"(?:{regex(rules[node.name], rules)})"
    if isinstance(node, Seq):
        return "".join(
            f"(?:{regex(item, rules)})" if isinstance(item, Alt) else regex(item, rules)
            for item in node.items
        )
    if isinstance(node, Alt):
        return "|".join(regex(option, rules) for option in node.options)
    quantifier = "?" if (node.low, node.high) == (0, 1) else f"{{{node.low},{node.high}}}"
    return f"(?:{regex(node.item, rules)}){quantifier}"


def references(node: Node) -> list[str]:
    if isinstance(node, Ref):
        return [node.name]
    if isinstance(node, Seq):
        return [name for item in node.items for name in references(item)]
    if isinstance(node, Alt):
        return [name for option in node.options for name in references(option)]
    if isinstance(node, Rep):
        return references(node.item)
    return []


@dataclass(frozen=True, slots=True)
class Grammar:
    """A whole grammar for constrained decoding: named rules, the first of them `root`.

    Engines render it per dialect: `gbnf()` for llama.cpp and vLLM (xgrammar reads GBNF), and
    `regex()` for checking a reply that no engine constrained (the scripted backend). Frozen
    and hashable, so it travels in a `GenerationRequest`.

    Attributes:
        rules: `(name, node)` pairs; `rules[0]` is the root rule.
    """

    rules: tuple[tuple[str, Node], ...]

    def __post_init__(self) -> None:
        if not self.rules or self.rules[0][0] != "root":
            raise ValueError("a grammar's first rule must be named 'root'")

    @classmethod
    def of(cls, root: Node, **rules: Node) -> Grammar:
        """The grammar with root rule `root` and the named `rules` it refers to."""
        return cls((("root", root), *rules.items()))

    def gbnf(self) -> str:
        """The grammar in GBNF, one rule per line."""
        return "".join(f"{name} ::= {gbnf(node)}\n" for name, node in self.rules)

    def regex(self) -> str:
        """The same language as a Python regular expression (use with `re.fullmatch`)."""
        return regex(self.rules[0][1], dict(self.rules))

    def matches(self, text: str) -> bool:
        """Whether `text` is in the language."""
        return _compiled_regex(self.regex()).fullmatch(text) is not None

    def shortest(self) -> str:
        """A shortest text of the language (the first of them, in rule order)."""
        return _shortest(self.rules[0][1], dict(self.rules))


def _shortest(node: Node, rules: dict[str, Node]) -> str:
    if isinstance(node, Lit):
        return node.text
    if isinstance(node, CharClass):
        return next(c for c in "a0x_-. " if re.fullmatch(node.regex, c))
    if isinstance(node, Ref):
        return _shortest(rules[node.name], rules)
    if isinstance(node, Seq):
        return "".join(_shortest(item, rules) for item in node.items)
    if isinstance(node, Alt):
        return min((_shortest(option, rules) for option in node.options), key=len)
    return _shortest(node.item, rules) * node.low


_REGEX_CACHE: dict[str, re.Pattern[str]] = {}


def _compiled_regex(pattern: str) -> re.Pattern[str]:
    if pattern not in _REGEX_CACHE:
        _REGEX_CACHE[pattern] = re.compile(pattern, re.DOTALL)
    return _REGEX_CACHE[pattern]
