"""Every log call in the services says what the PHI-safe formatter will write.

The formatter (services/common/logs.py) writes the message text as it is and only allow-listed
`extra` fields: a %-argument is never rendered, an f-string puts values in the text, and an
extra field off the list vanishes. Each of those has hidden a figure an operator needed, so the
calls are checked here rather than found in production.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from services.common.logs import SAFE_FIELDS

SERVICES = Path(__file__).resolve().parents[2] / "services"
LOG_METHODS = frozenset({"debug", "info", "warning", "error", "exception", "critical"})
LOGGER_NAMES = frozenset({"log", "logger", "logging"})


def _log_calls(tree: ast.AST) -> Iterator[ast.Call]:
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in LOG_METHODS
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id in LOGGER_NAMES
        ):
            yield node


def problems(source: str, where: str) -> list[str]:
    """What the formatter would drop or leak in `source`'s log calls, one line each."""
    found = []
    for call in _log_calls(ast.parse(source)):
        at = f"{where}:{call.lineno}"
        if not call.args or not (isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)):
            found.append(f"{at}: the message is not a constant string")
        if len(call.args) > 1:
            found.append(f"{at}: %-arguments are never rendered; give them as extra fields")
        for keyword in call.keywords:
            if keyword.arg != "extra":
                continue
            if not isinstance(keyword.value, ast.Dict):
                found.append(f"{at}: extra is not a literal dict, so its fields cannot be checked")
                continue
            for key in keyword.value.keys:
                if not (isinstance(key, ast.Constant) and key.value in SAFE_FIELDS):
                    name = key.value if isinstance(key, ast.Constant) else ast.unparse(key) if key else "**"
                    found.append(f"{at}: extra field {name!r} is not on the allow list, so it is dropped")
    return found


def test_the_checker_finds_each_kind_of_problem() -> None:
    source = (
        "log.info('n %d', 3)\n"
        "log.info(f'n {n}')\n"
        "log.warning('ok', extra={'count': 1, 'patient_name': x})\n"
        "log.error('ok', extra=fields)\n"
        "log.info('fine', extra={'count': 1})\n"
        "other.info('not a logger', 1)\n"
    )
    assert [line.split(": ", 1)[1] for line in problems(source, "x.py")] == [
        "%-arguments are never rendered; give them as extra fields",
        "the message is not a constant string",
        "extra field 'patient_name' is not on the allow list, so it is dropped",
        "extra is not a literal dict, so its fields cannot be checked",
    ]


def test_every_service_log_call_is_written_as_meant() -> None:
    found = []
    for path in sorted(SERVICES.rglob("*.py")):
        found += problems(path.read_text(), str(path.relative_to(SERVICES.parent)))
    assert found == []
