# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The on-disk catalog of one Barman server: paths, backup.info, xlog.db, identity.json and locks.

Everything written here must stay readable by Barman 3.19, so the formats follow Barman's:

* ``<barman_home>/<server>/meta/<backup_id>-backup.info``: ``key=value`` lines sorted by key,
  every known field written, ``None`` written as the literal text ``None``.
* ``<barman_home>/<server>/wals/<server>-xlog.db`` (the name Barman uses since 3.13): one line per
  archived file, ``name<TAB>size<TAB>time<TAB>compression<TAB>encryption``, ``None`` for no
  compression or encryption.
* ``<barman_home>/<server>/wals/<first 16 hex digits>/<segment>``; timeline history files sit
  directly in ``wals/``.
* ``<barman_home>/<server>/identity.json``: ``{"systemid": "...", "version": "16"}``.
* ``<barman_home>/.<server>-<operation>.lock``: the lock files Barman itself uses (for example
  ``backup``, ``xlogdb``, ``archive-wal``), taken with ``flock`` so Barman and this collection
  exclude each other; the first line is the holder's pid, as Barman expects.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ast
import collections
import datetime
import errno
import fcntl
import json
import math
import os
import re
import tempfile
import time

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError
from ansible_collections.barman.postgresql.plugins.module_utils.wal import parse_wal_name

# Backup statuses, as Barman names them.
EMPTY = 'EMPTY'
STARTED = 'STARTED'
WAITING_FOR_WALS = 'WAITING_FOR_WALS'
DONE = 'DONE'
SYNCING = 'SYNCING'
FAILED = 'FAILED'
STATUSES = (EMPTY, STARTED, WAITING_FOR_WALS, DONE, SYNCING, FAILED)

DEFAULT_XLOG_SEGMENT_SIZE = 16 * 1024 * 1024
BACKUP_ID_FORMAT = '%Y%m%dT%H%M%S'
# 'all' is refused by Barman as a server name; 'barman' is its global configuration section.
RESERVED_SERVER_NAMES = ('all', 'barman')
MAX_SERVER_NAME_LENGTH = 64

SERVER_NAME_HINT = (
    'Use 1 to 64 letters, digits, "-", "_" or ".", starting with a letter or digit, for example "pg-main"'
)
BACKUP_ID_HINT = 'A backup id is a local timestamp YYYYMMDDTHHMMSS, for example 20240102T030405'
BACKUP_INFO_HINT = (
    'The file is damaged or was not written by Barman. Restore it from a copy, or fix the named '
    'line by hand; "barman show-backup" reads the same file'
)
XLOG_DB_HINT = (
    'The WAL catalogue is damaged. Run "barman rebuild-xlogdb <server>" to rebuild it from the '
    'files in the wals directory'
)

Tablespace = collections.namedtuple('Tablespace', ['name', 'oid', 'location'])
XlogEntry = collections.namedtuple('XlogEntry', ['name', 'size', 'time', 'compression', 'encryption'])
XlogEntry.__new__.__defaults__ = (None, None)


class CatalogError(BarmanError):
    """Something wrong with the server catalog on disk."""


class InvalidName(CatalogError, ValueError):
    """A server name, backup id, WAL name or lock operation that is not acceptable."""


class InvalidBackupInfo(CatalogError, ValueError):
    """A backup.info value that cannot be written in Barman's format."""


class MalformedBackupInfo(CatalogError, ValueError):
    """A backup.info file that cannot be read back."""


class MalformedXlogDb(CatalogError, ValueError):
    """An xlog.db line that cannot be read back."""


class MalformedIdentity(CatalogError, ValueError):
    """An identity.json file that cannot be read back."""


class IdentityMismatch(CatalogError):
    """The PostgreSQL cluster is not the one whose backups this server directory holds."""


class LockBusy(CatalogError):
    """Another process holds the lock."""


class LockError(CatalogError):
    """The lock file cannot be opened."""


def _shown(value):
    # Names may come from user input or directory listings: keep a hostile value from flooding the message.
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + '...'


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------
# Names


_SERVER_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]*\Z')
_BACKUP_ID_RE = re.compile(r'[0-9]{8}T[0-9]{6}\Z')
_OPERATION_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z')


