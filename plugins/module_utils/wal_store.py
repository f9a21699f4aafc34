# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One server's WAL archive on the backup server: receive, store, compress, serve and check WAL files.

A delivery lands durably in ``incoming/`` (temp file, fsync, rename) and is acknowledged at once, so
that PostgreSQL can recycle the segment; compressing it into ``wals/`` and indexing it in xlog.db
happens after the acknowledgement (``process_incoming``), exactly as Barman's archiver does.
"""

import bz2
import datetime
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile
import time
from stat import S_ISREG
from typing import Any, BinaryIO, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    checksum,
    identityfile,
    infofile,
    lockfile,
    wal,
    xlogdb,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

COMPRESSIONS = ('gzip', 'zstd', 'lz4', 'none')
# gzip level 1: about 2.5x faster than the default on WAL, for a file barely larger.
GZIP_LEVEL = 1
CHUNK = 1024 * 1024
MAX_TEXT_FILE_SIZE = 1024 * 1024
# A temporary file or a directory being deleted that has not changed for this long lost its writer.
STALE_SECONDS = 3600
# The furthest a delivery may lie past the newest WAL the archive or a backup knows: 64 GiB of WAL (4096
# segments of 16 MB). PostgreSQL archives in order, so a file further ahead is another cluster's or forged.
MAX_WAL_AHEAD_BYTES = 64 * 1024**3
_TEXT_KINDS = ('history', 'backup')
_HASH_DIR_RE = re.compile('[0-9A-F]{16}\\Z')
_WAL_NAME_START_RE = re.compile('[0-9A-F]{8}(?:[0-9A-F]{16}|\\.history)')  # a cheap first sieve
_RANDOM_PART_RE = re.compile('[A-Za-z0-9_]+\\Z')  # what mkstemp puts between its prefix and suffix
_MAGIC = (
    (b'\x1f\x8b', 'gzip'),
    (b'\x28\xb5\x2f\xfd', 'zstd'),
    (b'\x04\x22\x4d\x18', 'lz4'),
    (b'BZh', 'bzip2'),
)
# Compressions done by an external program: argv to compress stdin to stdout, and to decompress.
_PROGRAMS = {
    'zstd': (['zstd', '-q', '-1', '-c'], ['zstd', '-q', '-d', '-c']),
    'lz4': (['lz4', '-q', '-1', '-c'], ['lz4', '-q', '-d', '-c']),
}


class ArchiveError(BarmanError):
    """The archive refused a file or could not serve one."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


class RefusedWal(ArchiveError, ValueError):
    """A delivery that is not a valid file of this server: sending it again will not help."""

    code = 'WAL_REFUSED'


class DuplicateWal(ArchiveError):
    """A different file arrived under the name of one already archived."""

    code = 'WAL_DUPLICATE'


class WalNotFound(ArchiveError):
    """The archive does not hold the requested file."""

    code = 'WAL_NOT_FOUND'


def detect_compression(path: str) -> Optional[str]:
    """The compression of a stored file from its first bytes (xlog.db is an index, not the truth)."""
    with open(path, 'rb') as handle:
        return compression_of(handle.read(4))


