"""How every command line of the package runs: one parser class, one runner, one error format.

A user error is a :class:`~sophiavl_verl.errors.InputError` (a bad argument, file, row or field) or a
:class:`~sophiavl_verl.errors.ConfigError`; :func:`run_command` prints it as one line ``<prog>: error: <message>``
on stderr and returns 2. ``sophiavl-verl`` (:mod:`sophiavl_verl.tools.cli`), ``python -m
sophiavl_verl.tools.local_server`` and ``python -m sophiavl_verl.tools.train_cpu`` all run through it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from sophiavl_verl.errors import ConfigError, InputError, UsageError

__all__ = ["OneLineErrorParser", "at_least", "run_command", "set_command"]


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors raise :class:`UsageError` (reported by :func:`run_command`)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)", prog=self.prog)


def set_command(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], int]) -> None:
    """Make ``parser`` (a leaf subcommand) run ``run(args)``; its errors are reported under its ``prog``."""
    parser.set_defaults(run=run, prog=parser.prog)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number ``>= minimum`` (``1.5``, ``nan`` and ``x`` are refused)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


def _terminate(signum, frame):  # pragma: no cover - exercised by sending SIGTERM / SIGHUP
    raise KeyboardInterrupt(f"signal {signum}")


def run_command(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None, *,
                unwind_signals: bool = False) -> int:
    """Parse ``argv`` and run the chosen command (``args.run``, set by :func:`set_command`); returns the exit status.

    A user error, i.e. a :class:`~sophiavl_verl.errors.InputError` (a bad argument, file, row or field; a
    :class:`UsageError` from the parser included) or :class:`~sophiavl_verl.errors.ConfigError`, or an ``OSError``
    the checks could not foresee (a full disk), is printed as one line ``<prog>: error: <message>`` on stderr and
    gives 2, without a traceback; ``prog`` is the (sub)command at fault. Ctrl-C gives 130.

    Args:
        parser: The command line's parser (a :class:`OneLineErrorParser`).
        argv: The arguments; ``None`` = ``sys.argv[1:]``.
        unwind_signals: SIGTERM and SIGHUP (a closed terminal) also unwind like Ctrl-C, so that context managers
            stop servers, release locks and remove partial files. An ignored signal (nohup) stays ignored.
    """
    prog = parser.prog
    previous = ({signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGHUP)}
                if unwind_signals else {})
    for signum, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(signum, _terminate)
    try:
        args = parser.parse_args(argv)
        prog = args.prog
        return args.run(args)
    except (InputError, ConfigError, OSError) as exc:
        print(f"{getattr(exc, 'prog', None) or prog}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
