"""One error type for everything a user can get wrong, rendered as one clear paragraph."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:              # the CLI imports this at start-up: pydantic only when validating
    from pydantic import ValidationError


class MoesimError(Exception):
    """A user-facing error: which field, what is wrong, how to fix it."""

    def __init__(self, field: str, problem: str, fix: str = "") -> None:
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(self.render())

    def render(self) -> str:
        """The one-paragraph message the CLI prints."""
        text = f"{self.field}: {self.problem}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


def from_validation(err: ValidationError, where: str) -> MoesimError:
    """Turn a pydantic ValidationError into a MoesimError naming each bad field."""
    parts: list[str] = []
    fields: list[str] = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "(top level)"
        fields.append(loc)
        msg = e.get("msg", "invalid")
        if e.get("type") == "extra_forbidden":
            msg = "unknown key (not part of the schema; see `moesim schema`)"
        elif e.get("type") == "missing":
            msg = "required key is missing"
        elif e.get("type") == "model_type" and isinstance(e.get("input"), (int, float)) and \
                (e.get("ctx") or {}).get("class_name") == "Sourced":
            msg = (f"the number {e['input']} has no source: write "
                   f"{{value: {e['input']}, source: '<where it comes from>'}}")
        elif e.get("type") == "model_type":
            cls = (e.get("ctx") or {}).get("class_name", "mapping")
            msg = (f"got {type(e.get('input')).__name__} {e.get('input')!r}, but {cls} is a "
                   "block of keys: write it as a mapping (see `moesim schema`)")
        elif e.get("type") == "finite_number":
            msg = "must be a finite number (NaN and infinity are not allowed)"
        parts.append(f"{loc}: {_clean(msg)}")
    return MoesimError(f"{where} [{', '.join(fields)}]", "; ".join(parts),
                       "correct the named keys; `moesim schema` prints every allowed key")


def _clean(msg: Any) -> str:
    text = str(msg)
    return text[len("Value error, "):] if text.startswith("Value error, ") else text
