# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""restore_command's look-ahead: the next segments fetched while PostgreSQL replays this one.

PostgreSQL asks for one WAL file at a time and replays it before asking for the next, so a fetch per
call leaves replay waiting on the network. A get that fetched (or took) a segment makes sure one
fetcher runs (a lock in the spool): it keeps the LOOK_AHEAD segments after the last one asked for in
barman_wal_spool/ of the recovered copy's data directory (restore_command and recovery_end_command
run there; the spool is never in another directory), each checked as get checks it and written
temp-then-rename. A get finds its file there and renames it into place; the sender's shell launcher
does that without starting Python, and waits there for the segment the fetcher is fetching.

A look-ahead failure is never PostgreSQL's answer: the get that misses fetches the file itself. The
fetcher ends at a file the archive does not hold, when nothing was asked for IDLE_SECONDS, on SIGTERM,
or when the spool goes; recovery_end_command ("... end-recovery") stops it and removes the spool.
PostgreSQL keeps each restored segment in pg_wal/ and at the end of recovery asks again for the one
holding its last record: a get serves that from PostgreSQL's own copy when it is the very file fetched
(same device, inode, size and modification time, noted in the spool), checked as a fetch is. A pg_wal/
on another filesystem gets a new file by the move, so there the segment is fetched again.
Spool files are not fsynced: a spool written before the machine's last boot (boot_id) is discarded.
"""

import errno
import os
import re
import shutil
import signal
import sys
import time
import zlib
from typing import Any, Callable, Iterable, List, Optional, Set, TextIO, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import wal
from ansible_collections.barman.postgresql.runtime.spool import try_lock

SPOOL_DIR = 'barman_wal_spool'
LOOK_AHEAD = 8  # segments: the spool never holds more than 8 x 16 MiB (and one being fetched)
IDLE_SECONDS = 10  # the fetcher ends when PostgreSQL asked for nothing this long (a later get restarts it)
WAIT_SECONDS = 60  # a get waits this long for the segment the fetcher is fetching, then fetches it itself
POLL_SECONDS = 0.005
CHUNK = 1024 * 1024
STOP_SECONDS = 10  # end_recovery waits this long for a fetch under way to end
BOOT_ID = '/proc/sys/kernel/random/boot_id'
PART = '.part'
# Files of the spool that are not segments.
ASKED, SIZE, LOCK, PID, BOOT, FETCHED = 'asked', 'segment_size', 'fetcher.lock', 'fetcher.pid', 'boot_id', 'fetched'
FETCHING = 'fetching'  # the segment the fetcher waits for now
START = 'start'  # the backup's first segment (backup_label): fetched before PostgreSQL asks for it
# The identities of the segments fetched last: PostgreSQL keeps a restored segment in pg_wal/ under its
# name, and at the end of recovery asks again for the one holding its last record (long since taken).
KEPT = 'kept'
KEEP_IDS = LOOK_AHEAD + 2
_LABEL_START = re.compile(r'^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)$', re.M)


def next_segments(name: str, count: int, segment_size: int) -> List[str]:
    """The ``count`` segments after ``name`` on its timeline (fewer at the end of the WAL space)."""
    names = []
    for _index in range(count):
        try:
            name = wal.wal_segment_after(name, segment_size)
        except ValueError:
            break
        names.append(name)
    return names


def stale(entries: Iterable[str], wanted: Iterable[str], fetching: Optional[str]) -> List[str]:
    """Spool entries to remove: segments (complete or partial) not in ``wanted`` (already replayed,
    another timeline, or beyond the window), and partial files but the one being fetched."""
    wanted = set(wanted)
    doomed = []
    for entry in entries:
        name = entry[: -len(PART)] if entry.endswith(PART) else entry
        if not wal.is_wal_name(name) or wal.parse_wal_name(name).kind != 'segment':
            continue
        if name not in wanted or (entry.endswith(PART) and name != fetching):
            doomed.append(entry)
    return sorted(doomed)


def to_fetch(present: Set[str], wanted: Iterable[str]) -> Optional[str]:
    """The first wanted segment the spool does not hold yet."""
    for name in wanted:
        if name not in present:
            return name
    return None


def label_start(text: str) -> Optional[str]:
    """The first segment a backup_label names, or None."""
    match = _LABEL_START.search(text)
    return match.group(1) if match else None


def wanted_segments(asked: Optional[str], start: Optional[str], segment_size: Optional[int]) -> List[str]:
    """What the spool should hold: the LOOK_AHEAD segments after the one asked for; before any was
    asked for, the backup's first segment (its size, the cluster's segment size, comes with it), then
    the ones after it too, so that PostgreSQL's second call finds its segment waiting as well."""
    if asked is not None and segment_size is not None:
        return next_segments(asked, LOOK_AHEAD, segment_size)
    if asked is not None or not start:
        return []
    return [start] + (next_segments(start, LOOK_AHEAD, segment_size) if segment_size else [])


