"""The two errors a user can fix, each a one-line message naming the key, file or mirror.

`files.run` turns them into `error: <message>` and exit status 2, with no traceback.
"""
from __future__ import annotations


class ParamsError(ValueError):
    """A params.yaml problem; the message names the key and what is allowed."""


class DataError(ValueError):
    """A problem with an input or output file or the network; the message names the file or mirror."""


class ChildError(RuntimeError):
    """A benchmark child process failed; the message names the child and ends with its last error line."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (`kill`, `timeout`, a scheduler stopping a job, a closed terminal; args[0]: the signal)
    raised where the process is, so that it stops as Ctrl-C stops it: `finally` blocks end the child processes and
    remove temporary files, nothing is half-written."""


class Unavailable(RuntimeError):
    """A benchmark variant this machine cannot run (CUDA graphs without a GPU): an `unsupported` row, not a bug."""
