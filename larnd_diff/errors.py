"""The project's input-error types: one family for every problem a user can fix in what they pass in.

:class:`InputError` (a ``ValueError``) is raised by the loaders and validators for a bad file, field, row,
parameter value or output path. Its message names what is wrong and where; the optional attributes carry the same
facts for programs (``file``, ``field``, ``rows``, ``parameter``, ``value``). Messages are written for the Python
API: a hint names the keyword to use (``outside='drop'``, ``overwrite=True``). :func:`cli_spelling` turns such
hints into the command line's flags (``--outside drop``, ``--overwrite``), which is how ``larnd-diff`` prints them.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence

__all__ = ["InputError", "InputFileNotFoundError", "MissingDataError", "SegmentError", "SegmentFileNotFoundError",
           "MissingFieldError", "ElectronCountError", "ParameterError", "UnknownParameterError", "ConfigError",
           "ConfigFileNotFoundError", "OutputError", "OutputExistsError", "KEYWORD_FLAGS", "cli_spelling",
           "rows_text"]


class InputError(ValueError):
    """An input the user can fix. ``str(err)`` is one line naming what is wrong and where.

    file, field, rows, parameter, value  what the message is about, where it applies (None otherwise).
    """

    def __init__(self, message: str, *, file=None, field: Optional[str] = None,
                 rows: Optional[Sequence[int]] = None, parameter: Optional[str] = None, value=None):
        super().__init__(message)
        self.message = message
        self.file = None if file is None else str(file)
        self.field = field
        self.rows = None if rows is None else tuple(int(r) for r in rows)
        self.parameter = parameter
        self.value = value

    def __str__(self) -> str:
        return self.message


class InputFileNotFoundError(InputError, FileNotFoundError):
    """An input file that does not exist (also a ``FileNotFoundError``)."""


class MissingDataError(InputError, KeyError):
    """A file without the group or dataset asked for (also a ``KeyError``)."""

    __str__ = InputError.__str__   # KeyError would quote the message


class SegmentError(InputError):
    """A segments file or array that cannot be used; the message names file, dataset, field and row(s)."""


class SegmentFileNotFoundError(SegmentError, InputFileNotFoundError):
    """The segments file does not exist (also a ``FileNotFoundError``)."""


class MissingFieldError(SegmentError, KeyError):
    """A segments table lacks a field the simulation reads (also a ``KeyError``, as before)."""

    __str__ = InputError.__str__   # KeyError would quote the message


class ElectronCountError(SegmentError):
    """Segments whose electron count does not fit larnd-sim's unsigned 32-bit ``n_electrons`` field."""


class ParameterError(InputError):
    """A parameter value outside its physical domain (``larnd_diff.params``), or not a number."""


class UnknownParameterError(ParameterError, KeyError):
    """A parameter name that ``larnd_diff.params.PARAMETERS`` does not know (also a ``KeyError``, as before)."""

    __str__ = InputError.__str__


class ConfigError(InputError):
    """A detector, layout or other configuration file that cannot be used (malformed YAML, missing key)."""


class ConfigFileNotFoundError(ConfigError, InputFileNotFoundError):
    """A configuration file that does not exist (also a ``FileNotFoundError``)."""


class OutputError(InputError):
    """An output path that cannot be written (no such folder, not writable, would replace an input)."""


class OutputExistsError(OutputError, FileExistsError):
    """The output exists and overwriting was not asked for (also a ``FileExistsError``)."""


#: API keyword -> command-line flag, for the hints in error messages.
KEYWORD_FLAGS = {"outside": "--outside", "invalid": "--invalid", "resume": "--resume", "overwrite": "--overwrite",
                 "relaxation": "--relaxation"}

_QUOTED = re.compile(r"\b(?P<key>[A-Za-z_]\w*)=(?P<q>['\"])(?P<value>[^'\"]*)(?P=q)")
_TRUE = re.compile(r"\b(?P<key>[A-Za-z_]\w*)=True\b")


def cli_spelling(message: str, flags: Optional[dict] = None) -> str:
    """``message`` with the API keyword hints of ``flags`` (default :data:`KEYWORD_FLAGS`) written as flags:
    ``outside='drop'`` -> ``--outside drop``, ``resume=True`` -> ``--resume``. Other text is left alone."""
    flags = KEYWORD_FLAGS if flags is None else flags

    def quoted(m: re.Match) -> str:
        flag = flags.get(m.group("key"))
        return m.group(0) if flag is None else f"{flag} {m.group('value')}"

    def true(m: re.Match) -> str:
        return flags.get(m.group("key"), m.group(0))

    return _TRUE.sub(true, _QUOTED.sub(quoted, message))


def rows_text(rows: Iterable[int], limit: int = 5) -> str:
    """"row 4" / "rows 1, 4, 9" / "rows 1, 4, 9, 12, 20 and 7 more": row numbers for a one-line message."""
    rows = [int(r) for r in rows]
    if len(rows) == 1:
        return f"row {rows[0]}"
    shown = ", ".join(str(r) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"rows {shown}{more}"
