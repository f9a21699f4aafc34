# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL receiver: the forced command of a PostgreSQL server's restricted key on the backup server.

sshd runs it for every connection made with that key, whatever command the client asked for; the
request is in SSH_ORIGINAL_COMMAND and only these are honoured, for the one server fixed by the key:
  put NAME SIZE [CHECKSUM]
                  stdin: SIZE bytes, then their checksum in hex and a newline; CHECKSUM names its
                  kind (crc32 or sha256, see checksum.py), sha256 when absent
  get NAME        stdout: the file's original content; exit EXIT_NOT_ARCHIVED only when the archive
                  does not hold it, EXIT_TEMPORARY for any other failure (then stdout is not the file)
  fetch NAME [gzip]
                  stdout: NAME and the segments after it on its timeline, each as "wal NAME SIZE\n" and its
                  original content (with gzip, after the first: "wal NAME SIZE gzip\n" and the bytes of one
                  stored gzip-compressed), until "end NAME\n" (the first one the archive does not hold) or
                  "error NAME why\n"; the sender's look-ahead reads as far as its spool has room
  release-hold TOKEN
                  removes a recovery's hold on the catalog (a recovered copy's recovery_end_command: its
                  recovery ended, it fetches no more WAL); stdout "released" or "absent"
  stream          stdin: any number of "put NAME SIZE" lines, each followed as above; stdout: one
                  line per put, "ok NAME stored|identical", "refused NAME why" or "error NAME why",
                  written once the file is durable (the sender's look-ahead agent uses it)
Exit codes stay below 126 so that PostgreSQL counts a failure and retries (see EXIT_*).
"""

import argparse
import collections
import io
import os
import re
import shlex
import sys
import threading
import time
from typing import BinaryIO, Callable, Mapping, Optional, Sequence, TextIO

from ansible_collections.barman.postgresql.plugins.module_utils import checksum, lockfile, recovery_hold, wal, wal_store
from ansible_collections.barman.postgresql.runtime import pipes
from ansible_collections.barman.postgresql.plugins.module_utils.errors import (
    EXIT_NOT_ARCHIVED,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TEMPORARY,
    BarmanError,
)

MAX_SEGMENT_BYTES = 1024 * 1024 * 1024
USAGE = (
    "this key only accepts 'put NAME SIZE [CHECKSUM]', 'get NAME', 'fetch NAME [gzip]' and 'stream' for WAL files of "
    "its server, and 'release-hold TOKEN' for a hold on its catalog"
)
# A stream starts the background compression at its end, and every so many files (1 GiB of 16 MiB
# segments) of a long one: while a backlog drains, receiving comes first (measured: even at a low
# priority, compressing beside the stream slowed it by a tenth on 2 cores).
PROCESS_EVERY = 64
# ...and once nothing has arrived for this long: the sender's agent keeps a quiet server's stream
# open for the next segment, and what it delivered must not wait in incoming/ until the stream ends.
PROCESS_WHEN_IDLE_SECONDS = 1.0
# How long background work waits for another processor of the same archive (which compresses what it listed).
PROCESS_LOCK_WAIT_SECONDS = 300


class RequestError(BarmanError):
    """The client asked for something this key does not allow."""

    code = 'REQUEST_REFUSED'


Request = collections.namedtuple('Request', 'verb name size checksum keep', defaults=((),))
# What a fetch may send as stored, for the sender to decompress (its Python has zlib): a gzip-compressed
# segment is a few times smaller (19x on the replay bench's inserts), fewer bytes for ssh to carry and cipher.
FETCH_KEEPS = ('gzip',)


def parse_request(command: Optional[str]) -> Request:
    """A Request from SSH_ORIGINAL_COMMAND, or RequestError."""
    try:
        words = shlex.split(command or '')
    except ValueError:
        words = []
    if len(words) in (3, 4) and words[0] == 'put' and re.match(r'[0-9]{1,12}\Z', words[2]):
        size = int(words[2])
        if size > MAX_SEGMENT_BYTES:
            raise RequestError('refused put of %d bytes: more than a WAL segment can be' % size, USAGE)
        named = words[3] if len(words) == 4 else checksum.WHEN_UNNAMED
        if named not in checksum.CHECKSUMS:
            raise RequestError('refused put with the unknown checksum %r' % named, USAGE)
        return Request('put', wal.parse_wal_name(words[1]).name, size, named)
    if len(words) == 2 and words[0] == 'get':
        return Request('get', wal.parse_wal_name(words[1]).name, None, None)
    if len(words) in (2, 3) and words[0] == 'fetch' and wal.parse_wal_name(words[1]).kind == 'segment':
        if words[2:] and words[2] not in FETCH_KEEPS:
            raise RequestError('refused fetch as %r: it can keep only %s' % (words[2], ', '.join(FETCH_KEEPS)), USAGE)
        return Request('fetch', words[1], None, None, tuple(words[2:]))
    if words == ['stream']:
        return Request('stream', None, None, None)
    if len(words) == 2 and words[0] == 'release-hold':
        try:
            return Request('release-hold', recovery_hold.validate_token(words[1]), None, None)
        except recovery_hold.HoldError as error:
            raise RequestError('refused release-hold: %s' % error, USAGE) from None
    raise RequestError('refused request %r' % (command or ''), USAGE)


def _read_digest_line(stream):
    def reader():
        line = stream.readline(80).strip().decode('ascii', errors='replace')
        return line

    return reader


def _process_in_background(wal_archive, compression):
    """Compress and index what arrived, after the sender has its answer: in a grandchild with no
    stdio of ours (so sshd need not wait for it) and the lowest priority: receiving comes first."""
    sys.stdout.flush()
    sys.stderr.flush()
    if os.fork():
        return
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.setsid()
    if os.fork():
        os._exit(0)
    # The lowest priority, not SCHED_IDLE: on a busy server that could starve it while it holds
    # the archive's locks.
    os.nice(19)
    _process_and_forward(wal_archive, compression)
    os._exit(0)


def _process_and_forward(wal_archive, compression):
    """The background work after a delivery: compress and index what arrived, then forward the archive
    to the server's mirrors, if it has any (walforwarder: a mirror's failure is recorded beside its
    configuration)."""
    try:
        wal_archive.process_incoming(compression, wait_seconds=0)
    except lockfile.LockBusy:
        # Another processor compresses what it listed: forward meanwhile what the archive holds (the mirrors
        # need not wait for the compression of a whole batch), then take what it left, which it listed before
        # this delivery arrived (else the last files of a stream stayed unindexed until the next delivery).
        _forward(wal_archive)
        try:
            wal_archive.process_incoming(compression, wait_seconds=PROCESS_LOCK_WAIT_SECONDS)
        except lockfile.LockBusy:
            pass  # a processor held the archive for that long: the next delivery's takes this file
        except Exception as error:  # nobody is listening any more: leave a trace for check to report
            _log_failure(wal_archive, error)
    except Exception as error:
        _log_failure(wal_archive, error)
    _forward(wal_archive)


def _forward(wal_archive):
    """Forward the archive to the server's mirrors, whoever indexed it."""
    try:
        # Imported only here: the receiver starts for every delivery, and only this grandchild forwards.
        from ansible_collections.barman.postgresql.runtime import walforwarder

        walforwarder.forward(wal_archive.layout.barman_home, wal_archive.layout.server)
    except Exception as error:
        _log_failure(wal_archive, 'forwarding to the mirrors: %s' % error)


