"""What both command lines' ``--help`` shows beside an option.

Typer 0.29 shows a flag's type, ``--json <bool>``, as if the flag took a value
(``--json true``), which it does not: ``true`` would be read as the next argument. Flags
show no type here; every other option keeps its own (``<int range>``, ``<path>``).
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_typed = TyperOption.display_type_rich


def _flag_without_type(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag and self.metavar is None:
        return None
    return _typed(self, ctx)


def show_flags_without_type() -> None:
    """Called once by each CLI module (idempotent)."""
    TyperOption.display_type_rich = _flag_without_type  # type: ignore[method-assign]
