# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL's own programs on the backup server (pg_basebackup, pg_combinebackup): where they are and
whether they can serve a server of a given major version."""

import os
import re
import subprocess
from typing import Optional

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


class ToolError(BarmanError):
    """A PostgreSQL program is missing or of the wrong version; nothing was done."""

    code = 'MISSING_DEPENDENCY'


def bindir(given: Optional[str], major: int) -> str:
    """The binaries of one major version: the one given (barman_pg_bindir), else Debian's and PGDG's place."""
    return given or '/usr/lib/postgresql/%d/bin' % major


def tool_major(path: str) -> Optional[int]:
    """The major version a PostgreSQL program prints (``pg_basebackup (PostgreSQL) 18.6`` -> 18), or None."""
    try:
        out = subprocess.run([path, '--version'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
    except OSError:
        return None
    found = re.search(rb'\(PostgreSQL\) (\d+)', out.stdout)
    return int(found.group(1)) if found else None


def local_tool(directory: str, name: str, major: int, purpose: str, exact: bool = False) -> str:
    """The path of ``name`` in ``directory`` on this host, refusing one that is missing or older than ``major``
    (or, with ``exact``, of another major version)."""
    path = os.path.join(directory, name)
    found = tool_major(path) if os.access(path, os.X_OK) else None
    if found is None or found < major or (exact and found != major):
        raise ToolError(
            '%s needs %s of PostgreSQL %d%s on the backup server; %s %s'
            % (
                purpose,
                name,
                major,
                '' if exact else ' or later',
                path,
                'is PostgreSQL %d' % found if found else 'is not there (or does not run)',
            ),
            'Install the PostgreSQL %d programs on the backup server (Debian: postgresql-%d) or point '
            'barman_pg_bindir at their directory; nothing was done' % (major, major),
            pg_bindir=directory,
        )
    return path
