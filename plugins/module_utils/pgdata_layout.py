# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the original PGDATA was laid out, kept with each backup; and the pg_wal a backup holds.

``initdb --waldir`` makes ``pg_wal`` a symlink to a directory on another disk. A backup never keeps
that link (a copy would write its WAL into the original's): like PostgreSQL's own base backup, it
holds pg_wal as an empty directory with an empty ``archive_status/``, whatever the original's
layout, and records that layout in ``base/<backup_id>/pgdata_layout.json``:

  {"pg_wal": {"kind": "directory"}}
  {"pg_wal": {"kind": "symlink", "link": "/srv/wal", "target": "/srv/wal"}}

Not in backup.info: Barman 3.19 has no field for it and stops on a key it does not know
("Unsupported field ... Please upgrade"). In the backup's directory, beside ``data/``, Barman
ignores the file and every delete (ours or Barman's) removes it with the backup. A backup taken
before this file existed has none: its layout is unknown (read_layout returns None).
"""

import json
import os
from typing import Any, Dict, List, Mapping, Optional

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, rsync
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

LAYOUT_FILE = 'pgdata_layout.json'
DIRECTORY = 'directory'
SYMLINK = 'symlink'
# The probe prints the kind, then for a symlink the link as written and the path it resolves to (none
# for a dangling link). It exits 0 whatever it finds: only a failed ssh is an ssh failure.
_PROBE_SCRIPT = (
    'if [ -L "$1" ]; then echo symlink; readlink -- "$1"; readlink -f -- "$1" || :; '
    'elif [ -d "$1" ]; then echo directory; else echo missing; fi'
)


class PgdataLayoutError(BarmanError):
    """The original's layout cannot be read or recorded."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


def layout_path(layout: catalog.ServerLayout, backup_id: str) -> str:
    """``base/<backup_id>/pgdata_layout.json`` of a catalog.ServerLayout."""
    return os.path.join(layout.backup_dir(backup_id), LAYOUT_FILE)


def probe_argv(pgdata: str) -> List[str]:
    """The argv that tells, on the PostgreSQL host, what ``<pgdata>/pg_wal`` is (for ssh_argv)."""
    return ['sh', '-c', _PROBE_SCRIPT, 'sh', os.path.join(pgdata, rsync.PG_WAL)]


def parse_probe(output: str, pgdata: str) -> Dict[str, Dict[str, str]]:
    """The layout dict from probe_argv's output; raises PgdataLayoutError when pg_wal is neither."""
    lines = output.split('\n')
    path = os.path.join(pgdata, rsync.PG_WAL)
    if lines[0] == DIRECTORY:
        return dict(pg_wal=dict(kind=DIRECTORY))
    if lines[0] == SYMLINK and len(lines) >= 3 and lines[1] and lines[2].startswith('/'):
        return dict(pg_wal=dict(kind=SYMLINK, link=lines[1], target=lines[2]))
    raise PgdataLayoutError(
        '%s on the PostgreSQL host is neither a directory nor a symlink (the check answered %r)' % (path, output),
        'Check the data directory: PostgreSQL cannot run without its pg_wal',
        code='INVALID_PGDATA',
        path=path,
    )


def describe(pgdata_layout: Mapping[str, Any]) -> str:
    """One line for logs and results: 'pg_wal is a directory' or 'pg_wal is a symlink to ...'."""
    pg_wal = pgdata_layout['pg_wal']
    if pg_wal['kind'] == SYMLINK:
        return 'pg_wal is a symlink to %s' % pg_wal['target']
    return 'pg_wal is a directory'


def write_layout(layout: catalog.ServerLayout, backup_id: str, pgdata_layout: Mapping[str, Any]) -> None:
    catalog.atomic_write(layout_path(layout, backup_id), json.dumps(pgdata_layout, sort_keys=True) + '\n', 0o600)


def read_layout(layout: catalog.ServerLayout, backup_id: str) -> Optional[Dict[str, Any]]:
    """The recorded layout dict, or None for a backup taken before layouts were recorded."""
    path = layout_path(layout, backup_id)
    try:
        with open(path) as handle:
            recorded = json.load(handle)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise PgdataLayoutError(
            'cannot read %s: %s' % (path, exc),
            "Restore the file from the backup server's backups",
            code='CATALOG_DAMAGED',
            path=path,
        ) from None
    if not isinstance(recorded, dict) or recorded.get('pg_wal', {}).get('kind') not in (DIRECTORY, SYMLINK):
        raise PgdataLayoutError(
            '%s does not describe pg_wal' % path, 'Restore the file', code='CATALOG_DAMAGED', path=path
        )
    return recorded


def make_empty_pg_wal(data_dir: str) -> None:
    """``pg_wal/`` and ``pg_wal/archive_status/`` in a copy of PGDATA: real, empty, 0700.

    Refuses a copy that already holds a pg_wal (a link would be followed, contents would go along).
    """
    for relative in (rsync.PG_WAL, rsync.PG_WAL_ARCHIVE_STATUS):
        path = os.path.join(data_dir, relative)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            raise PgdataLayoutError(
                '%s already exists in the copy: pg_wal must be made empty by the backup itself' % path,
                'This is a bug: pg_wal is excluded from the copy (rsync.PG_WAL_EXCLUDE)',
                code='BARMAN_ERROR',
                path=path,
            ) from None
        os.chmod(path, 0o700)  # mkdir's mode is masked by the umask