def compression_of(head: bytes) -> Optional[str]:
    """The compression whose magic number ``head`` (a file's first bytes) starts with, or None."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def _stream_through(argv, source, target):
    """Pipe source (a file object) through argv into target; raise ArchiveError if it fails."""
    try:
        target.fileno()
        into = target
    except (AttributeError, OSError, io.UnsupportedOperation):  # in memory (a fetch's frame): read the pipe
        into = subprocess.PIPE
    proc = subprocess.Popen(argv, stdin=source, stdout=into, stderr=subprocess.PIPE)
    if into is subprocess.PIPE:
        out, err = proc.communicate()
        target.write(out)
    else:
        err = proc.communicate()[1]
    if proc.returncode != 0:
        raise ArchiveError(
            '%s failed with exit code %d: %s' % (argv[0], proc.returncode, err.decode(errors='replace').strip()),
            'Install %s on the backup server, or choose another compression' % argv[0],
            code='COMPRESSION_FAILED',
        )


def copy_decompressed(path: str, target: Any, keep: Sequence[str] = ()) -> Optional[str]:
    """Write the original content of a stored file to the binary file object ``target``, or its bytes as
    stored when stored in a compression of ``keep`` (the reader decompresses); that compression, or None.

    The compression comes from the file's first bytes: ours, or Barman's (which compresses history
    files too). A history or backup history file is validated text on arrival, and such text never
    begins with a compression's magic number.
    """
    with open(path, 'rb') as source:
        # pread: the file's offset stays at 0 for a decompressing program that reads the descriptor itself.
        compression = compression_of(os.pread(source.fileno(), 4, 0))
        if compression in keep:
            shutil.copyfileobj(source, target, CHUNK)
            return compression
        if compression in _PROGRAMS:
            target.flush()
            _stream_through(_PROGRAMS[compression][1], source, target)
            return None
        reader = {'gzip': lambda raw: gzip.GzipFile(fileobj=raw), 'bzip2': bz2.BZ2File}.get(compression)
        shutil.copyfileobj(reader(source) if reader else source, target, CHUNK)
    return None


def content_digest(path: str) -> str:
    """sha256 of a stored file's original (decompressed) content."""
    digest = hashlib.sha256()
    compression = detect_compression(path)
    if compression in _PROGRAMS:
        proc = subprocess.Popen(_PROGRAMS[compression][1] + ['--', path], stdout=subprocess.PIPE)
        for block in iter(lambda: proc.stdout.read(CHUNK), b''):
            digest.update(block)
        if proc.wait() != 0:
            raise ArchiveError('cannot decompress %s with %s' % (path, compression), code='COMPRESSION_FAILED')
    else:
        copy_decompressed(path, _DigestSink(digest))
    return digest.hexdigest()


class _DigestSink:
    """A file-like sink that only hashes what is written."""

    def __init__(self, digest):
        self.write = digest.update

    def flush(self):
        pass


def _name_start(name, segment_size):
    """The LSN where the segment a WAL file name points at starts, for ``segment_size``."""
    parsed = wal.parse_wal_name(name)
    return parsed.log * wal.LOG_ID_BYTES + parsed.seg * segment_size


def _furthest(names):
    """The WAL file name furthest ahead (log id, then segment; history files have no place), or None.

    Log id and segment are fixed-width upper-case hex, so their text sorts as their value: one pass,
    and only the winner is parsed (a busy incoming/ may hold thousands of names).
    """
    placed = [n for n in names if n[8:9] != '.']
    while placed:
        furthest = max(placed, key=lambda n: (n[8:24], n))
        if wal.is_wal_name(furthest):
            return furthest
        placed.remove(furthest)
    return None


def _gib(nbytes):
    return '%.1f GiB' % (nbytes / 1024.0**3)


def _fsync_file(handle):
    handle.flush()
    os.fsync(handle.fileno())


