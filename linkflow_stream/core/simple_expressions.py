"""The simplest JSONata expressions evaluated without the interpreter (ADR 0066).

Most transform and condition expressions are a field path, arithmetic or a comparison over one
(``nodes.a.n * 2``, ``input.status = 200``, ``{'n': input.n}``). jsonata-python evaluates each
through its general machinery (sequences, frames, entry and exit hooks on every step): 40-120 us
an evaluation on this machine, a fifth of the orchestrator's CPU on a five-transform run
(issue 13). ``simple_form`` turns such an expression, once, into a Python closure that takes a
few microseconds.

The closure answers only where its answer is certainly the interpreter's: every value it meets
must be of the plain kind it handles (a path through objects to a present, non-null value that
is not an array; numbers, strings and booleans where an operator takes them). Anything else
(an array, a missing field, a null, an operand of another type, an error) gives ``UNSURE``, and
the caller evaluates the expression with jsonata-python from the start. So the closure never
raises and never decides what an error or an undefined result would be. Arithmetic goes through
the library's own ``Utils.convert_number`` (float operations, integral results as ``int``), as
the interpreter's does, so numbers come out with the same value and type.

What it takes, checked on the parsed expression: field paths of plain names (no predicates,
wildcards, variables or functions), string, number and boolean literals, ``+ - * /``, ``= !=
< <= > >=``, ``and``, ``or``, ``&``, unary minus, and object constructors with distinct literal
keys, in parentheses or not, nested as deep as ``MAX_NODES`` allows.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, Final

from jsonata.jexception import JException
from jsonata.parser import Parser
from jsonata.utils import Utils

UNSURE: Final = object()
"""The closure's answer when only the interpreter can say what the expression gives."""

MAX_NODES = 64
"""The largest expression (in parse-tree nodes) given a closure; larger ones are rare and keep
the interpreter."""

Form = Callable[[Any], Any]
"""A compiled expression: the evaluation context (a dict) to the result, or ``UNSURE``."""

FLOAT_MAX: Final = sys.float_info.max
"""The largest integer (about 1.8e308) that converts to a float; JSON input may hold larger ones."""

_KEPT = frozenset(
    {
        "id",
        "value",
        "type",
        "position",
        "bp",
        "lbp",
        "steps",
        "lhs",
        "rhs",
        "lhs_object",
        "expression",
        "expressions",
    }
)
"""Parse-tree attributes a plain node may carry; any other one set (a predicate, a group, a
focus, an index, a kept array...) changes what the node means, so the node is not taken."""

_ARITHMETIC: Final[dict[str, Callable[[float, float], float]]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
}
_EQUALITY: Final = {"=": True, "!=": False}
_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def simple_form(ast: Any) -> Form | None:
    """The closure for parsed expression ``ast`` (``jsonata.Jsonata(...).ast``), or ``None`` if
    it is not one of the simple kinds."""
    count = [0]
    try:
        return _form(ast, count)
    except RecursionError:
        return None


def _plain(node: Any, count: list[int]) -> bool:
    count[0] += 1
    if count[0] > MAX_NODES or not isinstance(node, Parser.Symbol):
        return False
    return all(
        _unset(value) for key, value in vars(node).items() if key not in _KEPT and not key.startswith("_")
    )


def _unset(value: Any) -> bool:
    if value is None or value is False:
        return True
    if isinstance(value, list | dict | tuple):
        return len(value) == 0
    return type(value) is int and value == 0


def _form(node: Any, count: list[int]) -> Form | None:
    if not _plain(node, count):
        return None
    kind = node.type
    if kind == "path":
        return _path(node, count)
    if kind in ("string", "number"):
        return _literal(node.value) if isinstance(node.value, str | int | float) else None
    if kind == "value":
        return _literal(node.value) if isinstance(node.value, bool) else None
    if kind == "binary":
        return _binary(node, count)
    if kind == "unary" and node.value == "-":
        return _negated(node, count)
    if kind == "unary" and node.value == "{":
        return _object(node, count)
    if kind == "block" and len(node.expressions or ()) == 1:
        return _form(node.expressions[0], count)  # parentheses: one expression, no bindings in it
    return None


def _literal(value: Any) -> Form:
    return lambda _context: value


def _path(node: Any, count: list[int]) -> Form | None:
    keys: list[str] = []
    for step in node.steps or ():
        if not _plain(step, count) or step.type != "name" or not isinstance(step.value, str):
            return None
        keys.append(step.value)
    if not keys:
        return None

    def path(context: Any) -> Any:
        value = context
        for key in keys:
            if type(value) is not dict:
                return UNSURE  # an array maps the rest of the path over its items; a scalar has no fields
            value = value.get(key)
            if value is None:
                return UNSURE  # missing (undefined) or null: the interpreter's sentinels
        return UNSURE if isinstance(value, list) else value

    return path


