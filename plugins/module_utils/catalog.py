# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a server's catalog lives and how it is written: server names and backup ids, the paths of
``<barman_home>/<server>/`` as Barman lays them out, and atomic writes.

The formats of the files in it have their own modules: infofile (backup.info), xlogdb (xlog.db),
identityfile (identity.json) and lockfile (the per-operation lock files). Everything written must stay
readable by Barman 3.19.
"""

import datetime
import os
import re
import tempfile
from typing import List, Optional, Union

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError, is_int, shown
from ansible_collections.barman.postgresql.plugins.module_utils.wal import parse_wal_name

BACKUP_ID_FORMAT = '%Y%m%dT%H%M%S'
# 'all' is refused by Barman as a server name; 'barman' is its global configuration section.
RESERVED_SERVER_NAMES = ('all', 'barman')
MAX_SERVER_NAME_LENGTH = 64

SERVER_NAME_HINT = (
    'Use 1 to 64 letters, digits, "-", "_" or ".", starting with a letter or digit, for example "pg-main"'
)
BACKUP_ID_HINT = 'A backup id is a local timestamp YYYYMMDDTHHMMSS, for example 20240102T030405'


class CatalogError(BarmanError):
    """Something wrong with the server catalog on disk."""

    code = 'CATALOG_DAMAGED'


class InvalidName(CatalogError, ValueError):
    """A server name, backup id, WAL name or lock operation that is not acceptable."""

    code = 'INVALID_NAME'


def now_utc() -> datetime.datetime:
    """The current time, aware, in UTC: what the catalog's records and reports compare and write."""
    return datetime.datetime.now(datetime.timezone.utc)


# Names


_SERVER_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]*\Z')
_BACKUP_ID_RE = re.compile(r'[0-9]{8}T[0-9]{6}\Z')
_OPERATION_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z')


def validate_server_name(name: str) -> str:
    """Return ``name`` if it is a usable server name, else raise InvalidName."""

    def refuse(why):
        raise InvalidName('Server name %s is not valid: %s' % (shown(name), why), SERVER_NAME_HINT, server=name)

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
        refuse('it contains %s' % ', '.join(shown(c) for c in bad))
    if name.lower() in RESERVED_SERVER_NAMES:
        refuse('"%s" is reserved by Barman' % name)
    return name


def new_backup_id(dt: datetime.datetime) -> str:
    """Backup id for a datetime: ``YYYYMMDDTHHMMSS``.

    Barman uses the local wall-clock time; an aware datetime is converted to local time first.
    """
    if not isinstance(dt, datetime.datetime):
        raise InvalidName(
            'Cannot make a backup id from %s: a datetime is needed' % shown(dt),
            BACKUP_ID_HINT,
            code='INVALID_ARGUMENT',
            value=dt,
        )
    if dt.tzinfo is not None:
        dt = dt.astimezone().replace(tzinfo=None)
    return dt.strftime(BACKUP_ID_FORMAT)


def validate_backup_id(text: str) -> str:
    """Return ``text`` if it is a backup id (``YYYYMMDDTHHMMSS``, a real date), else raise InvalidName."""

    def refuse(why):
        raise InvalidName('Backup id %s is not valid: %s' % (shown(text), why), BACKUP_ID_HINT, backup_id=text)

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


def backup_id_time(backup_id: str) -> datetime.datetime:
    """The naive (local) datetime a backup id stands for."""
    return datetime.datetime.strptime(validate_backup_id(backup_id), BACKUP_ID_FORMAT)


def validate_operation(operation: str) -> str:
    """Return ``operation`` if it can name a lock file, else raise InvalidName."""
    if not isinstance(operation, str) or not _OPERATION_RE.match(operation):
        raise InvalidName(
            'Lock operation %s is not valid' % shown(operation),
            'Use 1 to 64 letters, digits, "-" or "_", starting with a letter or digit, for example "backup"',
            operation=operation,
        )
    return operation


# Paths


def catalog_argument_spec() -> dict:
    """The options every module that works on a server's catalog takes (doc fragment: catalog)."""
    return dict(
        server=dict(type='str', required=True),
        barman_home=dict(type='path', default='/var/lib/barman'),
    )


class ServerLayout:
    """Paths of one server's directory under the Barman home, as Barman lays them out."""

    def __init__(self, barman_home: str, server: str) -> None:
        if not isinstance(barman_home, str) or not os.path.isabs(barman_home):
            raise InvalidName(
                'Barman home %s is not an absolute path' % shown(barman_home),
                'Give the full path of the Barman home directory, for example /var/lib/barman',
                code='INVALID_ARGUMENT',
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

    def __repr__(self) -> str:
        return 'ServerLayout(%r, %r)' % (self.barman_home, self.server)

    def backup_info_path(self, backup_id: str) -> str:
        return os.path.join(self.meta_dir, '%s-backup.info' % validate_backup_id(backup_id))

    def backup_dir(self, backup_id: str) -> str:
        return os.path.join(self.base_dir, validate_backup_id(backup_id))

    def keep_path(self, backup_id: str) -> str:
        """Barman's (3.13.3+) keep annotation of a backup: ``meta/<backup_id>-keep``, 'full' or 'standalone'."""
        return os.path.join(self.meta_dir, '%s-keep' % validate_backup_id(backup_id))

    def old_keep_path(self, backup_id: str) -> str:
        """Where Barman before 3.13.3 wrote the keep annotation; still read."""
        return os.path.join(self.backup_dir(backup_id), 'annotations', 'keep')

    def backup_data_dir(self, backup_id: str) -> str:
        return os.path.join(self.backup_dir(backup_id), 'data')

    def manifest_path(self, backup_id: str) -> str:
        """The backup's ``backup_manifest`` (PostgreSQL's format), where pg_basebackup puts it: in the data."""
        return os.path.join(self.backup_data_dir(backup_id), 'backup_manifest')

    def verification_path(self, backup_id: str) -> str:
        """Ours, not Barman's (which ignores it): the outcome of the backup's last verification."""
        return os.path.join(self.meta_dir, '%s-verification.json' % validate_backup_id(backup_id))

    def backup_tablespace_dir(self, backup_id: str, oid: int) -> str:
        if not is_int(oid) or oid <= 0:
            raise InvalidName(
                'Tablespace oid %s is not a positive integer' % shown(oid),
                'Use the oid from pg_tablespace',
                code='INVALID_ARGUMENT',
                oid=oid,
            )
        return os.path.join(self.backup_dir(backup_id), str(oid))

    def wal_path(self, wal_name: str) -> str:
        """Where Barman keeps an archived WAL file: ``wals/<timeline+log id>/<name>``.

        Timeline history files have no log id and sit directly in ``wals/``.
        """
        parsed = parse_wal_name(wal_name)
        if parsed.kind == 'history':
            return os.path.join(self.wals_dir, wal_name)
        return os.path.join(self.wals_dir, wal_name[:16], wal_name)

    def lock_path(self, operation: str) -> str:
        """Barman's lock file for one operation on this server: ``<home>/.<server>-<operation>.lock``."""
        return os.path.join(self.barman_home, '.%s-%s.lock' % (self.server, validate_operation(operation)))

    def directories(self) -> List[str]:
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


def ensure_directories(layout: ServerLayout, mode: int = 0o700) -> List[str]:
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


# Atomic writes


def read_text(path: str) -> Optional[str]:
    """The text of a catalog file, None when it does not exist."""
    try:
        with open(path, 'r', encoding='utf-8') as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def fsync_dir(path: str) -> None:
    """fsync a directory so a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: Union[bytes, str], mode: int = 0o600) -> None:
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
