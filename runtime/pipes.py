# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pipes that carry whole WAL segments (the sender's agent and the receiver's stream)."""

import fcntl
from typing import Any

WIDE_PIPE_BYTES = 1024 * 1024


def widen(stream: Any, size: int = WIDE_PIPE_BYTES) -> None:
    """A 1 MiB pipe instead of 64 KiB: 16 times fewer wake-ups for each 16 MiB segment streamed."""
    try:
        fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, size)
    except (OSError, ValueError, AttributeError):  # not a pipe, above the system's limit, or not Linux
        pass
