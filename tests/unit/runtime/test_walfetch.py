# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""restore_command's look-ahead: the window it fetches, what it drops, and gets served from its spool."""

import gzip
import io
import os
import subprocess

import pytest
from test_walsender import SEG, FakeBackupServer, _segment, key, launcher, restore  # noqa: F401 # pylint: disable=unused-import

from ansible_collections.barman.postgresql.plugins.module_utils import wal, wal_store
from ansible_collections.barman.postgresql.runtime import walfetch, walreceiver, walsender

FIRST = '000000010000000000000005'


def names(first, count):
    return [first] + walfetch.next_segments(first, count - 1, SEG)


def test_next_segments_stay_on_the_timeline_and_cross_a_log_boundary():
    assert walfetch.next_segments('0000000100000000000000FE', 3, 16 * 1024 * 1024) == [
        '0000000100000000000000FF',
        '000000010000000100000000',
        '000000010000000100000001',
    ]
    assert walfetch.next_segments('000000020000000000000003', 2, 16 * 1024 * 1024) == [
        '000000020000000000000004',
        '000000020000000000000005',
    ]
    last = wal.segment_name(1, 0xFFFFFFFFFFFFFFFF // (16 * 1024 * 1024), 16 * 1024 * 1024)
    assert walfetch.next_segments(last, 8, 16 * 1024 * 1024) == [], 'the end of the WAL space'


def test_the_spool_keeps_only_the_window_after_the_segment_asked_for():
    wanted = walfetch.next_segments(FIRST, 3, SEG)
    entries = [
        FIRST,  # replayed already (a get that raced the fetcher)
        '000000010000000000000004',
        wanted[0],
        wanted[1] + '.part',  # being fetched: stays
        wanted[2] + '.part',  # a dead fetcher's: goes
        '000000020000000000000006',  # another timeline
        '000000010000000000000009',  # beyond the window (it moved back: a new timeline's history)
        'asked',
        'boot_id',
        '00000002.history',
    ]
    assert walfetch.stale(entries, wanted, fetching=wanted[1]) == sorted(
        [FIRST, '000000010000000000000004', wanted[2] + '.part', '000000020000000000000006', '000000010000000000000009']
    )
    assert walfetch.to_fetch({wanted[0], wanted[1] + '.part'}, wanted) == wanted[1]
    assert walfetch.to_fetch(set(wanted), wanted) is None
    assert len(walfetch.next_segments(FIRST, walfetch.LOOK_AHEAD, SEG)) == walfetch.LOOK_AHEAD


def test_a_spool_of_an_earlier_boot_is_discarded(tmp_path, monkeypatch):
    boot = tmp_path / 'boot_id'
    boot.write_text('one\n')
    monkeypatch.setattr(walfetch, 'BOOT_ID', str(boot))
    spool = walfetch.Spool(str(tmp_path))
    assert spool.open()
    (tmp_path / walfetch.SPOOL_DIR / FIRST).write_bytes(b'x')
    target = tmp_path / 'RECOVERYXLOG'
    boot.write_text('two\n')  # the machine crashed and came back: unsynced files may be torn
    assert not spool.take(FIRST, str(target))
    assert spool.open() and os.listdir(spool.path) == ['boot_id']
    (tmp_path / walfetch.SPOOL_DIR / FIRST).write_bytes(b'x')
    assert spool.take(FIRST, str(target)) and target.read_bytes() == b'x'
    assert not spool.take(FIRST, str(target)), 'a file is taken once'


@pytest.fixture
def pgdata(tmp_path, monkeypatch):
    directory = tmp_path / 'data'
    (directory / 'pg_wal').mkdir(parents=True)
    (directory / 'PG_VERSION').write_text('15\n')
    monkeypatch.chdir(str(directory))  # PostgreSQL runs restore_command in PGDATA
    monkeypatch.setattr(walfetch, 'IDLE_SECONDS', 2)
    return directory


@pytest.fixture
def server(tmp_path, monkeypatch):
    return FakeBackupServer(tmp_path, monkeypatch)


def _wait_for_fetcher(spool):
    for _attempt in range(1000):
        if not spool.fetcher_alive():
            return
        subprocess.run(['sleep', '0.01'], check=True)
    raise AssertionError('the fetcher did not end')


def test_gets_are_served_from_the_spool_and_end_recovery_removes_it(server, key, pgdata):  # noqa: F811
    segments = names(FIRST, 12)
    for name in segments:
        server.archive(name, _segment(name))
    target = pgdata / 'pg_wal' / 'RECOVERYXLOG'
    code, err = restore(key, FIRST, 'pg_wal/RECOVERYXLOG')
    assert code == 0 and 'look-ahead: fetching up to' in err, err
    spool = walfetch.Spool(str(pgdata))
    for name in segments[1:]:
        assert restore(key, name, 'pg_wal/RECOVERYXLOG')[0] == 0
        assert target.read_bytes() == _segment(name)
        target.unlink()
    # The end of the archive: the fetcher stopped there, and the get says "not found" itself.
    after = walfetch.next_segments(segments[-1], 1, SEG)[0]
    assert restore(key, after, 'pg_wal/RECOVERYXLOG')[0] == walsender.EXIT_NOT_FOUND
    _wait_for_fetcher(spool)
    calls = server.calls()
    gets = [call for call in calls if call.startswith('get ')]
    assert 'fetch %s gzip' % segments[1] in calls, 'one request streams the segments after the first: %s' % calls
    assert gets[:1] == ['get %s' % FIRST] and 'get %s' % after in gets
    assert len(gets) < len(segments) // 2, 'a get waits for the segment the fetcher receives: %s' % calls
    assert spool.count_fetched() >= len(segments) // 2
    stderr = io.StringIO()
    assert walsender.main(['--ssh', 'b@h', '--identity-file', key, '--known-hosts', key, 'end-recovery'], stderr) == 0
    assert 'recovery ended; the look-ahead fetched' in stderr.getvalue()
    assert not os.path.exists(spool.path)


def test_a_segment_asked_again_comes_from_postgresqls_kept_file_while_it_is_the_one_fetched(server, key, pgdata):  # noqa: F811
    segments = names(FIRST, 5)
    for name in segments:
        server.archive(name, _segment(name))
    pg_wal = pgdata / 'pg_wal'
    target = pg_wal / 'RECOVERYXLOG'
    for name in segments:
        assert restore(key, name, 'pg_wal/RECOVERYXLOG')[0] == 0
        os.rename(str(target), str(pg_wal / name))  # PostgreSQL keeps a restored segment under its name
    spool = walfetch.Spool(str(pgdata))
    _wait_for_fetcher(spool)
    notes = (pgdata / walfetch.SPOOL_DIR / walfetch.KEPT).read_text()

    def matches(name):
        """Whether pg_wal/NAME is, by its identity, the file the fetcher noted in the first pass."""
        noted = spool.noted_identity(name)
        return noted is not None and noted == walfetch.identity(os.stat(str(pg_wal / name)))

    def again(name):
        """Who served ``name`` asked again: 'kept' (PostgreSQL's file) or 'get' (the backup server)."""
        for note in (walfetch.ASKED, walfetch.START):  # no fetcher (it stops at its next look), an empty spool
            if os.path.exists(spool.file(note)):
                os.unlink(spool.file(note))
        _wait_for_fetcher(spool)
        for entry in os.listdir(spool.path):
            if wal.is_wal_name(entry):
                os.unlink(os.path.join(spool.path, entry))
        (pgdata / walfetch.SPOOL_DIR / walfetch.KEPT).write_text(notes)  # whatever a later fetcher noted
        before = len(server.calls())
        code, err = restore(key, name, 'pg_wal/RECOVERYXLOG')
        assert code == 0 and target.read_bytes() == _segment(name), err
        target.unlink()
        fetched = 'get %s' % name in server.calls()[before:]
        kept = 'served again from the copy PostgreSQL kept in place' in err
        assert kept != fetched, err
        return 'kept' if kept else 'get'

    # The re-read at the end of recovery: a local copy, no request to the backup server.
    assert matches(segments[3]) and again(segments[3]) == 'kept'
    assert (pg_wal / segments[3]).read_bytes() == _segment(segments[3]), 'the kept file is copied, not moved'
    # The first segment came by the get itself, not by the fetcher: nothing noted.
    assert spool.noted_identity(FIRST) is None and again(FIRST) == 'get'
    # Touched since (its modification time moved), or another file under that name.
    assert matches(segments[2])
    os.utime(str(pg_wal / segments[2]), ns=(0, 0))
    assert again(segments[2]) == 'get'
    assert matches(segments[1])
    os.unlink(str(pg_wal / segments[1]))
    (pg_wal / segments[1]).write_bytes(_segment(segments[1]))
    assert again(segments[1]) == 'get'
    # A noted file, unchanged by its identity, that no longer checks as its segment is never served.
    with open(str(pg_wal / segments[4]), 'r+b') as handle:
        stat = os.fstat(handle.fileno())
        handle.write(b'\0' * 64)
    os.utime(str(pg_wal / segments[4]), ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert matches(segments[4]) and again(segments[4]) == 'get'
    _wait_for_fetcher(spool)
    walfetch.end_recovery(str(pgdata), io.StringIO())


def test_a_failed_look_ahead_never_reads_as_not_found(server, key, pgdata):  # noqa: F811
    segments = names(FIRST, 4)
    for name in segments:
        server.archive(name, _segment(name))
    assert restore(key, FIRST, 'pg_wal/RECOVERYXLOG')[0] == 0
    spool = walfetch.Spool(str(pgdata))
    _wait_for_fetcher(spool)
    # A damaged spool file cannot be there (the fetcher checks before the rename); a missing one is
    # fetched by the get itself, which rides out an outage as ever.
    for entry in os.listdir(spool.path):
        if wal.is_wal_name(entry):
            os.unlink(os.path.join(spool.path, entry))
    server.down(2)
    code, err = restore(key, segments[1], 'pg_wal/RECOVERYXLOG')
    assert code == 0 and err.count('retrying') == 2, err
    assert (pgdata / 'pg_wal' / 'RECOVERYXLOG').read_bytes() == _segment(segments[1])
    _wait_for_fetcher(spool)
    walfetch.end_recovery(str(pgdata), io.StringIO())


def test_no_look_ahead_outside_a_data_directory_or_when_turned_off(server, key, pgdata, tmp_path):  # noqa: F811
    server.archive(FIRST, _segment(FIRST))
    assert restore(key, FIRST, 'pg_wal/RECOVERYXLOG', '--no-look-ahead') == (0, '')
    assert not os.path.exists(str(pgdata / walfetch.SPOOL_DIR))
    os.unlink(str(pgdata / 'PG_VERSION'))
    assert restore(key, FIRST, 'pg_wal/RECOVERYXLOG') == (0, '')
    assert not os.path.exists(str(pgdata / walfetch.SPOOL_DIR))


def test_the_launcher_moves_a_spooled_segment_without_python(key, pgdata, launcher):  # noqa: F811
    spool = walfetch.Spool(str(pgdata))
    assert spool.open()
    (pgdata / walfetch.SPOOL_DIR / FIRST).write_bytes(b'segment')
    argv = [launcher, '--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'get', FIRST]

    def run():
        proc = subprocess.run(argv + ['pg_wal/RECOVERYXLOG'], capture_output=True, text=True, check=False)
        return proc.returncode

    assert run() == 7, 'no live fetcher: the sender (which starts one) answers'
    (pgdata / walfetch.SPOOL_DIR / walfetch.PID).write_text('%d\n' % os.getpid())  # a live process
    assert run() == 0
    assert (pgdata / 'pg_wal' / 'RECOVERYXLOG').read_bytes() == b'segment'
    assert spool.asked()[0] == FIRST
    assert run() == 7, 'taken once: a get of it again goes to the sender'
    (pgdata / walfetch.SPOOL_DIR / FIRST).write_bytes(b'segment')
    # get --no-look-ahead: only the file asked for, from the archive (the option before NAME and PATH).
    proc = subprocess.run(argv[:-1] + ['--no-look-ahead', FIRST, 'pg_wal/OTHER'], capture_output=True, check=False)
    assert proc.returncode == 7 and (pgdata / walfetch.SPOOL_DIR / FIRST).exists()
    (pgdata / walfetch.SPOOL_DIR / walfetch.BOOT).write_text('another boot\n')
    assert run() == 7


def test_the_launcher_waits_without_python_for_the_segment_the_fetcher_is_fetching(key, pgdata, launcher):  # noqa: F811
    spool = walfetch.Spool(str(pgdata))
    assert spool.open()
    (pgdata / walfetch.SPOOL_DIR / walfetch.PID).write_text('%d\n' % os.getpid())  # a live process
    argv = [launcher, '--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'get']
    target = pgdata / 'pg_wal' / 'RECOVERYXLOG'
    (pgdata / walfetch.SPOOL_DIR / walfetch.FETCHING).write_text(FIRST + '\n')
    waiting = subprocess.Popen(argv + [FIRST, 'pg_wal/RECOVERYXLOG'])
    other = subprocess.run(argv + [names(FIRST, 2)[1], 'pg_wal/OTHER'], capture_output=True, check=False)
    assert other.returncode == 7, 'a segment the fetcher is not fetching goes to the sender'
    assert waiting.poll() is None, 'the launcher waits while the fetcher fetches its segment'
    (pgdata / walfetch.SPOOL_DIR / FIRST).write_bytes(b'segment')
    assert waiting.wait(timeout=30) == 0 and target.read_bytes() == b'segment'
    assert spool.asked()[0] == FIRST
    # The fetcher moved on without it (not archived, or failed): the launcher stops waiting, the sender answers.
    third = names(FIRST, 3)[2]
    (pgdata / walfetch.SPOOL_DIR / walfetch.FETCHING).write_text(third + '\n')
    waiting = subprocess.Popen(argv + [third, 'pg_wal/RECOVERYXLOG'], stdout=subprocess.DEVNULL)
    subprocess.run(['sleep', '0.3'], check=True)
    assert waiting.poll() is None, 'it waits while the fetcher fetches its segment'
    (pgdata / walfetch.SPOOL_DIR / walfetch.FETCHING).unlink()
    assert waiting.wait(timeout=30) == 7


def test_the_fetcher_takes_its_pid_with_it(pgdata, monkeypatch):
    spool = walfetch.Spool(str(pgdata))
    assert spool.open()
    walfetch.run_fetcher(spool, lambda wanted, partial: 'failed')  # nothing asked: it ends at once
    assert not (pgdata / walfetch.SPOOL_DIR / walfetch.PID).exists(), 'the launcher must not trust a stale pid'
    # A pid written over by another fetcher's (one started since) stays.
    real_write = walfetch._write

    def other_starts(path, text):
        real_write(path, text)
        if path == spool.file(walfetch.PID):
            real_write(path, '%d' % os.getppid())

    monkeypatch.setattr(walfetch, '_write', other_starts)
    walfetch.run_fetcher(spool, lambda wanted, partial: 'failed')
    assert (pgdata / walfetch.SPOOL_DIR / walfetch.PID).read_text().strip() == str(os.getppid())


def test_before_postgresql_asks_the_fetcher_fills_the_window_after_the_backups_first_segment(pgdata):
    spool = walfetch.Spool(str(pgdata))
    assert spool.open()
    (pgdata / 'backup_label').write_text('START WAL LOCATION: 0/5000028 (file %s)\n' % FIRST)
    assert spool.kick(str(pgdata))
    fetched = []

    def fetch(name, partial):
        fetched.append(name)
        with open(partial, 'wb') as handle:
            handle.write(_segment(name))
        return 'fetched'

    walfetch.run_fetcher(spool, fetch)  # ends once nothing was asked for IDLE_SECONDS
    window = names(FIRST, 1 + walfetch.LOOK_AHEAD)
    assert fetched == window, 'the first segment told the size: the ones after it came before any ask'
    assert sorted(entry for entry in os.listdir(spool.path) if wal.is_wal_name(entry)) == window


# -- the receiver's "fetch NAME": one request, the segments in order ------------------------------------


def _frames(data):
    """[(kind, name, content)] of a fetch answer."""
    frames, stream = [], io.BytesIO(data)
    while True:
        line = stream.readline()
        if not line:
            return frames
        words = line.decode().split()
        content = stream.read(int(words[2])) if words[0] == 'wal' else None
        if words[3:] == ['gzip']:
            content = ('gzip', gzip.decompress(content))
        frames.append((words[0], words[1], content))


def test_fetch_streams_the_segments_in_order_up_to_the_first_missing(server):
    segments = names(FIRST, 3)
    for name in segments:
        server.archive(name, _segment(name))
    out = io.BytesIO()
    assert walreceiver.serve_fetch(wal_store.WalArchive(server.home, 'pg1'), FIRST, out) == 0
    after = walfetch.next_segments(segments[-1], 1, SEG)[0]
    assert _frames(out.getvalue()) == [('wal', n, _segment(n)) for n in segments] + [('end', after, None)]
    assert walreceiver.parse_request('fetch %s' % FIRST).verb == 'fetch'
    with pytest.raises(walreceiver.RequestError):
        walreceiver.parse_request('fetch 00000002.history')


def test_fetch_gzip_sends_gzip_segments_as_stored_but_the_first_and_the_others_decompressed(server):
    segments = names(FIRST, 4)
    for name in segments[:3]:
        server.archive(name, _segment(name))
    server.archive(segments[3], _segment(segments[3]), compression='none')
    out = io.BytesIO()
    wal_archive = wal_store.WalArchive(server.home, 'pg1')
    assert walreceiver.serve_fetch(wal_archive, FIRST, out, keep=('gzip',)) == 0
    frames = _frames(out.getvalue())
    assert frames[0] == ('wal', FIRST, _segment(FIRST)), 'the first one tells the segment size'
    assert frames[1:3] == [('wal', n, ('gzip', _segment(n))) for n in segments[1:3]]
    assert frames[3] == ('wal', segments[3], _segment(segments[3])), 'one stored uncompressed goes as it is'
    assert len(out.getvalue()) < 2 * SEG + SEG // 10, 'a gzip segment goes as its few stored bytes'
    request = walreceiver.parse_request('fetch %s gzip' % FIRST)
    assert (request.verb, request.name, request.keep) == ('fetch', FIRST, ('gzip',))
    assert walreceiver.parse_request('fetch %s' % FIRST).keep == ()
    with pytest.raises(walreceiver.RequestError, match='can keep only gzip'):
        walreceiver.parse_request('fetch %s bzip2' % FIRST)


def test_gunzip_takes_members_in_turn_and_refuses_damage_or_more_than_a_segment():
    data = _segment(FIRST)
    packed = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    gunzip = walfetch._Gunzip(SEG)
    out = b''.join(gunzip.feed(packed[i : i + 777]) for i in range(0, len(packed), 777))
    assert out == data and gunzip.complete()
    cut = walfetch._Gunzip(SEG)
    assert cut.feed(packed[:-3]) is not None and not cut.complete(), 'a cut member is not complete'
    damaged = bytearray(gzip.compress(data))
    damaged[-8] ^= 1  # its CRC-32
    assert walfetch._Gunzip(SEG).feed(bytes(damaged)) is None
    assert walfetch._Gunzip(SEG).feed(b'not gzip at all') is None
    assert walfetch._Gunzip(SEG // 2).feed(gzip.compress(data)) is None, 'never more than a segment'


def test_a_damaged_file_in_a_fetch_is_an_error_never_the_end(server):
    segments = names(FIRST, 2)
    for name in segments:
        path = server.archive(name, _segment(name))
    with open(path, 'r+b') as handle:
        handle.truncate(20)
    out = io.BytesIO()
    assert walreceiver.serve_fetch(wal_store.WalArchive(server.home, 'pg1'), FIRST, out) == walreceiver.EXIT_TEMPORARY
    frames = _frames(out.getvalue())
    assert frames[0] == ('wal', FIRST, _segment(FIRST)) and frames[1][:2] == ('error', segments[1])


def test_a_receiver_without_fetch_gets_one_request_per_file(server, key, pgdata):  # noqa: F811
    segments = names(FIRST, 4)
    for name in segments:
        server.archive(name, _segment(name))
    # The receiver of before the look-ahead refuses "fetch" (exit 2, nothing on stdout).
    real = server.state / 'bin' / 'ssh'
    real.rename(server.state / 'bin' / 'real-ssh')
    real.write_text(
        '#!/bin/sh\ncase "$*" in *" fetch "*) echo "barman-wal-receiver: refused" >&2; exit 2;; esac\n'
        'exec "$(dirname "$0")/real-ssh" "$@"\n'
    )
    real.chmod(0o755)
    assert restore(key, FIRST, 'pg_wal/RECOVERYXLOG')[0] == 0
    spool = walfetch.Spool(str(pgdata))
    for name in segments[1:]:
        assert restore(key, name, 'pg_wal/RECOVERYXLOG')[0] == 0
        assert (pgdata / 'pg_wal' / 'RECOVERYXLOG').read_bytes() == _segment(name)
    assert spool.count_fetched() >= 1, server.calls()
    walfetch.end_recovery(str(pgdata), io.StringIO())


def test_the_first_call_of_a_recovery_fetches_the_backups_first_segment(server, key, pgdata):  # noqa: F811
    segments = names(FIRST, 3)
    for name in segments:
        server.archive(name, _segment(name))
    (pgdata / 'backup_label').write_text(
        'START WAL LOCATION: 0/500028 (file %s)\nCHECKPOINT LOCATION: 0/500060\nSTART TIMELINE: 1\n' % FIRST
    )
    assert walfetch.label_start((pgdata / 'backup_label').read_text()) == FIRST
    assert walfetch.wanted_segments(None, FIRST, None) == [FIRST]
    assert walfetch.wanted_segments(None, FIRST, SEG) == [FIRST] + names(FIRST, 9)[1:]
    assert walfetch.wanted_segments(FIRST, FIRST, SEG) == segments[1:] + names(segments[-1], 7)[1:]
    code, err = restore(key, '00000002.history', 'pg_wal/RECOVERYHISTORY')  # PostgreSQL's first call
    assert code == walsender.EXIT_NOT_FOUND and 'after the backup_label start' in err, err
    spooled = pgdata / walfetch.SPOOL_DIR / FIRST
    for _attempt in range(1000):  # PostgreSQL reads the checkpoint's timeline meanwhile
        if spooled.exists():
            break
        subprocess.run(['sleep', '0.01'], check=True)
    for name in segments:
        assert restore(key, name, 'pg_wal/RECOVERYXLOG')[0] == 0
        assert (pgdata / 'pg_wal' / 'RECOVERYXLOG').read_bytes() == _segment(name)
    gets = [call for call in server.calls() if call.startswith('get ')]
    assert gets[0] == 'get 00000002.history' and 'get %s' % FIRST not in gets, gets
    assert 'fetch %s gzip' % FIRST in server.calls()
    walfetch.end_recovery(str(pgdata), io.StringIO())
    assert not os.path.exists(str(pgdata / walfetch.SPOOL_DIR))
