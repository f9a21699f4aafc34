# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup.info, as Barman 3.19 reads and writes it: ``meta/<backup_id>-backup.info``, ``key=value``
lines sorted by key, every known field written, ``None`` written as the literal text ``None``; and the
questions every caller asks of a server's backups (their order, the DONE ones, the id shortcuts)."""

import ast
import collections
import datetime

import os
import re
from typing import Any, Container, Dict, List, Mapping, Optional, Tuple


from ansible_collections.barman.postgresql.plugins.module_utils.catalog import (
    CatalogError,
    InvalidName,
    atomic_write,
    backup_id_time,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import is_int, shown

# Backup statuses, as Barman names them.
EMPTY = 'EMPTY'
STARTED = 'STARTED'
WAITING_FOR_WALS = 'WAITING_FOR_WALS'
DONE = 'DONE'
SYNCING = 'SYNCING'
FAILED = 'FAILED'
STATUSES = (EMPTY, STARTED, WAITING_FOR_WALS, DONE, SYNCING, FAILED)

DEFAULT_XLOG_SEGMENT_SIZE = 16 * 1024 * 1024
BACKUP_INFO_HINT = (
    'The file is damaged or was not written by Barman. Restore it from a copy, or fix the named '
    'line by hand; "barman show-backup" reads the same file'
)

Tablespace = collections.namedtuple('Tablespace', ['name', 'oid', 'location'])


class InvalidBackupInfo(CatalogError, ValueError):
    """A backup.info value that cannot be written in Barman's format."""

    code = 'INVALID_ARGUMENT'


class MalformedBackupInfo(CatalogError, ValueError):
    """A backup.info file that cannot be read back."""

    code = 'MALFORMED_BACKUP_INFO'


# ---------------------------------------------------------------------------------------------
# backup.info: each field is declared once, with how to load it from text and dump it to text.
#
# A loader gets the text after "=" (never the text "None", which always means None) and raises
# ValueError with the reason. A dumper gets a non-None value and returns the text, or None for
# "write None" (Barman writes empty lists and dicts as None); it raises ValueError with the reason.


def _load_str(text):
    return text


def _dump_str(value):
    if not isinstance(value, str):
        raise ValueError('a string is needed, got %s' % type(value).__name__)
    if '\n' in value or '\r' in value:
        raise ValueError('it contains a line break, which would end the line in backup.info')
    if value != value.strip():
        raise ValueError('it has leading or trailing blanks, which Barman strips when reading')
    return value


def _dump_one_line(value):
    # Error messages are free text: fold them onto one line rather than refusing them.
    if not isinstance(value, str):
        value = str(value)
    return ' '.join(value.split())


_INT_RE = re.compile(r'-?[0-9]+\Z')


def _load_int(text):
    if not _INT_RE.match(text):
        raise ValueError('%s is not an integer' % shown(text))
    return int(text)


def _dump_int(value):
    if not is_int(value):
        raise ValueError('an integer is needed, got %s' % shown(value))
    return str(value)


def _load_status(text):
    if text not in STATUSES:
        raise ValueError('unknown status %s, expected one of %s' % (shown(text), ', '.join(STATUSES)))
    return text


def _dump_status(value):
    return _load_status(_dump_str(value))


def _load_time(text):
    # Barman writes str(datetime): "2024-01-02 03:04:05.123456+00:00"; a naive time means local time.
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError('%s is not a timestamp like 2024-01-02 03:04:05+00:00' % shown(text)) from None
    return value if value.tzinfo is not None else value.astimezone()


def _dump_time(value):
    if not isinstance(value, datetime.datetime):
        raise ValueError('a datetime is needed, got %s' % shown(value))
    return str(value if value.tzinfo is not None else value.astimezone())


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError('%s is not a Python literal' % shown(text)) from None


def _literal_field(kind, check):
    """Loader and dumper for fields Barman writes as repr() and reads with ast.literal_eval."""

    def load(text):
        value = _literal(text)
        if not check(value):
            raise ValueError('%s is not %s' % (shown(text), kind))
        return value

    def dump(value):
        if not check(value):
            raise ValueError('%s is not %s' % (shown(value), kind))
        return repr(value) if value else None

    return load, dump


def _is_str_list(value):
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_tablespace(item):
    return (
        isinstance(item, (tuple, list))
        and len(item) == 3
        and isinstance(item[0], str)
        and is_int(item[1])
        and isinstance(item[2], str)
    )


def _load_tablespaces(text):
    # Barman: repr() of a list of (name, oid, location) tuples; an empty list reads as None.
    value = _literal(text)
    if not isinstance(value, list) or not all(_is_tablespace(item) for item in value):
        raise ValueError('%s is not a list of (name, oid, location) tuples' % shown(text))
    return [Tablespace(*item) for item in value] or None


def _dump_tablespaces(value):
    # Accepts Tablespace tuples, (name, oid, location) sequences or dicts with those keys.
    if not isinstance(value, (list, tuple)):
        value = [value]
    items = [
        (item.get('name'), item.get('oid'), item.get('location')) if isinstance(item, dict) else item for item in value
    ]
    if not all(_is_tablespace(item) for item in items):
        raise ValueError('a list of (name, oid, location) is needed, got %s' % shown(value))
    return repr([tuple(item) for item in items]) if items else None


def _load_ids(text):
    return text.split(',') if text else None


def _dump_ids(value):
    if not _is_str_list(value) or any(',' in item or not item for item in value):
        raise ValueError('a list of backup ids is needed, got %s' % shown(value))
    return ','.join(value) if value else None


_load_files, _dump_files = _literal_field('a list of strings', _is_str_list)
_load_label, _dump_label = _literal_field('a string', lambda v: isinstance(v, str))
_load_dict, _dump_dict = _literal_field('a dict', lambda v: isinstance(v, dict))

BackupInfoField = collections.namedtuple('BackupInfoField', ['name', 'load', 'dump', 'default', 'hide_if_none'])


def _field(name, load=_load_str, dump=_dump_str, default=None, hide_if_none=False):
    return BackupInfoField(name, load, dump, default, hide_if_none)


# The fields Barman 3.19's BackupInfo declares, in the (alphabetical) order it writes them.
BACKUP_INFO_FIELDS = (
    _field('backup_label', _load_label, _dump_label),
    _field('backup_name', hide_if_none=True),
    _field('begin_offset', _load_int, _dump_int),
    _field('begin_time', _load_time, _dump_time),
    _field('begin_wal'),
    _field('begin_xlog'),
    _field('children_backup_ids', _load_ids, _dump_ids),
    _field('cluster_size', _load_int, _dump_int),
    _field('compression'),
    _field('config_file'),
    _field('copy_stats', _load_dict, _dump_dict),
    _field('data_checksums'),
    _field('deduplicated_size', _load_int, _dump_int),
    _field('encryption'),
    _field('end_offset', _load_int, _dump_int),
    _field('end_time', _load_time, _dump_time),
    _field('end_wal'),
    _field('end_xlog'),
    _field('error', dump=_dump_one_line),
    _field('hba_file'),
    _field('ident_file'),
    _field('included_files', _load_files, _dump_files),
    _field('mode'),
    _field('parent_backup_id'),
    _field('pgdata'),
    _field('server_name'),
    _field('size', _load_int, _dump_int),
    _field('snapshots_info', _load_dict, _dump_dict, hide_if_none=True),
    _field('status', _load_status, _dump_status, default=EMPTY),
    _field('summarize_wal'),
    _field('systemid'),
    _field('tablespaces', _load_tablespaces, _dump_tablespaces),
    _field('timeline', _load_int, _dump_int),
    _field('version', _load_int, _dump_int),
    _field('xlog_segment_size', _load_int, _dump_int, default=DEFAULT_XLOG_SEGMENT_SIZE),
)
FIELDS_BY_NAME = dict((f.name, f) for f in BACKUP_INFO_FIELDS)
# Barman keeps these on the object but never writes them; a file holding them is not Barman's.
_NOT_FIELDS = ('backup_id', 'backup_version')
_KEY_RE = re.compile(r'[A-Za-z_][A-Za-z0-9_]*\Z')


def _malformed(source, number, line, why):
    return MalformedBackupInfo(
        'Cannot read backup.info %s, line %d %s: %s' % (source, number, shown(line), why),
        BACKUP_INFO_HINT,
        path=source,
        line=number,
    )


def parse_backup_info(text: str, source: str = '<text>') -> Dict[str, Any]:
    """Parse backup.info text into a dict holding every declared field (defaults for missing ones).

    Keys Barman 3.19 does not declare are kept, as strings. Blank lines and ``#`` comments are
    skipped, as Barman does; anything else that does not parse raises MalformedBackupInfo naming
    ``source`` and the line.
    """
    info = dict((f.name, f.default) for f in BACKUP_INFO_FIELDS)
    seen = set()
    # Barman reads the file line by line on "\n" only.
    for number, line in enumerate(text.split('\n'), 1):
        if not line.strip() or line.strip().startswith('#'):
            continue
        if '=' not in line:
            raise _malformed(source, number, line, 'there is no "=" between key and value')
        key, value = (part.strip() for part in line.split('=', 1))
        if not _KEY_RE.match(key):
            raise _malformed(source, number, line, '%s is not a key name' % shown(key))
        if key in seen:
            raise _malformed(source, number, line, 'key %s appears twice' % key)
        seen.add(key)
        field = FIELDS_BY_NAME.get(key)
        if value == 'None':
            info[key] = None
        elif field is None:
            info[key] = value
        else:
            try:
                info[key] = field.load(value)
            except ValueError as exc:
                raise _malformed(source, number, line, 'bad %s: %s' % (key, exc)) from None
    return info


def format_backup_info(info: Mapping[str, Any]) -> str:
    """backup.info text for a dict, in Barman's format: sorted ``key=value`` lines, None as ``None``.

    Declared fields missing from ``info`` are written with their default. Undeclared keys (read
    from a file a newer Barman wrote) are written back as they are; their values must be strings.
    Raises InvalidBackupInfo for a value Barman could not read back.
    """
    lines = {}
    for key, value in info.items():
        field = FIELDS_BY_NAME.get(key)
        if key in _NOT_FIELDS or not isinstance(key, str) or not _KEY_RE.match(key):
            raise InvalidBackupInfo(
                'Cannot write key %s to backup.info: Barman does not read it back as a field' % shown(key),
                'Drop the key; the backup id is the file name, not a field',
                key=key,
            )
        if field is None:
            field = _field(key)
        if value is None and field.hide_if_none:
            continue
        try:
            text = None if value is None else field.dump(value)
        except ValueError as exc:
            raise InvalidBackupInfo(
                'Cannot write backup.info field %s: %s' % (key, exc),
                'Give the value the type Barman uses for that field',
                key=key,
            ) from None
        lines[key] = '%s=%s\n' % (key, text)
    for field in BACKUP_INFO_FIELDS:
        if field.name not in info and not (field.default is None and field.hide_if_none):
            default = None if field.default is None else field.dump(field.default)
            lines[field.name] = '%s=%s\n' % (field.name, default)
    return ''.join(lines[key] for key in sorted(lines))


def backup_order_key(backup_id: str, info: Mapping[str, Any]) -> Tuple[float, str]:
    """Sort key that puts backups in the order they began.

    Backup ids are local wall-clock time, which goes back an hour when daylight saving time ends: the
    begin_time (an aware timestamp) decides, and the id (read as local time) only stands in for a
    backup that has none yet; an id that is not a time sorts first.
    """
    begin = info.get('begin_time') if isinstance(info, dict) else None
    if isinstance(begin, datetime.datetime):
        return (begin.timestamp(), backup_id)
    try:
        return (backup_id_time(backup_id).timestamp(), backup_id)
    except (InvalidName, ValueError, OverflowError):
        return (float('-inf'), backup_id)


def ordered_backup_ids(infos: Mapping[str, Mapping[str, Any]], statuses: Optional[Container[str]] = None) -> List[str]:
    """The ids of ``infos`` ({backup_id: info}), oldest first by begin time (see backup_order_key); only
    those with one of ``statuses`` when given."""
    ids = [b for b in infos if statuses is None or infos[b]['status'] in statuses]
    return sorted(ids, key=lambda backup_id: backup_order_key(backup_id, infos[backup_id]))


def done_backup_ids(infos: Mapping[str, Mapping[str, Any]]) -> List[str]:
    """The ids of the DONE backups, the only ones a recovery may use, oldest first."""
    return ordered_backup_ids(infos, (DONE,))


# Barman's backup id shortcuts, and the statuses they choose from (last-failed aside).
SHORTCUTS = ('latest', 'last', 'oldest', 'first', 'last-failed')
SHORTCUT_STATUSES = (DONE, WAITING_FOR_WALS)


def shortcut_backup_id(
    infos: Mapping[str, Mapping[str, Any]], shortcut: str, statuses: Container[str] = SHORTCUT_STATUSES
) -> Optional[str]:
    """The id a shortcut names (latest/last and oldest/first among ``statuses``, last-failed), None when
    there is no such backup."""
    ids = ordered_backup_ids(infos, (FAILED,) if shortcut == 'last-failed' else statuses)
    if not ids:
        return None
    return ids[0] if shortcut in ('oldest', 'first') else ids[-1]


def backup_infos(layout: Any) -> Dict[str, Dict[str, Any]]:
    """{backup_id: info} of every backup of a server, an OrderedDict oldest first by begin time.
    A malformed file raises."""
    infos = {}
    if os.path.isdir(layout.meta_dir):
        for entry in os.listdir(layout.meta_dir):
            if entry.endswith('-backup.info'):
                backup_id = entry[: -len('-backup.info')]
                infos[backup_id] = read_backup_info(os.path.join(layout.meta_dir, entry))
    return collections.OrderedDict((backup_id, infos[backup_id]) for backup_id in ordered_backup_ids(infos))


def archive_origin(infos: Mapping[str, Mapping[str, Any]], keeps: Mapping[str, str]) -> Dict[str, Any]:
    """Where a server's WAL archive must be continuous from, and the islands before that point.

    ``infos`` maps backup ids to backup.info dicts, ``keeps`` backup ids to their keep annotation. As in
    Barman, a backup kept ``standalone`` needs only its own WAL (begin_wal..end_wal), and retention
    removes the WAL after it: continuity starts at the oldest DONE backup kept for point-in-time recovery
    (not kept standalone; the newest DONE backup when all are), and each standalone backup older than
    that is an island. Returns dict(backup_id, begin_wal, islands=[dict(backup_id, begin_wal, end_wal)]),
    backup_id and begin_wal None without a DONE backup.
    """
    done = [b for b in done_backup_ids(infos) if infos[b].get('begin_wal')]
    full = [b for b in done if keeps.get(b) != 'standalone'] or done[-1:]
    if not full:
        return dict(backup_id=None, begin_wal=None, islands=[])
    origin = full[0]
    islands = [
        dict(backup_id=b, begin_wal=infos[b]['begin_wal'], end_wal=infos[b].get('end_wal') or infos[b]['begin_wal'])
        for b in done[: done.index(origin)]
    ]
    return dict(backup_id=origin, begin_wal=infos[origin]['begin_wal'], islands=islands)


def read_backup_info(path: str) -> Dict[str, Any]:
    """Parse the backup.info at ``path``; raises MalformedBackupInfo, or OSError if unreadable."""
    with open(path, 'rb') as handle:
        data = handle.read()
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b'\n') + 1
        raise _malformed(path, line, data.splitlines()[line - 1], 'it is not UTF-8') from None
    return parse_backup_info(text, source=path)


def write_backup_info(path: str, info: Mapping[str, Any]) -> None:
    """Write ``info`` to ``path`` atomically (mode 0600)."""
    atomic_write(path, format_backup_info(info), 0o600)