def _log_failure(wal_archive, error):
    with open(wal_archive.layout.process_log, 'a') as log:
        log.write('%s %s\n' % (time.strftime('%Y-%m-%dT%H:%M:%S%z'), error))


def _one_line(error):
    return ' '.join(str(error).split())


def serve_stream(
    wal_archive: wal_store.WalArchive,
    stdin: BinaryIO,
    stdout: BinaryIO,
    on_batch: Optional[Callable[[], None]] = None,
) -> int:
    """Receive puts one after another on one connection, answering each once it is durable.

    Reading the next file overlaps making the previous one durable (a second thread fsyncs,
    validates, publishes and answers, in order). A request line that does not parse ends the
    stream: the bytes after it cannot be framed.
    """
    pipes.widen(stdin)
    pending = []
    ready = threading.Condition()
    idle_timer = []  # the pending Timer of on_batch, if any

    def start_idle_timer():
        if on_batch:
            timer = threading.Timer(PROCESS_WHEN_IDLE_SECONDS, on_batch)
            timer.daemon = True
            idle_timer.append(timer)
            timer.start()

    def stop_idle_timer():
        while idle_timer:
            idle_timer.pop().cancel()

    def answer(line):
        stdout.write(line.encode('utf-8') + b'\n')
        stdout.flush()

    def finisher():
        count = 0
        while True:
            with ready:
                while not pending:
                    ready.wait()
                item = pending.pop(0)
                ready.notify_all()
            if item is None:
                break
            name, taken = item
            try:
                if isinstance(taken, Exception):
                    raise taken
                answer('ok %s %s' % (name, wal_archive.store(*taken)))
            except (ValueError, RequestError, wal_store.DuplicateWal) as error:
                answer('refused %s %s' % (name, _one_line(error)))
            except (BarmanError, OSError) as error:
                answer('error %s %s' % (name, _one_line(error)))
            count += 1
            if on_batch and count % PROCESS_EVERY == 0:
                on_batch()
            with ready:
                if not pending:
                    start_idle_timer()

    thread = threading.Thread(target=finisher)
    thread.start()

    def hand_over(item):
        with ready:
            stop_idle_timer()
            while len(pending) >= 2:  # at most two files read ahead of the one being made durable
                ready.wait()
            pending.append(item)
            ready.notify_all()

    code = EXIT_OK
    try:
        while True:
            line = stdin.readline(200)
            if not line:
                break
            try:
                request = parse_request(line.decode('ascii', errors='replace').strip())
                if request.verb != 'put':
                    raise RequestError('refused %r inside a stream' % request.verb, USAGE)
            except (ValueError, RequestError) as error:
                hand_over(('-', RequestError(_one_line(error))))
                code = EXIT_REFUSED
                break
            try:
                taken = wal_archive.take(request.name, request.size, stdin, _read_digest_line(stdin), request.checksum)
                hand_over((request.name, taken))
            except (BarmanError, OSError) as error:
                hand_over((request.name, error))
    finally:
        hand_over(None)
        thread.join()
        with ready:
            stop_idle_timer()
    return code