def _numeric(value: Any) -> bool:
    """``Utils.is_numeric``, which raises for an infinite float (an error here: ``UNSURE``), and
    not an integer too large for a float (the interpreter's ``float()`` of it fails)."""
    try:
        numeric = bool(Utils.is_numeric(value))
    except JException:
        return False
    return numeric and (type(value) is not int or -FLOAT_MAX <= value <= FLOAT_MAX)


def _number(value: float) -> Any:
    """An arithmetic result as the interpreter gives it (``convert_number``), or ``UNSURE``."""
    try:
        converted = Utils.convert_number(value)
    except JException:  # an infinite result: ``is_numeric`` raises D1001
        return UNSURE
    return UNSURE if converted is None else converted


def _binary(node: Any, count: list[int]) -> Form | None:
    op = node.value
    lhs = _form(node.lhs, count)
    rhs = _form(node.rhs, count) if lhs is not None else None
    if lhs is None or rhs is None:
        return None
    if op in ("and", "or"):
        return _logical(op == "and", lhs, rhs)
    if op in _ARITHMETIC:
        return _arithmetic(op, lhs, rhs)
    if op in _ORDER or op in _EQUALITY:
        return _compared(op, lhs, rhs)
    if op == "&":
        return _joined(lhs, rhs)
    return None


def _operands(lhs: Form, rhs: Form, context: Any) -> tuple[Any, Any] | None:
    """Both sides of a binary operator (the interpreter evaluates both before it checks them),
    or ``None`` if either is ``UNSURE``."""
    a = lhs(context)
    if a is UNSURE:
        return None
    b = rhs(context)
    return None if b is UNSURE else (a, b)


def _arithmetic(op: str, lhs: Form, rhs: Form) -> Form:
    apply = _ARITHMETIC[op]

    def arithmetic(context: Any) -> Any:
        both = _operands(lhs, rhs, context)
        if both is None or not (_numeric(both[0]) and _numeric(both[1])) or (op == "/" and both[1] == 0):
            return UNSURE
        return _number(apply(float(both[0]), float(both[1])))

    return arithmetic


def _compared(op: str, lhs: Form, rhs: Form) -> Form:
    def compared(context: Any) -> Any:
        both = _operands(lhs, rhs, context)
        return UNSURE if both is None else _comparison(op, *both)

    return compared


def _comparison(op: str, a: Any, b: Any) -> Any:
    """``= != < <= > >=`` as the interpreter has them for two numbers (equality as floats, an
    order as floats when the types differ), two strings, or (equality) two booleans."""
    numbers = _numeric(a) and _numeric(b)
    if op in _EQUALITY:
        if numbers:
            return (float(a) == float(b)) is _EQUALITY[op]
        same_plain = type(a) is type(b) and type(a) in (str, bool)
        return (a == b) is _EQUALITY[op] if same_plain else UNSURE
    if numbers:
        if type(a) is not type(b):
            a, b = float(a), float(b)
        return _ORDER[op](a, b)
    return _ORDER[op](a, b) if type(a) is str and type(b) is str else UNSURE


def _logical(conjunction: bool, lhs: Form, rhs: Form) -> Form:
    def logical(context: Any) -> Any:
        a = lhs(context)
        if type(a) is not bool:
            return UNSURE
        if a is not conjunction:  # false and ..., true or ...: the right side is not evaluated
            return a
        b = rhs(context)
        return b if type(b) is bool else UNSURE

    return logical


def _joined(lhs: Form, rhs: Form) -> Form:
    def joined(context: Any) -> Any:
        a = lhs(context)
        if type(a) is not str:
            return UNSURE
        b = rhs(context)
        return a + b if type(b) is str else UNSURE

    return joined


def _negated(node: Any, count: list[int]) -> Form | None:
    inner = _form(node.expression, count)
    if inner is None:
        return None

    def negated(context: Any) -> Any:
        value = inner(context)
        return UNSURE if value is UNSURE or not _numeric(value) else _number(-float(value))

    return negated


def _object(node: Any, count: list[int]) -> Form | None:
    pairs: list[tuple[str, Form]] = []
    for pair in node.lhs_object or ():
        key_node, value_node = pair
        if not _plain(key_node, count) or key_node.type != "string" or not isinstance(key_node.value, str):
            return None
        value = _form(value_node, count)
        if value is None or any(key_node.value == k for k, _f in pairs):
            return None  # a key twice is the interpreter's error D1009
        pairs.append((key_node.value, value))

    def constructed(context: Any) -> Any:
        out: dict[str, Any] = {}
        for key, form in pairs:
            value = form(context)
            if value is UNSURE:
                return UNSURE
            out[key] = value
        return out

    return constructed