def validate_server_name(name):
    """Return ``name`` if it is a usable server name, else raise InvalidName."""

    def refuse(why):
        raise InvalidName('Server name %s is not valid: %s' % (_shown(name), why), SERVER_NAME_HINT, server=name)

    if not isinstance(name, str):
        refuse('it must be a string, got %s' % type(name).__name__)
    if not name:
        refuse('it is empty')
    if len(name) > MAX_SERVER_NAME_LENGTH:
        refuse('it is %d characters long, the limit is %d' % (len(name), MAX_SERVER_NAME_LENGTH))
    if '/' in name or '\\' in name:
        refuse('it contains a slash, and the name becomes a directory name')
    if '..' in name:
        refuse('it contains "..", which could escape the Barman home directory')
    if not name[0].isascii() or not name[0].isalnum():
        refuse('it must start with a letter or digit (a leading "." would hide the directory)')
    if not _SERVER_NAME_RE.match(name):
        bad = sorted(set(c for c in name if not (c.isascii() and (c.isalnum() or c in '._-'))))
        refuse('it contains %s' % ', '.join(_shown(c) for c in bad))
    if name.lower() in RESERVED_SERVER_NAMES:
        refuse('"%s" is reserved by Barman' % name)
    return name


def new_backup_id(dt):
    """Backup id for a datetime: ``YYYYMMDDTHHMMSS``.

    Barman uses the local wall-clock time; an aware datetime is converted to local time first.
    """
    if not isinstance(dt, datetime.datetime):
        raise InvalidName(
            'Cannot make a backup id from %s: a datetime is needed' % _shown(dt), BACKUP_ID_HINT, value=dt
        )
    if dt.tzinfo is not None:
        dt = dt.astimezone().replace(tzinfo=None)
    return dt.strftime(BACKUP_ID_FORMAT)


def validate_backup_id(text):
    """Return ``text`` if it is a backup id (``YYYYMMDDTHHMMSS``, a real date), else raise InvalidName."""

    def refuse(why):
        raise InvalidName('Backup id %s is not valid: %s' % (_shown(text), why), BACKUP_ID_HINT, backup_id=text)

    if not isinstance(text, str):
        refuse('it must be a string, got %s' % type(text).__name__)
    if not text:
        refuse('it is empty')
    if '/' in text or '\\' in text or '..' in text:
        refuse('it contains a path separator or ".."')
    if not _BACKUP_ID_RE.match(text):
        refuse('it is not 8 digits, "T", 6 digits')
    try:
        datetime.datetime.strptime(text, BACKUP_ID_FORMAT)
    except ValueError:
        refuse('it is not a real date and time')
    return text


def backup_id_time(backup_id):
    """The naive (local) datetime a backup id stands for."""
    return datetime.datetime.strptime(validate_backup_id(backup_id), BACKUP_ID_FORMAT)


def validate_operation(operation):
    """Return ``operation`` if it can name a lock file, else raise InvalidName."""
    if not isinstance(operation, str) or not _OPERATION_RE.match(operation):
        raise InvalidName(
            'Lock operation %s is not valid' % _shown(operation),
            'Use 1 to 64 letters, digits, "-" or "_", starting with a letter or digit, for example "backup"',
            operation=operation,
        )
    return operation


# ---------------------------------------------------------------------------------------------
# Paths


def catalog_argument_spec():
    """The options every module that works on a server's catalog takes (doc fragment: catalog)."""
    return dict(
        server=dict(type='str', required=True),
        barman_home=dict(type='path', default='/var/lib/barman'),
    )