def _boot_id():
    try:
        with open(BOOT_ID) as handle:
            return handle.read().strip()
    except OSError:
        return 'unknown'


def _read(path):
    try:
        with open(path) as handle:
            return handle.read().strip()
    except (OSError, ValueError):
        return ''


def identity(stat: os.stat_result) -> str:
    """What a rename keeps and a rewrite or a new file changes: device, inode, size, modification time."""
    return '%d %d %d %d' % (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _write(path, text):
    tmp = '%s.tmp%d' % (path, os.getpid())
    with open(tmp, 'w') as handle:
        handle.write(text + '\n')
    os.rename(tmp, path)


class Spool:
    """barman_wal_spool/ of the data directory ``pgdata``."""

    def __init__(self, pgdata: str) -> None:
        self.path = os.path.join(pgdata, SPOOL_DIR)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def open(self) -> bool:
        """Make the spool ready for this boot; False if it cannot be (no look-ahead then)."""
        try:
            os.mkdir(self.path, 0o700)
        except FileExistsError:
            if _read(self.file(BOOT)) == _boot_id():
                return True
            # Written before a crash of the machine: its files may be torn. Start afresh.
            self.remove()
            try:
                os.mkdir(self.path, 0o700)
            except OSError:
                return False
        except OSError:
            return False
        _write(self.file(BOOT), _boot_id())
        return True

    def take(self, name: str, destination: str) -> bool:
        """Move a complete spooled ``name`` to ``destination``; False if the spool does not hold it.

        First the fetcher learns that recovery is at ``name``: it fetches from the next one on (not
        ``name`` again, were the note to come after the rename), and keeps ``name`` meanwhile."""
        source = self.file(name)
        size = _read(self.file(SIZE))
        try:
            if size.isdigit():
                _write(self.file(ASKED), name)
            if _read(self.file(BOOT)) != _boot_id():
                return False
            os.rename(source, destination)
        except OSError as error:
            if error.errno != errno.EXDEV:
                return False
            # pg_wal on another filesystem: copy, then rename (only a whole file gets the name).
            partial = destination + '.barman-partial'
            try:
                shutil.copyfile(source, partial)
                os.rename(partial, destination)
                os.unlink(source)
            except OSError:
                try:
                    os.unlink(partial)
                except OSError:
                    pass
                return False
        return True

    def remember(self, name: str, path: str) -> None:
        """Note the identity of ``path``, fetched as ``name`` and about to be renamed into the spool."""
        notes = [line for line in _read(self.file(KEPT)).splitlines() if line.split()[:1] != [name]]
        notes.append('%s %s' % (name, identity(os.stat(path))))
        _write(self.file(KEPT), '\n'.join(notes[-KEEP_IDS:]))

    def noted_identity(self, name: str) -> Optional[str]:
        """The identity remember() noted for ``name`` (one of the last KEEP_IDS fetched), or None."""
        for line in _read(self.file(KEPT)).splitlines():
            noted, _sep, noted_identity = line.partition(' ')
            if noted == name:
                return noted_identity
        return None

    def note_asked(self, name: str, segment_size: int) -> None:
        """Where recovery is: the fetcher's window starts after ``name``; its mtime says PostgreSQL is alive."""
        if _read(self.file(SIZE)) != str(segment_size):
            _write(self.file(SIZE), str(segment_size))
        _write(self.file(ASKED), name)

    def kick(self, pgdata: str) -> bool:
        """At the first call of a recovery from a backup (backup_label still there, nothing asked for
        yet): note its first segment for the fetcher; True if noted."""
        if os.path.exists(self.file(ASKED)) or os.path.exists(self.file(START)):
            return False
        try:
            with open(os.path.join(pgdata, 'backup_label')) as handle:
                first = label_start(handle.read(4096))
        except (OSError, UnicodeDecodeError):
            return False
        if first is None:
            return False
        _write(self.file(START), first)
        return True

    def asked(self) -> Tuple[Optional[str], Optional[int], float]:
        """(name, segment size, seconds since) of the last note_asked; before any, (None, the size once the
        backup's first segment told it, 0)."""
        name = _read(self.file(ASKED))
        size = _read(self.file(SIZE))
        size = int(size) if size.isdigit() else None
        try:
            age = time.time() - os.stat(self.file(ASKED)).st_mtime
        except OSError:
            return None, size, 0.0
        return (name or None), size, age

    def lock(self) -> Optional[int]:
        """The fetcher's lock, held (an fd), or None if a fetcher runs."""
        try:
            return try_lock(self.file(LOCK))
        except OSError:  # no spool (gone, or not made yet)
            return None

    def fetcher_alive(self) -> bool:
        fd = self.lock()
        if fd is None:
            return os.path.isdir(self.path)
        os.close(fd)
        return False

    def wait_for(self, name: str, seconds: float = WAIT_SECONDS) -> bool:
        """While the fetcher fetches ``name``: wait for it (True once complete in the spool). Cheaper than
        a second fetch of it, beside the fetcher's."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if os.path.exists(self.file(name)):
                return True
            if _read(self.file(FETCHING)) != name or not self.fetcher_alive():
                return os.path.exists(self.file(name))
            time.sleep(POLL_SECONDS)
        return False

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def count_fetched(self) -> int:
        text = _read(self.file(FETCHED))
        return int(text) if text.isdigit() else 0


Fetch = Callable[[str, str], str]  # (name, partial path) -> answer_of_get's outcome
OpenStream = Callable[[str], Any]  # first name -> a Popen of the receiver's "fetch NAME", stdout a pipe
Check = Callable[[str, int, bytes], str]  # (name, size, first bytes) -> answer_of_get's outcome


def ensure_fetcher(
    spool: Spool, fetch: Fetch, open_stream: Optional[OpenStream] = None, check: Optional[Check] = None
) -> bool:
    """Start the fetcher unless one runs; True if this call started it. The fetcher is a forked
    grandchild with no stdio of ours (PostgreSQL waits for restore_command's output to close)."""
    lock = spool.lock()
    if lock is None:
        return False
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child:
        os.close(lock)
        os.waitpid(child, 0)
        return True
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        run_fetcher(spool, fetch, open_stream, check)
    finally:
        os._exit(0)


class _Stream:
    """One "fetch NAME" request: the receiver sends NAME and the segments after it, as fast as they are read."""

    def __init__(self, proc, first):
        self.proc, self.next, self.frames = proc, first, 0

    def close(self):
        try:
            self.proc.stdout.close()  # the receiver ends on its next write
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001 - a hung ssh must not keep the fetcher
            self.proc.kill()
            self.proc.wait()


class _Gunzip:
    """A segment sent as stored gzip, decompressed as it comes (its members in turn), never past ``limit``
    bytes; zlib checks each member's CRC-32 and length."""

    def __init__(self, limit):
        self.limit, self.size, self.inflate = limit or wal.MAX_SEGMENT_SIZE, 0, zlib.decompressobj(wbits=31)

    def feed(self, chunk):
        """The bytes ``chunk`` decompresses to; None when it is not gzip or would pass the limit."""
        out = []
        try:
            while chunk:
                out.append(self.inflate.decompress(chunk, self.limit - self.size + 1))
                self.size += len(out[-1])
                if self.size > self.limit:
                    return None
                chunk = self.inflate.unconsumed_tail
                if self.inflate.eof:  # another member may follow
                    chunk = self.inflate.unused_data + chunk
                    if chunk:
                        self.inflate = zlib.decompressobj(wbits=31)
        except zlib.error:
            return None
        return b''.join(out)

    def complete(self):
        return self.inflate.eof and not self.inflate.unused_data


def _read_frame(stream, spool, check, segment_size):
    """Read the next file of ``stream`` into the spool: 'fetched', 'not archived' (the archive ends
    there), 'eof' (nothing came: a receiver without fetch) or 'failed'."""
    name = stream.next
    line = stream.proc.stdout.readline(200)
    if not line:
        return 'eof' if stream.frames == 0 else 'failed'
    stream.frames += 1
    words = line.decode('ascii', errors='replace').split()
    if words[:2] == ['end', name]:
        return 'not archived'
    if (
        len(words) not in (3, 4)
        or words[:2] != ['wal', name]
        or not words[2].isdigit()
        or words[3:] not in ([], ['gzip'])
    ):
        return 'failed'  # an error line, or framing lost
    left = int(words[2])
    gunzip = _Gunzip(segment_size) if words[3:] else None
    partial = spool.file(name + PART)
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    head = b''
    size = 0
    with open(partial, 'wb') as target:
        while left:
            count = stream.proc.stdout.readinto(view[: min(left, CHUNK)])
            if not count:
                return 'failed'  # cut short
            left -= count
            data = gunzip.feed(view[:count]) if gunzip else view[:count]
            if data is None:
                return 'failed'  # not gzip, or more than a segment
            if len(head) < wal.LONG_PAGE_HEADER_SIZE:
                head += bytes(data[: wal.LONG_PAGE_HEADER_SIZE - len(head)])
            target.write(data)
            size += len(data)
    if gunzip and not gunzip.complete():
        return 'failed'  # cut short, or its CRC did not match
    outcome = check(name, size, head)
    if outcome == 'fetched':
        stream.next = wal.wal_segment_after(name, segment_size or size)
    return outcome


def run_fetcher(
    spool: Spool, fetch: Fetch, open_stream: Optional[OpenStream] = None, check: Optional[Check] = None
) -> None:
    """Keep the window after the last segment asked for filled, until there is nothing more to do.

    With ``open_stream``, one receiver request streams the segments in order (no request per file, no
    receiver start per file); the stream is read only while the window has room, and opened again
    where the window is when recovery jumped (another timeline). Without it (or with a receiver that
    does not know "fetch"), one ``fetch`` per segment."""
    _write(spool.file(PID), str(os.getpid()))
    fetched = spool.count_fetched()
    end = None  # the first segment the archive did not hold: not asked for again (the gets will)
    stream = None
    try:
        while True:
            name, segment_size, age = spool.asked()
            start = _read(spool.file(START)) or None
            if name is None and start is not None:
                try:
                    age = time.time() - os.stat(spool.file(START)).st_mtime
                except OSError:
                    return
            wanted = wanted_segments(name, start, segment_size)
            if not wanted or age > IDLE_SECONDS or not os.path.isdir(spool.path):
                return
            try:
                entries = os.listdir(spool.path)
            except OSError:  # the spool went: recovery ended
                return
            for entry in stale(entries, [name or start] + wanted, None):  # the one asked for may be in its get's rename
                try:
                    os.unlink(spool.file(entry))
                except OSError:
                    pass
            missing = to_fetch(set(entries), wanted)
            if missing is None or missing == end:
                time.sleep(0.02)
                continue
            partial = spool.file(missing + PART)
            try:
                _write(spool.file(FETCHING), missing)
                if open_stream is not None and check is not None:
                    if stream is None or stream.next != missing:
                        if stream is not None:
                            stream.close()
                        stream = _Stream(open_stream(missing), missing)
                    outcome = _read_frame(stream, spool, check, segment_size)
                    if outcome == 'eof':  # a receiver of before "fetch" refused it: one request per file
                        stream.close()
                        stream, open_stream = None, None
                        continue
                else:
                    outcome = fetch(missing, partial)
                if outcome == 'fetched' and (spool.asked()[0] or _read(spool.file(START))):
                    if segment_size is None:  # the backup's first segment: its size is the cluster's
                        _write(spool.file(SIZE), str(os.path.getsize(partial)))
                    spool.remember(missing, partial)  # before the rename: a get may take it at once
                    os.rename(partial, spool.file(missing))
                    fetched += 1
                    _write(spool.file(FETCHED), str(fetched))
                os.unlink(spool.file(FETCHING))
            except (OSError, ValueError):  # the spool went (recovery ended) or is full: the gets fetch themselves
                outcome = 'failed'
            if outcome != 'fetched':
                try:
                    os.unlink(partial)
                except OSError:
                    pass
                if outcome != 'not archived':
                    return  # refused or failed: the gets fetch for themselves, and report
                # The end of the archive (or of a timeline): stay, alive, so that the launcher still
                # serves what the spool holds without Python, until PostgreSQL stops asking.
                end = missing
                if stream is not None:
                    stream.close()
                    stream = None
    finally:
        if stream is not None:
            stream.close()
        # The launcher trusts a live pid here: none once this fetcher is gone (a later one may hold it).
        if _read(spool.file(PID)) == str(os.getpid()):
            try:
                os.unlink(spool.file(PID))
            except OSError:
                pass


def end_recovery(pgdata: str, stderr: TextIO) -> int:
    """recovery_end_command: stop the fetcher, report, remove the spool. Always 0 (nothing to retry)."""
    spool = Spool(pgdata)
    if not os.path.isdir(spool.path):
        return 0
    for note in (ASKED, START):
        try:
            os.unlink(spool.file(note))  # the fetcher stops at its next look, and renames nothing more
        except OSError:
            pass
    deadline = time.monotonic() + STOP_SECONDS
    while spool.fetcher_alive() and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    fetched = spool.count_fetched()
    unused = [entry for entry in os.listdir(spool.path) if wal.is_wal_name(entry)]
    spool.remove()
    stderr.write(
        'barman-wal-sender: recovery ended; the look-ahead fetched %d segments ahead of replay (%d unused); '
        '%s/ removed\n' % (fetched, len(unused), SPOOL_DIR)
    )
    return 0