def serve_get(wal_archive: wal_store.WalArchive, name: str, stdout: BinaryIO, stderr: TextIO) -> int:
    """Write an archived file to ``stdout``; the exit code tells the sender whether it may say "not found"."""
    try:
        try:
            wal_archive.send(name, stdout)
        except wal_store.WalNotFound:
            # locate() looks in wals/ then incoming/: a file compressed into wals/ between the two looks
            # was in neither. A second look finds it in wals/.
            wal_archive.send(name, stdout)
        stdout.flush()
    except wal_store.WalNotFound as error:
        stderr.write('barman-wal-receiver: %s\n' % error)
        return EXIT_NOT_ARCHIVED
    except Exception as error:  # anything else (I/O, a damaged file, a bug) must not look like "not archived"
        stderr.write('barman-wal-receiver: get %s failed: %s: %s\n' % (name, type(error).__name__, _one_line(error)))
        return EXIT_TEMPORARY
    return EXIT_OK


def serve_fetch(
    wal_archive: wal_store.WalArchive,
    first: str,
    stdout: BinaryIO,
    segment_size: int = 0,
    limit: int = 0,
    keep: Sequence[str] = (),
) -> int:
    """Write ``first`` and the segments after it, framed, until one the archive does not hold: each
    as 'wal NAME SIZE' and its content, or 'wal NAME SIZE COMPRESSION' and its bytes as stored when
    stored in a compression of ``keep``.

    The segment size is the first file's size (a segment's size is the cluster's): the first goes
    decompressed, whatever ``keep``, to tell it. The reader sets the pace: a full pipe blocks this
    loop, a closed one ends it. ``limit`` (tests) stops after that many."""
    name, sent = first, 0
    while True:
        try:
            for attempt in (1, 2):  # twice: compressed into wals/ between locate's two looks
                content = io.BytesIO()
                try:
                    kept = wal_archive.send(name, content, keep if segment_size else ())
                    break
                except wal_store.WalNotFound:
                    if attempt == 2:
                        raise
        except wal_store.WalNotFound:
            stdout.write(('end %s\n' % name).encode('ascii'))
            stdout.flush()
            return EXIT_OK
        except Exception as error:  # never "end": the sender must not read a failure as the end of the archive
            stdout.write(('error %s %s: %s\n' % (name, type(error).__name__, _one_line(error))).encode('utf-8'))
            stdout.flush()
            return EXIT_TEMPORARY
        data = content.getbuffer()
        stdout.write(('wal %s %d%s\n' % (name, len(data), ' ' + kept if kept else '')).encode('ascii'))
        stdout.write(data)
        stdout.flush()
        sent += 1
        segment_size = segment_size or len(data)
        if limit and sent >= limit:
            return EXIT_OK
        try:
            name = wal.wal_segment_after(name, segment_size)
        except ValueError:  # the last possible segment, or a size no segment has: the sender checks
            stdout.write(('end %s\n' % name).encode('ascii'))
            stdout.flush()
            return EXIT_OK