class ServerLayout(object):
    """Paths of one server's directory under the Barman home, as Barman lays them out."""

    def __init__(self, barman_home, server):
        if not isinstance(barman_home, str) or not os.path.isabs(barman_home):
            raise InvalidName(
                'Barman home %s is not an absolute path' % _shown(barman_home),
                'Give the full path of the Barman home directory, for example /var/lib/barman',
                barman_home=barman_home,
            )
        self.barman_home = os.path.normpath(barman_home)
        self.server = validate_server_name(server)
        self.root = os.path.join(self.barman_home, server)
        self.meta_dir = os.path.join(self.root, 'meta')
        self.base_dir = os.path.join(self.root, 'base')
        self.wals_dir = os.path.join(self.root, 'wals')
        self.incoming_dir = os.path.join(self.root, 'incoming')
        self.errors_dir = os.path.join(self.root, 'errors')
        self.streaming_dir = os.path.join(self.root, 'streaming')
        self.xlog_db = os.path.join(self.wals_dir, '%s-xlog.db' % server)
        self.identity_file = os.path.join(self.root, 'identity.json')
        # Ours, not Barman's: failures of the background WAL processing, for check to report.
        self.process_log = os.path.join(self.root, 'archive-process.log')

    def __repr__(self):
        return 'ServerLayout(%r, %r)' % (self.barman_home, self.server)

    def backup_info_path(self, backup_id):
        return os.path.join(self.meta_dir, '%s-backup.info' % validate_backup_id(backup_id))

    def backup_dir(self, backup_id):
        return os.path.join(self.base_dir, validate_backup_id(backup_id))

    def keep_path(self, backup_id):
        """Barman's (3.13.3+) keep annotation of a backup: ``meta/<backup_id>-keep``, 'full' or 'standalone'."""
        return os.path.join(self.meta_dir, '%s-keep' % validate_backup_id(backup_id))

    def old_keep_path(self, backup_id):
        """Where Barman before 3.13.3 wrote the keep annotation; still read."""
        return os.path.join(self.backup_dir(backup_id), 'annotations', 'keep')

    def backup_data_dir(self, backup_id):
        return os.path.join(self.backup_dir(backup_id), 'data')

    def backup_tablespace_dir(self, backup_id, oid):
        if not _is_int(oid) or oid <= 0:
            raise InvalidName(
                'Tablespace oid %s is not a positive integer' % _shown(oid),
                'Use the oid from pg_tablespace',
                oid=oid,
            )
        return os.path.join(self.backup_dir(backup_id), str(oid))

    def wal_path(self, wal_name):
        """Where Barman keeps an archived WAL file: ``wals/<timeline+log id>/<name>``.

        Timeline history files have no log id and sit directly in ``wals/``.
        """
        parsed = parse_wal_name(wal_name)
        if parsed.kind == 'history':
            return os.path.join(self.wals_dir, wal_name)
        return os.path.join(self.wals_dir, wal_name[:16], wal_name)

    def lock_path(self, operation):
        """Barman's lock file for one operation on this server: ``<home>/.<server>-<operation>.lock``."""
        return os.path.join(self.barman_home, '.%s-%s.lock' % (self.server, validate_operation(operation)))

    def directories(self):
        """The directories a server needs, parents first; create them with mode 0700."""
        return [
            self.root,
            self.meta_dir,
            self.base_dir,
            self.wals_dir,
            self.incoming_dir,
            self.errors_dir,
            self.streaming_dir,
        ]


def ensure_directories(layout, mode=0o700):
    """Create the missing directories of ``layout`` with ``mode``; return the ones created."""
    created = []
    for path in layout.directories():
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            if not os.path.isdir(path):
                raise CatalogError(
                    '%s exists and is not a directory' % path,
                    'Move the file away so the server directory can be created',
                    path=path,
                ) from None
            continue
        os.chmod(path, mode)  # mkdir applies the umask
        created.append(path)
    return created


# ---------------------------------------------------------------------------------------------
# Atomic writes