class WalArchive:
    """The WAL archive of one server under ``barman_home``."""

    def __init__(self, barman_home: str, server: str) -> None:
        self.layout = catalog.ServerLayout(barman_home, server)
        if not os.path.isdir(self.layout.incoming_dir):
            raise ArchiveError(
                'the archive of server %s does not exist under %s' % (server, self.layout.barman_home),
                'Check the server name, or run the setup playbook (playbooks/setup.yml) for this server',
                code='NO_SUCH_SERVER',
                server=server,
            )

    # -- where files are ---------------------------------------------------------------------

    def locate(self, name: str) -> Optional[str]:
        """Path of an archived file (compressed in wals/ or still in incoming/), or None."""
        for path in (self.layout.wal_path(name), os.path.join(self.layout.incoming_dir, name)):
            if os.path.isfile(path):
                return path
        return None

    def archived_names(self) -> List[str]:
        """Every WAL file name held (wals/ and incoming/), sorted in WAL order."""
        names = set()
        for directory in [self.layout.wals_dir, self.layout.incoming_dir] + self._hash_dirs():
            for entry in os.listdir(directory):
                if wal.is_wal_name(entry):
                    names.add(entry)
        return sorted(names)

    def _hash_dirs(self):
        if not os.path.isdir(self.layout.wals_dir):
            return []
        return [
            os.path.join(self.layout.wals_dir, entry)
            for entry in sorted(os.listdir(self.layout.wals_dir))
            if len(entry) == 16 and os.path.isdir(os.path.join(self.layout.wals_dir, entry))
        ]

    # -- receiving -----------------------------------------------------------------------------

    def receive(
        self,
        name: str,
        size: int,
        source: BinaryIO,
        digest_line_reader: Callable[[], str],
        checksum_name: str = checksum.WHEN_UNNAMED,
    ) -> str:
        """Store one delivery: ``size`` bytes from ``source``, then their checksum (of the kind
        ``checksum_name``, in hex) from ``digest_line_reader()``.

        Returns 'stored' or 'identical' (the same file was already archived). Raises ArchiveError
        (nothing kept) or DuplicateWal (the file is kept in errors/ for a human).
        """
        return self.store(*self.take(name, size, source, digest_line_reader, checksum_name))

    def take(
        self,
        name: str,
        size: int,
        source: BinaryIO,
        digest_line_reader: Callable[[], str],
        checksum_name: str = checksum.WHEN_UNNAMED,
    ) -> Tuple[str, str]:
        """First half of receive: read a delivery into a temporary file of incoming/, checking its
        checksum; returns (name, temporary path) for store(). Nothing is durable yet."""
        parsed = wal.parse_wal_name(name)
        limit = wal.MAX_BACKUP_HISTORY_SIZE if parsed.kind == 'backup' else MAX_TEXT_FILE_SIZE
        if parsed.kind in _TEXT_KINDS and size > limit:
            raise RefusedWal('%s is %d bytes, too large for a %s file' % (name, size, parsed.kind), wal=name)
        running = checksum.new(checksum_name)
        fd, tmp = tempfile.mkstemp(dir=self.layout.incoming_dir, prefix='.%s.' % name, suffix='.tmp')
        try:
            with os.fdopen(fd, 'wb') as handle:
                self._copy_exactly(source, handle, size, name, running)
            digest, sent_digest = running.hexdigest(), digest_line_reader()
            if sent_digest != digest:
                raise ArchiveError(
                    '%s arrived damaged: %s %s, the sender computed %s' % (name, checksum_name, digest, sent_digest),
                    'Nothing was stored; PostgreSQL will send it again',
                    code='WAL_DAMAGED',
                    wal=name,
                )
        except BaseException:
            os.unlink(tmp)
            raise
        return name, tmp

    def store(self, name: str, tmp: str) -> str:
        """Second half of receive: make the file durable, validate it and publish it in incoming/."""
        try:
            with open(tmp, 'rb+') as handle:
                _fsync_file(handle)
            position = self._validate_content(wal.parse_wal_name(name), tmp, os.stat(tmp).st_size)
            return self._commit(name, tmp, position)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @staticmethod
    def _copy_exactly(source, handle, size, name, running):
        # One buffer for the whole file: a new 1 MiB block per read was a fresh mapping to fault in each time,
        # a cost paid for every segment of every server at once on the backup server.
        view = memoryview(bytearray(min(CHUNK, size) or 1))
        remaining = size
        while remaining:
            count = source.readinto(view[: min(CHUNK, remaining)])
            if not count:
                raise ArchiveError(
                    '%s was cut short: %d of %d bytes arrived' % (name, size - remaining, size),
                    'Nothing was stored; PostgreSQL will send it again',
                    code='WAL_DAMAGED',
                    wal=name,
                )
            running.update(view[:count])
            handle.write(view[:count])
            remaining -= count

    def _validate_content(self, parsed, path, size):
        """Check a delivery's content against its name; returns (the LSN it starts at, the segment size
        that places it), or None for a timeline history file."""
        if parsed.kind == 'history':
            with open(path, 'r', encoding='utf-8', errors='strict') as handle:
                wal.parse_timeline_history(handle.read(), parsed.timeline)
            return None
        if parsed.kind == 'backup':
            with open(path, 'rb') as handle:
                history = wal.check_backup_history(parsed.name, handle.read(wal.MAX_BACKUP_HISTORY_SIZE + 1))
            return history.start_lsn, history.segment_size
        if size == 0:
            raise RefusedWal('%s is empty' % parsed.name, 'Nothing was stored', wal=parsed.name)
        with open(path, 'rb') as handle:
            header = wal.parse_segment_header(handle.read(wal.LONG_PAGE_HEADER_SIZE), parsed.name)
        identity = identityfile.read_identity(self.layout.identity_file)
        wal.check_segment_content(parsed.name, header, size, identity and identity['systemid'])
        if identity is None:
            identityfile.check_identity(self.layout.identity_file, header.systemid)
        return header.page_address, header.segment_size

    def _commit(self, name, tmp, position=None):
        """Publish a received file under its name, unless that name is taken or the file is implausible."""
        with lockfile.ServerLock(self.layout, 'archive', wait_seconds=30):
            existing = self.locate(name)
            if existing is not None:
                if content_digest(existing) == content_digest(tmp):
                    return 'identical'
                kept = self._keep_in_errors(tmp, name, 'duplicate')
                raise DuplicateWal(
                    'refused %s: a different file with that name is already archived (%s); '
                    'the new one is kept as %s' % (name, existing, kept),
                    'Two clusters may be archiving under one server name, or a restored copy still archives. '
                    'Compare the two files before deciding which one is right',
                    wal=name,
                    kept=kept,
                )
            if position is not None:
                self._refuse_implausible(wal.parse_wal_name(name), *position)
            target = os.path.join(self.layout.incoming_dir, name)
            os.chmod(tmp, 0o600)
            os.rename(tmp, target)
            catalog.fsync_dir(self.layout.incoming_dir)
        return 'stored'

    def _refuse_implausible(self, parsed, start_lsn, segment_size):
        """Refuse a file PostgreSQL would not archive next: one on a timeline that nothing in the archive
        announced (PostgreSQL archives a timeline's history file before its first WAL), or one more than
        MAX_WAL_AHEAD_BYTES past the newest WAL the archive holds. A backup reads the server's position
        from PostgreSQL itself, so what the backups recorded vouches too; an empty archive takes any file."""
        newest, timelines = self._extent()
        if newest is None and not timelines:
            return
        vouched = None
        if parsed.timeline > 1 and parsed.timeline not in timelines:
            vouched = self._backups_extent(segment_size)
            if parsed.timeline not in vouched[1]:
                history = wal.history_file_name(parsed.timeline)
                raise RefusedWal(
                    'refused %s: the archive of %s holds no history file %s, nor any WAL of timeline %d; '
                    'PostgreSQL archives the history file of a new timeline before its first WAL, so this is '
                    'not a file of this server' % (parsed.name, self.layout.server, history, parsed.timeline),
                    'Nothing was stored. If the server did switch to timeline %d, send pg_wal/%s of the server '
                    'first (barman-wal-sender put pg_wal/%s, as archive_command does) or take a backup; '
                    'otherwise stop the other cluster that archives under this server name'
                    % (parsed.timeline, history, history),
                    wal=parsed.name,
                )
        if newest is None:
            return
        ahead = start_lsn - _name_start(newest, segment_size)
        if ahead > MAX_WAL_AHEAD_BYTES:
            vouched = vouched or self._backups_extent(segment_size)
            if vouched[0] is None or start_lsn - vouched[0] > MAX_WAL_AHEAD_BYTES:
                raise RefusedWal(
                    'refused %s: it starts at LSN %s, %s of WAL past the newest file in the archive of %s (%s), '
                    'more than the %s a server can write between two deliveries; PostgreSQL archives in order, '
                    'so this is not the next file of this server'
                    % (
                        parsed.name,
                        wal.format_lsn(start_lsn),
                        _gib(ahead),
                        self.layout.server,
                        newest,
                        _gib(MAX_WAL_AHEAD_BYTES),
                    ),
                    'Nothing was stored. Check which cluster archives under this server name (a restored or '
                    'cloned copy of it still archiving?). If the server really wrote that much WAL without '
                    'archiving it, take a backup (playbooks/backup.yml): WAL from its start on is accepted',
                    wal=parsed.name,
                )

    def _extent(self):
        """(the name of the WAL file furthest ahead, the timelines of the WAL files held), from the
        directory names and the newest log ids only. incoming/ is read before wals/, so that a file
        process_incoming moves meanwhile is seen in one or the other."""
        names = [e for e in os.listdir(self.layout.incoming_dir) if _WAL_NAME_START_RE.match(e)]
        top = os.listdir(self.layout.wals_dir) if os.path.isdir(self.layout.wals_dir) else []
        names += [e for e in top if wal.is_wal_name(e)]
        hash_dirs = [e for e in top if _HASH_DIR_RE.match(e) and os.path.isdir(os.path.join(self.layout.wals_dir, e))]
        timelines = set(int(prefix, 16) for prefix in set(e[:8] for e in hash_dirs + names)) - {0}
        newest = _furthest(names)
        # Newest log ids first: the first directory that holds a WAL file holds the furthest one.
        for log_id in sorted(set(e[8:] for e in hash_dirs), reverse=True):
            held = []
            for entry in (e for e in hash_dirs if e[8:] == log_id):
                held += [
                    n for n in os.listdir(os.path.join(self.layout.wals_dir, entry)) if _WAL_NAME_START_RE.match(n)
                ]
            newest_here = _furthest(held)
            if newest_here:
                newest = _furthest([newest_here] + ([newest] if newest else []))
                break
        return newest, timelines

    def _backups_extent(self, segment_size):
        """(the furthest WAL start LSN, the timelines) the server's backups recorded; nothing when the
        catalog cannot be read (a refusal then stands)."""
        try:
            infos = infofile.backup_infos(self.layout)
        except (catalog.CatalogError, OSError):
            return None, set()
        starts, timelines = [], set()
        for info in infos.values():
            for name in (info.get('begin_wal'), info.get('end_wal')):
                if name and wal.is_segment_name(name):
                    starts.append(_name_start(name, segment_size))
                    timelines.add(wal.timeline_of(name))
        return max(starts, default=None), timelines

    def _keep_in_errors(self, path, name, reason):
        stamp = datetime.datetime.utcnow().strftime('%Y%m%dT%H%M%S%f')
        kept = os.path.join(self.layout.errors_dir, '%s.%s.%s' % (name, stamp, reason))
        os.rename(path, kept)
        catalog.fsync_dir(self.layout.errors_dir)
        return kept

    # -- serving ---------------------------------------------------------------------------------

    def send(self, name: str, target: BinaryIO, keep: Sequence[str] = ()) -> Optional[str]:
        """Write the original content of an archived file to ``target`` (a binary file object), or the
        stored bytes as they are when stored in a compression of ``keep`` (the reader decompresses:
        fewer bytes to carry); that compression, or None."""
        wal.parse_wal_name(name)
        path = self.locate(name)
        if path is None:
            raise WalNotFound('%s is not in the archive of server %s' % (name, self.layout.server), wal=name)
        try:
            return copy_decompressed(path, target, keep)
        except FileNotFoundError as error:
            if error.filename != path:  # a decompressing program missing: never "not archived"
                raise
            # Moved from incoming/ into wals/ (or removed) since located: the caller looks again.
            raise WalNotFound('%s left %s while being read' % (name, path), wal=name) from None

    # -- processing incoming/ into wals/ -------------------------------------------------------------

    def process_incoming(
        self, compression: str = 'gzip', dry_run: bool = False, wait_seconds: Optional[float] = 60
    ) -> Dict[str, List[Any]]:
        """Move every delivered file from incoming/ into wals/, compressed, and index it in xlog.db.

        Returns dict(archived=[names], identical=[names], errors=[dict(name, kept, reason)]). A file
        that is not a WAL file, or differs from the archived file of the same name, goes to errors/.
        """
        if compression not in COMPRESSIONS:
            raise ArchiveError(
                'compression %r is not supported' % compression,
                'Use one of %s' % ', '.join(COMPRESSIONS),
                code='INVALID_ARGUMENT',
            )
        result = dict(archived=[], identical=[], errors=[])
        with lockfile.ServerLock(self.layout, 'archive-process', wait_seconds=wait_seconds):
            if not dry_run:
                self._sweep_temp_files()
            for entry in sorted(os.listdir(self.layout.incoming_dir)):
                path = os.path.join(self.layout.incoming_dir, entry)
                if entry.startswith('.') or not os.path.isfile(path):
                    continue  # a delivery in progress: it never blocks a retry (each has its own temp name)
                if dry_run:
                    result['archived' if wal.is_wal_name(entry) else 'errors'].append(entry)
                    continue
                self._process_one(entry, path, compression, result)
        return result

    def sweep_temp_files(self) -> List[str]:
        """Remove the temporary files killed processes left in incoming/ and wals/ (see _sweep_temp_files);
        returns their paths. Skipped, returning [], while a processing run holds the archive: it sweeps."""
        try:
            with lockfile.ServerLock(self.layout, 'archive-process'):
                return self._sweep_temp_files()
        except lockfile.LockBusy:
            return []

    def _sweep_temp_files(self):
        """With the archive-process lock held: remove our temporary files (a delivery of a killed receiver
        in incoming/, a half-written copy of a killed processing run in wals/, a torn xlog.db rewrite)
        that nothing changed for STALE_SECONDS; a young one may be in use and stays."""
        swept = []
        for directory in [self.layout.incoming_dir, self.layout.wals_dir] + self._hash_dirs():
            for entry in os.listdir(directory):
                path = os.path.join(directory, entry)
                if not self._is_temp_name(entry):
                    continue
                try:
                    stat = os.lstat(path)
                    if not S_ISREG(stat.st_mode) or time.time() - stat.st_mtime <= STALE_SECONDS:
                        continue
                    os.unlink(path)
                except OSError:
                    continue  # its writer finished meanwhile, or it is not ours to remove
                swept.append(path)
        return swept

    def _is_temp_name(self, entry):
        """A temporary name we make: '.<WAL file or xlog.db name>.<random>[.tmp]' (mkstemp's prefix)."""
        if not entry.startswith('.'):
            return False
        name, _dot, random_part = (entry[1:-4] if entry.endswith('.tmp') else entry[1:]).rpartition('.')
        return bool(_RANDOM_PART_RE.match(random_part)) and (
            wal.is_wal_name(name) or name == os.path.basename(self.layout.xlog_db)
        )

    def _process_one(self, name, path, compression, result):
        if not wal.is_wal_name(name):
            result['errors'].append(dict(name=name, kept=self._keep_in_errors(path, name, 'unknown'), reason='unknown'))
            return
        target = self.layout.wal_path(name)
        if os.path.exists(target):
            if content_digest(target) == content_digest(path):
                os.unlink(path)
                catalog.fsync_dir(self.layout.incoming_dir)
                self._index_if_missing(name, target)
                result['identical'].append(name)
            else:
                kept = self._keep_in_errors(path, name, 'duplicate')
                result['errors'].append(dict(name=name, kept=kept, reason='duplicate'))
            return
        directory = os.path.dirname(target)
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o700)
            catalog.fsync_dir(self.layout.wals_dir)
        stored_as = self._store_compressed(path, target, compression, wal.parse_wal_name(name).kind)
        stat = os.stat(target)  # xlog.db records the stored file, as Barman does
        with lockfile.ServerLock(self.layout, 'xlogdb', wait_seconds=60):
            xlogdb.append_xlog_db(self.layout.xlog_db, [(name, stat.st_size, stat.st_mtime, stored_as)])
        os.unlink(path)
        catalog.fsync_dir(self.layout.incoming_dir)
        result['archived'].append(name)

    @staticmethod
    def _store_compressed(path, target, compression, kind):
        """Write target from path, compressed unless it is a small text file; return the compression used."""
        if kind in ('history', 'backup') or compression == 'none':
            compression = None
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix='.%s.' % os.path.basename(target))
        try:
            with os.fdopen(fd, 'wb') as handle, open(path, 'rb') as source:
                if compression == 'gzip':
                    with gzip.GzipFile(filename='', mode='wb', fileobj=handle, compresslevel=GZIP_LEVEL, mtime=0) as z:
                        shutil.copyfileobj(source, z, CHUNK)
                elif compression in _PROGRAMS:
                    _stream_through(_PROGRAMS[compression][0], source, handle)
                else:
                    shutil.copyfileobj(source, handle, CHUNK)
                _fsync_file(handle)
            os.chmod(tmp, 0o600)
            os.rename(tmp, target)
            catalog.fsync_dir(os.path.dirname(target))
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return compression

    def _index_if_missing(self, name, path):
        with lockfile.ServerLock(self.layout, 'xlogdb', wait_seconds=60):
            if any(entry.name == name for entry in xlogdb.read_xlog_db(self.layout.xlog_db)):
                return
            xlogdb.append_xlog_db(
                self.layout.xlog_db,
                [(name, os.stat(path).st_size, os.stat(path).st_mtime, detect_compression(path))],
            )

    # -- the index ------------------------------------------------------------------------------------

    def rebuild_xlog_db(self, dry_run: bool = False) -> Dict[str, Any]:
        """Rewrite xlog.db from the files in wals/; return dict(entries, added, removed)."""
        entries = []
        for directory in [self.layout.wals_dir] + self._hash_dirs():
            for entry in sorted(os.listdir(directory)):
                path = os.path.join(directory, entry)
                if wal.is_wal_name(entry) and os.path.isfile(path):
                    stat = os.stat(path)
                    entries.append(xlogdb.XlogEntry(entry, stat.st_size, stat.st_mtime, detect_compression(path), None))
        entries.sort(key=lambda e: e.name)
        with lockfile.ServerLock(self.layout, 'xlogdb', wait_seconds=60):
            before = set(e.name for e in xlogdb.read_xlog_db(self.layout.xlog_db))
            after = set(e.name for e in entries)
            if not dry_run:
                text = ''.join(xlogdb.format_xlog_db_line(*entry) for entry in entries)
                catalog.atomic_write(self.layout.xlog_db, text, 0o600)
        return dict(entries=len(entries), added=sorted(after - before), removed=sorted(before - after))

    # -- continuity ----------------------------------------------------------------------------------

    def history(self, timeline: int) -> List[wal.HistoryEntry]:
        """The entries of ``timeline``'s history file ([] for timeline 1 or when it is missing)."""
        if timeline == 1:
            return []
        name = wal.history_file_name(timeline)
        path = self.locate(name)
        if path is None:
            raise ArchiveError(
                'the history file %s of timeline %d is not in the archive' % (name, timeline),
                'Without it the archive cannot be followed across the timeline switch; '
                'copy it from the pg_wal directory of the server',
                code='ARCHIVE_GAP',
                wal=name,
            )
        sink = _Collector()
        copy_decompressed(path, sink)
        return wal.parse_timeline_history(sink.text(), timeline)

    @staticmethod
    def _segment_runs(names, segment_size):
        """The segments among ``names``, and {timeline: [(first, last)]} runs of their segment numbers."""
        segments = [n for n in names if wal.is_segment_name(n)]
        numbers = {}
        for name in segments:
            numbers.setdefault(wal.timeline_of(name), []).append(wal.segment_number(name, segment_size))
        return segments, dict((tli, wal.segment_runs(sorted(set(segnos)))) for tli, segnos in numbers.items())

    @staticmethod
    def _report(spans, runs, first, last, segment_size):
        holes = [hole for span in spans for hole in wal.uncovered(span, runs.get(span.timeline, []))]
        return dict(
            first=first,
            last=last,
            segments=sum(wal.span_length(s) for s in spans) - sum(wal.span_length(h) for h in holes),
            missing=[[wal.segment_name(h.timeline, n, segment_size) for n in (h.first, h.last)] for h in holes],
            ok=not holes,
        )

    def continuity(self, segment_size: int, first_name: Optional[str] = None) -> Dict[str, Any]:
        """Check that every segment from ``first_name`` (default: the oldest archived) to the newest
        archived one is there, following timeline switches. Works on ranges of segment numbers, so a
        file named far ahead costs no more than any other.

        Returns dict(first, last, timeline, segments, missing=[[first, last]...], ok).
        """
        names = self.archived_names()
        segments, runs = self._segment_runs(names, segment_size)
        if not segments:
            return dict(first=None, last=None, timeline=None, segments=0, missing=[], ok=first_name is None)
        newest_timeline = max(wal.timeline_of(n) for n in names)
        last = max((n for n in segments if wal.timeline_of(n) == newest_timeline), default=None)
        if last is None:  # promoted, nothing written on the new timeline yet
            newest_timeline = max(wal.timeline_of(n) for n in segments)
            last = max(n for n in segments if wal.timeline_of(n) == newest_timeline)
        first = first_name or min(segments, key=lambda n: (wal.segment_number(n, segment_size), n))
        if wal.timeline_of(first) == newest_timeline:
            # Nothing to cross: an archive begun after a promotion holds no history file, and needs none.
            path = [(newest_timeline, 0)]
        else:
            path = wal.timeline_path(newest_timeline, self.history(newest_timeline))
        spans = wal.recovery_spans(
            wal.segment_number(first, segment_size), wal.segment_number(last, segment_size), path, segment_size
        )
        report = self._report(spans, runs, first, last, segment_size)
        report['timeline'] = newest_timeline
        return report

    def islands(self, ranges: Iterable[Tuple[str, str]], segment_size: int) -> List[Dict[str, Any]]:
        """Whether each (begin_wal, end_wal) of ``ranges`` (a backup's own WAL, on its timeline) is all there.

        Returns one dict(first, last, segments, missing=[[first, last]...], ok) per range, in order.
        """
        _segments, runs = self._segment_runs(self.archived_names(), segment_size)
        reports = []
        for begin_wal, end_wal in ranges:
            first, last = wal.segment_number(begin_wal, segment_size), wal.segment_number(end_wal, segment_size)
            spans = [wal.SegmentSpan(wal.timeline_of(begin_wal), first, last)] if first <= last else []
            reports.append(self._report(spans, runs, begin_wal, end_wal, segment_size))
        return reports

    def incoming_backlog(self) -> List[str]:
        """Names delivered but not yet compressed into wals/."""
        return sorted(e for e in os.listdir(self.layout.incoming_dir) if not e.startswith('.'))


class _Collector:
    """A file-like sink that keeps what is written (small files only)."""

    def __init__(self):
        self.parts = []

    def write(self, data):
        self.parts.append(data)

    def flush(self):
        pass

    def text(self):
        return b''.join(self.parts).decode('utf-8')
