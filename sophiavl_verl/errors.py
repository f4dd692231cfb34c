"""The package's one exception hierarchy (no verl, no third-party import).

Every error this package raises on purpose is a :class:`SophiaVLError`; a caller that wants to catch
"anything sophiavl-verl refused" catches that one class. Each subclass says *what* was wrong and
carries *where* as attributes, so a command line can print one line naming the key, file, row or
field, and a program can read them:

    SophiaVLError
    ├── ConfigError       an option (``key``)                          also a ValueError
    ├── InputError        a user's file, row or field (``path``, ``row``, ``field``)  also a ValueError
    │   ├── DataError     data preparation (``sophiavl-verl data``)
    │   ├── ImageError    an image the guard refuses (``kind``)
    │   ├── AuditError    ``sophiavl-verl audit``'s inputs, output folder or TRM
    │   ├── PlotError     a training log without readable metrics, or no matplotlib
    │   └── UsageError    a command line's arguments (``prog``: the command that refused them)
    └── ServerStartError  a local server that exited or did not answer   also a RuntimeError

Failures of the thinking reward model during training are *not* exceptions: they are missing
thinking rewards (NaN), counted by kind (see :mod:`sophiavl_verl.thinking_reward`).
"""

from __future__ import annotations

__all__ = [
    "SophiaVLError",
    "ConfigError",
    "InputError",
    "DataError",
    "ImageError",
    "AuditError",
    "PlotError",
    "UsageError",
    "ServerStartError",
]


class SophiaVLError(Exception):
    """Base of every error this package raises on purpose; ``str(error)`` is one line for the user.

    Args:
        message: What is wrong, naming the offending key, file, row or field.
        key: The full option key at fault (``algorithm.trust_grpo.alpha``), if any.
        path: The file at fault, if any.
        row: The 1-based row or line of ``path`` at fault, if any.
        field: The field of that row at fault, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        path: str | None = None,
        row: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.key, self.path, self.row, self.field = key, path, row, field


class ConfigError(SophiaVLError, ValueError):
    """A plugin option has a wrong name, type or value; the message names the full key."""


class InputError(SophiaVLError, ValueError):
    """A user's input (file, row, field, command-line value) cannot be used; the message says where."""


class DataError(InputError):
    """Data preparation: a bad row under ``--strict``, or an unusable input or option."""


class ImageError(InputError):
    """An image the guard refuses.

    Args:
        kind: ``missing``, ``outside_root``, ``oversized`` or ``unreadable``.
        reason: The one-line message.
    """

    def __init__(self, kind: str, reason: str, **where) -> None:
        super().__init__(reason, **where)
        self.kind, self.reason = kind, reason


class AuditError(InputError):
    """``sophiavl-verl audit``: bad input or an unusable setting; the message names the file and line (or URL)."""


class PlotError(InputError):
    """A log without metrics, or an unreadable file; the message names the file."""


class UsageError(InputError):
    """A command line's arguments are wrong (an unknown flag, a bad value, a missing argument).

    Args:
        message: What is wrong, naming the flag.
        prog: The command or subcommand that refused them (``sophiavl-verl audit``), as its usage line names it.
    """

    def __init__(self, message: str, *, prog: str | None = None, **where) -> None:
        super().__init__(message, **where)
        self.prog = prog


class ServerStartError(SophiaVLError, RuntimeError):
    """A local server exited or did not answer in time; the message ends with the tail of its log."""