def fsync_dir(path):
    """fsync a directory so a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path, data, mode=0o600):
    """Replace ``path`` with ``data`` (bytes or str, str is UTF-8) so readers see old or new, never half.

    Writes a temporary file in the same directory, fsyncs it, sets ``mode``, renames it over
    ``path`` and fsyncs the directory. On failure the temporary file is removed.
    """
    if isinstance(data, str):
        data = data.encode('utf-8')
    elif not isinstance(data, bytes):
        raise TypeError('atomic_write needs bytes or str, got %s' % type(data).__name__)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.%s.' % os.path.basename(path), suffix='.tmp')
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


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
        raise ValueError('%s is not an integer' % _shown(text))
    return int(text)


def _dump_int(value):
    if not _is_int(value):
        raise ValueError('an integer is needed, got %s' % _shown(value))
    return str(value)


def _load_status(text):
    if text not in STATUSES:
        raise ValueError('unknown status %s, expected one of %s' % (_shown(text), ', '.join(STATUSES)))
    return text


def _dump_status(value):
    return _load_status(_dump_str(value))


def _load_time(text):
    # Barman writes str(datetime): "2024-01-02 03:04:05.123456+00:00"; a naive time means local time.
    try:
        value = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError('%s is not a timestamp like 2024-01-02 03:04:05+00:00' % _shown(text)) from None
    return value if value.tzinfo is not None else value.astimezone()


def _dump_time(value):
    if not isinstance(value, datetime.datetime):
        raise ValueError('a datetime is needed, got %s' % _shown(value))
    return str(value if value.tzinfo is not None else value.astimezone())


def _literal(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError('%s is not a Python literal' % _shown(text)) from None


def _literal_field(kind, check):
    """Loader and dumper for fields Barman writes as repr() and reads with ast.literal_eval."""

    def load(text):
        value = _literal(text)
        if not check(value):
            raise ValueError('%s is not %s' % (_shown(text), kind))
        return value

    def dump(value):
        if not check(value):
            raise ValueError('%s is not %s' % (_shown(value), kind))
        return repr(value) if value else None

    return load, dump


def _is_str_list(value):
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_tablespace(item):
    return (
        isinstance(item, (tuple, list))
        and len(item) == 3
        and isinstance(item[0], str)
        and _is_int(item[1])
        and isinstance(item[2], str)
    )


def _load_tablespaces(text):
    # Barman: repr() of a list of (name, oid, location) tuples; an empty list reads as None.
    value = _literal(text)
    if not isinstance(value, list) or not all(_is_tablespace(item) for item in value):
        raise ValueError('%s is not a list of (name, oid, location) tuples' % _shown(text))
    return [Tablespace(*item) for item in value] or None


def _dump_tablespaces(value):
    # Accepts Tablespace tuples, (name, oid, location) sequences or dicts with those keys.
    if not isinstance(value, (list, tuple)):
        value = [value]
    items = [
        (item.get('name'), item.get('oid'), item.get('location')) if isinstance(item, dict) else item for item in value
    ]
    if not all(_is_tablespace(item) for item in items):
        raise ValueError('a list of (name, oid, location) is needed, got %s' % _shown(value))
    return repr([tuple(item) for item in items]) if items else None


def _load_ids(text):
    return text.split(',') if text else None


def _dump_ids(value):
    if not _is_str_list(value) or any(',' in item or not item for item in value):
        raise ValueError('a list of backup ids is needed, got %s' % _shown(value))
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
        'Cannot read backup.info %s, line %d %s: %s' % (source, number, _shown(line), why),
        BACKUP_INFO_HINT,
        path=source,
        line=number,
    )


def parse_backup_info(text, source='<text>'):
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
            raise _malformed(source, number, line, '%s is not a key name' % _shown(key))
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


def format_backup_info(info):
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
                'Cannot write key %s to backup.info: Barman does not read it back as a field' % _shown(key),
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


def backup_order_key(backup_id, info):
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


def ordered_backup_ids(infos):
    """The ids of ``infos`` ({backup_id: info}), oldest first by begin time (see backup_order_key)."""
    return sorted(infos, key=lambda backup_id: backup_order_key(backup_id, infos[backup_id]))


def backup_infos(layout):
    """{backup_id: info} of every backup of a server, an OrderedDict oldest first by begin time.
    A malformed file raises."""
    infos = {}
    if os.path.isdir(layout.meta_dir):
        for entry in os.listdir(layout.meta_dir):
            if entry.endswith('-backup.info'):
                backup_id = entry[: -len('-backup.info')]
                infos[backup_id] = read_backup_info(os.path.join(layout.meta_dir, entry))
    return collections.OrderedDict((backup_id, infos[backup_id]) for backup_id in ordered_backup_ids(infos))


def archive_origin(infos, keeps):
    """Where a server's WAL archive must be continuous from, and the islands before that point.

    ``infos`` maps backup ids to backup.info dicts, ``keeps`` backup ids to their keep annotation. As in
    Barman, a backup kept ``standalone`` needs only its own WAL (begin_wal..end_wal), and retention
    removes the WAL after it: continuity starts at the oldest DONE backup kept for point-in-time recovery
    (not kept standalone; the newest DONE backup when all are), and each standalone backup older than
    that is an island. Returns dict(backup_id, begin_wal, islands=[dict(backup_id, begin_wal, end_wal)]),
    backup_id and begin_wal None without a DONE backup.
    """
    done = [b for b in ordered_backup_ids(infos) if infos[b]['status'] == DONE and infos[b].get('begin_wal')]
    full = [b for b in done if keeps.get(b) != 'standalone'] or done[-1:]
    if not full:
        return dict(backup_id=None, begin_wal=None, islands=[])
    origin = full[0]
    islands = [
        dict(backup_id=b, begin_wal=infos[b]['begin_wal'], end_wal=infos[b].get('end_wal') or infos[b]['begin_wal'])
        for b in done[: done.index(origin)]
    ]
    return dict(backup_id=origin, begin_wal=infos[origin]['begin_wal'], islands=islands)


def read_backup_info(path):
    """Parse the backup.info at ``path``; raises MalformedBackupInfo, or OSError if unreadable."""
    with open(path, 'rb') as handle:
        data = handle.read()
    try:
        text = data.decode('utf-8')
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b'\n') + 1
        raise _malformed(path, line, data.splitlines()[line - 1], 'it is not UTF-8') from None
    return parse_backup_info(text, source=path)


def write_backup_info(path, info):
    """Write ``info`` to ``path`` atomically (mode 0600)."""
    atomic_write(path, format_backup_info(info), 0o600)


# ---------------------------------------------------------------------------------------------
# xlog.db


_TOKEN_RE = re.compile(r'[A-Za-z0-9_.+-]+\Z')


def _check_token(what, value):
    if value is None:
        return 'None'
    if not isinstance(value, str) or not _TOKEN_RE.match(value) or value == 'None':
        raise InvalidName(
            'xlog.db %s %s is not a single word' % (what, _shown(value)),
            'Use None or a name such as gzip, lz4 or zstd',
            value=value,
        )
    return value


def format_xlog_db_line(name, size, time, compression=None, encryption=None):
    """One xlog.db line, as Barman writes it: ``name\\tsize\\ttime\\tcompression\\tencryption\\n``."""
    parse_wal_name(name)
    if not _is_int(size) or size < 0:
        raise InvalidName('xlog.db size %s is not a byte count' % _shown(size), 'Use the file size', size=size)
    if isinstance(time, bool) or not isinstance(time, (int, float)) or math.isnan(time):
        raise InvalidName(
            'xlog.db time %s is not a number' % _shown(time),
            'Use the mtime in seconds since epoch',
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


def parse_xlog_db_line(line):
    """An XlogEntry from one xlog.db line; lines with 3 or 4 fields (older Barman) are accepted.

    Raises ValueError (MalformedXlogDb) with the reason.
    """
    parts = line.split()
    if not 3 <= len(parts) <= 5:
        raise MalformedXlogDb(
            'xlog.db line %s has %d fields, expected name, size, time, compression, encryption'
            % (_shown(line), len(parts)),
            XLOG_DB_HINT,
        )
    parts += [None] * (5 - len(parts))
    name, size, mtime, compression, encryption = parts
    try:
        parse_wal_name(name)
        size = _load_int(size)
        mtime = float(mtime)
    except ValueError as exc:
        raise MalformedXlogDb('xlog.db line %s is not valid: %s' % (_shown(line), exc), XLOG_DB_HINT) from None
    return XlogEntry(
        name,
        size,
        mtime,
        None if compression == 'None' else compression,
        None if encryption == 'None' else encryption,
    )


def read_xlog_db(path):
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


def append_xlog_db(path, entries):
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


# ---------------------------------------------------------------------------------------------
# identity.json


def _major_version(version):
    """Barman's identity version: the major version as text, '16' or '9.6'."""
    if version is None:
        return None
    if _is_int(version) and version < 1000:
        return str(version)
    if _is_int(version):
        return str(version // 10000) if version >= 100000 else '%d.%d' % (version // 10000, version // 100 % 100)
    parts = str(version).strip().split('.')
    return '.'.join(parts[:1] if parts[0].isdigit() and int(parts[0]) >= 10 else parts[:2])


def read_identity(path):
    """The dict in identity.json at ``path``, or None if the file does not exist."""
    try:
        with open(path, 'r', encoding='utf-8') as handle:
            text = handle.read()
    except FileNotFoundError:
        return None
    try:
        identity = json.loads(text)
    except ValueError as exc:
        identity = exc
    if not isinstance(identity, dict) or not identity.get('systemid'):
        raise MalformedIdentity(
            '%s is not a JSON object with a "systemid"' % path,
            'Restore it from a copy, or remove it to record the system id of the cluster at the next backup',
            path=path,
        )
    return identity


def check_identity(path, systemid, version=None):
    """Check that ``systemid`` is the one recorded in identity.json; record it if there is none.

    ``version`` is the PostgreSQL major version ('16', or 160002 from server_version_num).
    Returns the recorded identity. Raises IdentityMismatch for a different system id.
    """
    systemid = str(systemid)
    if not systemid.isdigit():
        raise InvalidName(
            'PostgreSQL system identifier %s is not a number' % _shown(systemid),
            'Take it from pg_control_system() or IDENTIFY_SYSTEM',
            systemid=systemid,
        )
    recorded = read_identity(path)
    if recorded is None:
        recorded = {'systemid': systemid, 'version': _major_version(version)}
        atomic_write(path, json.dumps(recorded, indent=4, sort_keys=True) + '\n', 0o600)
        return recorded
    if str(recorded['systemid']) != systemid:
        raise IdentityMismatch(
            'PostgreSQL system identifier %s does not match %s recorded in %s: this is another cluster'
            % (systemid, recorded['systemid'], path),
            'Back up a different cluster under a new server name. If this cluster replaced the old one '
            'on purpose, move the old server directory (with its backups) away first',
            path=path,
            systemid=systemid,
            recorded_systemid=recorded['systemid'],
        )
    return recorded


# ---------------------------------------------------------------------------------------------
# Locks


def read_lock_holder(path):
    """What the lock file says about its last holder: dict(pid, operation, started), values may be None."""
    holder = {'pid': None, 'operation': None, 'started': None}
    try:
        with open(path, 'r', encoding='utf-8', errors='replace') as handle:
            lines = handle.read(4096).splitlines()
    except OSError:
        return holder
    if lines and lines[0].strip().isdigit():
        holder['pid'] = int(lines[0])
    if len(lines) > 1:
        holder['operation'] = lines[1].strip() or None
    if len(lines) > 2:
        holder['started'] = lines[2].strip() or None
    return holder


class ServerLock(object):
    """Exclusive ``flock`` on a per-server, per-operation lock file, as a context manager.

    ``layout_or_path`` is a ServerLayout (the file is ``layout.lock_path(operation)``, the one
    Barman uses) or the lock file path. The kernel drops the lock when the holder exits, however
    it dies. The file keeps the holder's pid (first line, as Barman writes it), the operation and
    the start time. A busy lock raises LockBusy, after retrying for ``wait_seconds``.
    """

    def __init__(self, layout_or_path, operation, wait_seconds=0, poll_seconds=0.1):
        self.operation = validate_operation(operation)
        if isinstance(layout_or_path, ServerLayout):
            self.path = layout_or_path.lock_path(operation)
        else:
            self.path = os.path.abspath(layout_or_path)
        self.wait_seconds = wait_seconds
        self.poll_seconds = poll_seconds
        self.fd = None

    def _open(self):
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LockError(
                'Cannot open lock file %s: %s' % (self.path, exc.strerror),
                'Check that its directory exists and that this user can write there',
                lock_path=self.path,
            ) from None

    def _try_lock(self, fd):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                return False
            raise
        return True

    def _busy(self):
        holder = read_lock_holder(self.path)
        who = 'process %s' % holder['pid'] if holder['pid'] else 'another process'
        details = ', '.join('%s %s' % (key, holder[key]) for key in ('operation', 'started') if holder[key] is not None)
        waited = ' after waiting %ss' % self.wait_seconds if self.wait_seconds else ''
        hint = 'Wait for it to finish and retry'
        if holder['pid']:
            hint += ', or check what pid %s is (ps -p %s): the lock is released as soon as that process exits' % (
                holder['pid'],
                holder['pid'],
            )
        return LockBusy(
            'The %s lock of %s is held by %s%s%s'
            % (self.operation, self.path, who, ' (%s)' % details if details else '', waited),
            hint,
            lock_path=self.path,
            operation=self.operation,
            holder_pid=holder['pid'],
            holder_operation=holder['operation'],
            holder_started=holder['started'],
        )

    def acquire(self):
        if self.fd is not None:
            return self
        fd = self._open()
        try:
            deadline = time.monotonic() + (self.wait_seconds or 0)
            while not self._try_lock(fd):
                if time.monotonic() >= deadline:
                    raise self._busy()
                time.sleep(self.poll_seconds)
            started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
            content = ('%d\n%s\n%s\n' % (os.getpid(), self.operation, started)).encode('utf-8')
            os.ftruncate(fd, 0)
            os.pwrite(fd, content, 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self):
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, exc_type, exc, traceback):
        self.release()
