"""Failures the user can act on, as opposed to bugs.

The convention, everywhere in the package: a problem the user can fix by changing a setting, a
file or the command raises a :class:`UserError` subclass whose message names the setting (as
written in a config: ``data.val_size``, ``--ckpt_path``) or the file, and the fix. ``main.py``
prints it as one line (``error: <message>``) and exits with its ``exit_code``; anything else
keeps its traceback, because it is a bug. Set ``CONVREPRO_DEBUG=1`` to see the traceback of a
user error too.

Each subclass also derives from the built-in exception it stands for, so code (and tests) that
catch ``ValueError`` or ``FileNotFoundError`` keep working.
"""

from __future__ import annotations

DEBUG_ENV = "CONVREPRO_DEBUG"


class UserError(Exception):
    """A problem with the command, config, files or data; the message says what to do."""

    exit_code = 2


class ConfigError(UserError, ValueError):
    """A setting, or a combination of settings and data, that cannot work."""


class SettingTypeError(ConfigError, TypeError):
    """A setting given a value of the wrong kind (a flag where a count belongs)."""


class MissingFileError(UserError, FileNotFoundError):
    """A data set, checkpoint or weights file that is not where the config says."""


class DownloadError(UserError, RuntimeError):
    """A download that cannot happen from this machine (no network, blocked host)."""


class AblationError(ConfigError):
    """An ablation file or folder that cannot be used; the message says what to change."""


class PointBusy(AblationError):
    """A grid point another launcher is running: left alone, not a failure (exit 75, as
    ``EX_TEMPFAIL``: try again later)."""

    exit_code = 75


class TrainingDiverged(UserError, ArithmeticError):
    """The loss became NaN or infinite; the run stopped and kept its last good checkpoint."""

    exit_code = 3


class PeerLost(UserError, RuntimeError):
    """Another process of a multi-process run died or stopped answering, so this one stopped
    too (exit 4). Checkpoints saved before are intact: start the run again with
    ``--ckpt_path last`` once every node is back.

    Attributes:
        detail: What happened, in a few words (for the run's provenance record).
    """

    exit_code = 4

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail
