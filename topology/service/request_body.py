"""The answer to a request body that is not JSON: its line and column, as ``topology render``
says them, not a bare character offset."""

from __future__ import annotations

import json
from typing import Any


def not_json_detail(body: bytes) -> dict[str, Any]:
    """The 422 detail of a body that is not JSON: the line and column, as ``topology render``
    says them (``Expecting ',' delimiter: line 3 column 3 (char 33)``), not a bare offset."""
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        return {"loc": ["body"], "msg": f"not JSON: {exc}", "type": "json_invalid",
                "line": exc.lineno, "column": exc.colno}
    except UnicodeDecodeError as exc:
        return {"loc": ["body"], "msg": f"not JSON: not UTF-8 text ({exc.reason} at byte "
                                        f"{exc.start})", "type": "json_invalid"}
    return {"loc": ["body"], "msg": "not JSON", "type": "json_invalid"}
