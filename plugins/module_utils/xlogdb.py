# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""xlog.db, the WAL index Barman reads: ``wals/<server>-xlog.db`` (the name Barman uses since 3.13),
one line per archived file, ``name<TAB>size<TAB>time<TAB>compression<TAB>encryption``, ``None`` for no
compression or encryption."""

import collections
import math
import os
import re
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Union

from ansible_collections.barman.postgresql.plugins.module_utils.catalog import CatalogError, InvalidName, fsync_dir
from ansible_collections.barman.postgresql.plugins.module_utils.errors import is_int, shown
from ansible_collections.barman.postgresql.plugins.module_utils.infofile import _load_int
from ansible_collections.barman.postgresql.plugins.module_utils.wal import parse_wal_name

XLOG_DB_HINT = (
    'The WAL catalogue is damaged. Run "barman rebuild-xlogdb <server>" to rebuild it from the '
    'files in the wals directory'
)

XlogEntry = collections.namedtuple('XlogEntry', ['name', 'size', 'time', 'compression', 'encryption'])
XlogEntry.__new__.__defaults__ = (None, None)


class MalformedXlogDb(CatalogError, ValueError):
    """An xlog.db line that cannot be read back."""

    code = 'MALFORMED_XLOG_DB'


# xlog.db


_TOKEN_RE = re.compile(r'[A-Za-z0-9_.+-]+\Z')


def _check_token(what, value):
    if value is None:
        return 'None'
    if not isinstance(value, str) or not _TOKEN_RE.match(value) or value == 'None':
        raise InvalidName(
            'xlog.db %s %s is not a single word' % (what, shown(value)),
            'Use None or a name such as gzip, lz4 or zstd',
            code='INVALID_ARGUMENT',
            value=value,
        )
    return value


def format_xlog_db_line(
    name: str, size: int, time: float, compression: Optional[str] = None, encryption: Optional[str] = None
) -> str:
    """One xlog.db line, as Barman writes it: ``name\\tsize\\ttime\\tcompression\\tencryption\\n``."""
    parse_wal_name(name)
    if not is_int(size) or size < 0:
        raise InvalidName(
            'xlog.db size %s is not a byte count' % shown(size), 'Use the file size', code='INVALID_ARGUMENT', size=size
        )
    if isinstance(time, bool) or not isinstance(time, (int, float)) or math.isnan(time):
        raise InvalidName(
            'xlog.db time %s is not a number' % shown(time),
            'Use the mtime in seconds since epoch',
            code='INVALID_ARGUMENT',
            time=time,
        )
    return '%s\t%d\t%r\t%s\t%s\n' % (
        name,
        size,
        float(time),
        _check_token('compression', compression),
        _check_token('encryption', encryption),
    )


def _entry_line(entry):
    if isinstance(entry, dict):
        return format_xlog_db_line(**entry)
    return format_xlog_db_line(*entry)


def parse_xlog_db_line(line: str) -> XlogEntry:
    """An XlogEntry from one xlog.db line; lines with 3 or 4 fields (older Barman) are accepted.

    Raises ValueError (MalformedXlogDb) with the reason.
    """
    parts = line.split()
    if not 3 <= len(parts) <= 5:
        raise MalformedXlogDb(
            'xlog.db line %s has %d fields, expected name, size, time, compression, encryption'
            % (shown(line), len(parts)),
            XLOG_DB_HINT,
        )
    parts += [None] * (5 - len(parts))
    name, size, mtime, compression, encryption = parts
    try:
        parse_wal_name(name)
        size = _load_int(size)
        mtime = float(mtime)
    except ValueError as exc:
        raise MalformedXlogDb('xlog.db line %s is not valid: %s' % (shown(line), exc), XLOG_DB_HINT) from None
    return XlogEntry(
        name,
        size,
        mtime,
        None if compression == 'None' else compression,
        None if encryption == 'None' else encryption,
    )


def read_xlog_db(path: str) -> List[XlogEntry]:
    """All entries of the xlog.db at ``path`` (an empty list if it does not exist)."""
    try:
        handle = open(path, 'r', encoding='utf-8')
    except FileNotFoundError:
        return []
    entries = []
    with handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                entries.append(parse_xlog_db_line(line))
            except MalformedXlogDb as exc:
                raise MalformedXlogDb(
                    '%s, line %d: %s' % (path, number, exc.message), XLOG_DB_HINT, path=path, line=number
                ) from None
    return entries


def append_xlog_db(path: str, entries: Iterable[Union[Sequence[Any], Mapping[str, Any]]]) -> None:
    """Append entries (XlogEntry, tuples or dicts) to the xlog.db at ``path`` and fsync it.

    The caller holds ``ServerLock(layout, 'xlogdb')``, the lock Barman takes for this file.
    Refuses to append after a torn last line (one without its newline).
    """
    data = ''.join(_entry_line(entry) for entry in entries).encode('utf-8')
    existed = os.path.exists(path)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b'\n':
            raise MalformedXlogDb(
                '%s does not end with a line break: its last line was cut short' % path,
                XLOG_DB_HINT,
                path=path,
            )
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    if not existed:
        fsync_dir(os.path.dirname(os.path.abspath(path)))