def main(
    argv: Optional[Sequence[str]] = None,
    environ: Optional[Mapping[str, str]] = None,
    stdin: Optional[BinaryIO] = None,
    stdout: Optional[BinaryIO] = None,
    stderr: Optional[TextIO] = None,
) -> int:
    environ = os.environ if environ is None else environ
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(prog='barman-wal-receiver', description=__doc__)
    parser.add_argument('--barman-home', required=True)
    parser.add_argument('--server', required=True)
    parser.add_argument('--compression', default='gzip', choices=wal_store.COMPRESSIONS)
    parser.add_argument('--no-background', action='store_true', help='do not process incoming/ after a put')
    args = parser.parse_args(argv)
    try:
        wal_archive = wal_store.WalArchive(args.barman_home, args.server)
        request = parse_request(environ.get('SSH_ORIGINAL_COMMAND'))
        if request.verb == 'stream':
            background = None if args.no_background else lambda: _process_in_background(wal_archive, args.compression)
            code = serve_stream(wal_archive, stdin, stdout, background)
            if background:
                background()
            return code
        if request.verb == 'get':
            return serve_get(wal_archive, request.name, stdout, stderr)
        if request.verb == 'release-hold':  # a recovered copy's recovery_end_command: it needs no more WAL
            released = recovery_hold.release(wal_archive.layout, request.name)
            stdout.write(b'released\n' if released else b'absent\n')
            return EXIT_OK
        if request.verb == 'fetch':
            pipes.widen(stdout)
            try:
                return serve_fetch(wal_archive, request.name, stdout, keep=request.keep)
            except BrokenPipeError:  # the sender has what it wanted
                return EXIT_OK
        wal_archive.receive(request.name, request.size, stdin, _read_digest_line(stdin), request.checksum)
    except (ValueError, RequestError, wal_store.DuplicateWal) as error:
        stderr.write('barman-wal-receiver: %s\n' % error)
        return EXIT_REFUSED
    except (BarmanError, OSError) as error:
        stderr.write('barman-wal-receiver: %s\n' % error)
        return EXIT_TEMPORARY
    if not args.no_background:
        _process_in_background(wal_archive, args.compression)
    return EXIT_OK
