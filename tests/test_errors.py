"""Every error code raised in service/ is declared once, in service/errors.py, under its status."""
from __future__ import annotations

import ast

from service import errors
from support import REPO

CLIENT_ERRORS = {name: cls for name, cls in vars(errors).items()
                 if isinstance(cls, type) and issubclass(cls, errors.ServiceError)
                 and cls.status != 500}


def raised_codes() -> list[tuple[str, str, int, str]]:
    """(file:line, class, status, code) of every ``SomeError("...", "code")`` in service/."""
    found = []
    for path in sorted((REPO / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id in CLIENT_ERRORS):
                continue
            cls = CLIENT_ERRORS[node.func.id]
            code = next((kw.value for kw in node.keywords if kw.arg == "code"),
                        node.args[1] if len(node.args) > 1 else None)
            value = code.value if isinstance(code, ast.Constant) else cls.code
            if isinstance(value, str):
                found.append((f"{path.relative_to(REPO)}:{node.lineno}", cls.__name__,
                              cls.status, value))
    return found


def test_every_raised_code_is_declared_under_its_status():
    found = raised_codes()
    assert len(found) > 50  # the scan really saw the service's raises
    wrong = [entry for entry in found if entry[3] not in errors.CODES.get(entry[2], ())]
    assert not wrong, wrong


def test_each_code_has_one_status():
    seen: dict[str, int] = {}
    for status, codes in errors.CODES.items():
        for code in codes:
            assert seen.setdefault(code, status) == status, code


def test_the_http_layers_codes_are_declared():
    for status, code in errors.HTTP_CODES.items():
        assert code in errors.CODES[status], (status, code)
