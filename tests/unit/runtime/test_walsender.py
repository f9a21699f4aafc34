# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sender's bookkeeping for its look-ahead agent (claims, delivery notes, the ready list), and its get:
what restore_command answers PostgreSQL."""

import hashlib
import io
import os
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import jinja2
import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, recovery_hold, wal, wal_store
from ansible_collections.barman.postgresql.runtime import framing, walreceiver, walsender
from ansible_collections.barman.postgresql.runtime.spool import Spool, stat_key, target_of

NAME = '000000010000000000000005'
REMOTE = target_of('barman@192.0.2.1', None)  # the target of most tests' argv (--ssh, no --port)
TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@pytest.fixture
def key(tmp_path):
    path = tmp_path / 'barman_pg1'
    path.write_text('not a real key')
    return str(path)


@pytest.fixture
def pg_wal(tmp_path):
    directory = tmp_path / 'pg_wal'
    (directory / 'archive_status').mkdir(parents=True)
    return directory


def test_one_claim_at_a_time_and_a_dead_holders_claim_is_taken_over(key):
    box = Spool(key)
    assert oct(os.stat(box.path).st_mode & 0o777) == '0o700'
    assert box.claim(NAME)
    assert not box.claim(NAME)  # held by this (live) process
    box.release(NAME)
    assert box.claim(NAME)
    dead = subprocess.Popen(['true'])
    dead.wait()
    with open(os.path.join(box.path, NAME + '.claim'), 'w') as handle:
        handle.write(str(dead.pid))
    assert box.claim(NAME), 'the claim of a process that is gone must not block'


def test_a_delivery_note_counts_once_and_only_for_the_same_file(key, pg_wal):
    box = Spool(key)
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    box.note_delivered(NAME, stat_key(os.stat(str(segment))))
    assert box.delivered(NAME)
    assert box.was_delivered(NAME, str(segment))
    assert box.was_delivered(NAME, str(segment)), 'a note stays until PostgreSQL no longer lists the file'
    box.note_delivered(NAME, stat_key(os.stat(str(segment))))
    segment.write_bytes(b'y' * 101)  # not the file that was delivered
    assert not box.was_delivered(NAME, str(segment))
    assert not box.delivered(NAME), 'a note about another file of that name is dropped'


def test_put_of_a_file_the_agent_delivered_returns_at_once(key, pg_wal):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    Spool(key, REMOTE).note_delivered(NAME, stat_key(os.stat(str(segment))))
    argv = ['--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'put', str(segment)]
    assert walsender.main(argv, stderr=io.StringIO()) == 0  # no ssh at all: 192.0.2.1 is unreachable


def test_ready_names_in_the_order_postgresql_archives(pg_wal):
    for name in ('000000020000000000000007', '00000002.history', '000000010000000000000006', 'junk', 'x.history'):
        (pg_wal / 'archive_status' / (name + '.ready')).write_text('')
    (pg_wal / 'archive_status' / '000000010000000000000001.done').write_text('')
    assert walsender.ready_names(str(pg_wal)) == [
        '00000002.history',
        '000000010000000000000006',
        '000000020000000000000007',
    ]


def test_forget_old_drops_dead_claims_and_old_notes(key):
    box = Spool(key)
    box.note_delivered(NAME, '1 2')
    note = os.path.join(box.path, NAME + '.done')
    os.utime(note, (0, 0))
    with open(os.path.join(box.path, 'X.claim'), 'w') as handle:
        handle.write('999999999')
    box.note_delivered('000000010000000000000006', '1 2')
    box.forget_old()
    assert sorted(os.listdir(box.path)) == ['000000010000000000000006.done']
    box.note_delivered('000000010000000000000007', '1 2')
    box.note_given_up('000000010000000000000008')
    box.note_given_up('000000010000000000000009')
    box.forget_old(still_ready={'000000010000000000000007', '000000010000000000000008'})  # 6 and 9 archived
    assert sorted(os.listdir(box.path)) == ['000000010000000000000007.done', '000000010000000000000008.failed']
    assert box.given_up('000000010000000000000008') and not box.given_up('000000010000000000000009')


@pytest.fixture
def launcher(tmp_path):
    """The sender's shell launcher as the common role renders it, over a stand-in Python sender that
    says it was reached (exit 7)."""
    lib = tmp_path / 'lib'
    (lib / 'bin').mkdir(parents=True)
    (lib / 'bin' / 'barman-wal-sender.py').write_text('import sys\nprint(" ".join(sys.argv[1:]))\nsys.exit(7)\n')
    template = os.path.join(TOP, 'roles', 'common', 'templates', 'wal-sender.sh.j2')
    environment = jinja2.Environment(keep_trailing_newline=True)
    environment.filters['quote'] = shlex.quote
    with open(template) as handle:
        text = environment.from_string(handle.read()).render(ansible_managed='test', barman_lib_dir=str(lib))
    path = tmp_path / 'barman-wal-sender'
    path.write_text(text)
    path.chmod(0o755)
    return str(path)


def test_the_launcher_answers_a_delivered_file_and_hands_anything_else_to_the_sender(key, pg_wal, launcher):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    argv = [launcher, '--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key]

    def run(*command):
        proc = subprocess.run(argv + list(command), cwd=str(pg_wal.parent), capture_output=True, text=True, check=False)
        return proc.returncode, proc.stdout.strip()

    assert run('put', 'pg_wal/' + NAME) == (7, ' '.join(argv[1:] + ['put', 'pg_wal/' + NAME]))
    Spool(key, REMOTE).note_delivered(NAME, stat_key(os.stat(str(segment))))
    assert run('put', 'pg_wal/' + NAME) == (0, ''), 'the note matches: answered without Python'
    assert run('put', str(segment)) == (0, '')
    assert run('get', NAME, str(segment))[0] == 7
    os.utime(str(segment), ns=(1, os.stat(str(segment)).st_mtime_ns + 1))  # not the file delivered
    assert run('put', 'pg_wal/' + NAME)[0] == 7
    assert subprocess.run([launcher], capture_output=True, check=False).returncode == 7


def test_the_launcher_waits_for_the_agent_sending_the_file(key, pg_wal, launcher):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    argv = [launcher, '--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'put', str(segment)]
    box = Spool(key, REMOTE)
    assert box.claim(NAME)  # this test process plays the agent sending it
    timer = threading.Timer(0.3, box.note_delivered, (NAME, stat_key(os.stat(str(segment)))))
    timer.start()
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    timer.join()
    assert (proc.returncode, proc.stdout) == (0, ''), 'answered from the note, Python never started'
    box.release(NAME)
    os.unlink(os.path.join(box.path, NAME + '.done'))
    assert box.claim(NAME)
    threading.Timer(0.3, box.release, (NAME,)).start()  # gives the file up: the sender takes over
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 7


def test_the_launcher_waits_briefly_for_a_running_agent_to_take_a_ready_file(key, pg_wal, launcher):
    """A quiet server: the agent is up (its pid in agent.pid) and has not claimed the new ready file yet."""
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    argv = [launcher, '--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key]
    argv += ['put', 'pg_wal/' + NAME]
    box = Spool(key, REMOTE)
    with open(os.path.join(box.path, 'agent.pid'), 'w') as handle:
        handle.write('%d\n' % os.getpid())  # this test process plays the agent
    (pg_wal / 'archive_status' / (NAME + '.ready')).write_text('')
    timer = threading.Timer(0.05, box.note_delivered, (NAME, stat_key(os.stat(str(segment)))))
    timer.start()
    proc = subprocess.run(argv, cwd=str(pg_wal.parent), capture_output=True, text=True, check=False)
    timer.join()
    assert (proc.returncode, proc.stdout) == (0, ''), 'answered from the note, Python never started'
    os.unlink(os.path.join(box.path, NAME + '.done'))
    # The agent never takes it (it gave it up, or it is stuck): the sender takes over.
    assert subprocess.run(argv, cwd=str(pg_wal.parent), capture_output=True, check=False).returncode == 7
    (pg_wal / 'archive_status' / (NAME + '.ready')).unlink()  # not ready: no wait for the agent
    assert subprocess.run(argv, cwd=str(pg_wal.parent), capture_output=True, check=False).returncode == 7


def test_the_stat_key_is_what_the_launcher_reads_from_stat(pg_wal):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    for mtime_ns in (1795724146877025153, 1795724146000000000, 1795724146000000007):
        os.utime(str(segment), ns=(mtime_ns, mtime_ns))
        printed = subprocess.run(['stat', '-c', '%s %.9Y', str(segment)], capture_output=True, text=True, check=True)
        assert stat_key(os.stat(str(segment))) == printed.stdout.strip()


def _play_the_agent(key, name, delivers):
    """This test process plays a running agent: it holds the agent lock, claims ``name`` and, a
    little later, releases it with (``delivers``) or without a delivery note."""
    lock = walsender._agent_lock(Spool(key))
    assert lock is not None

    def agent():
        box = Spool(key, target_of('barman@127.0.0.1', 1))
        assert box.claim(name)
        time.sleep(0.2)
        if delivers:
            box.note_delivered(name, stat_key(os.stat(os.path.join(os.path.dirname(key), 'pg_wal', name))))
        else:
            box.note_given_up(name)  # as the agent does when the receiver refused it
        box.release(name)

    thread = threading.Thread(target=agent)
    thread.start()
    return lock, thread


@pytest.mark.parametrize('delivers', [True, False])
def test_a_put_waits_for_the_running_agent_and_sends_itself_what_it_gave_up(key, pg_wal, delivers):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    (pg_wal / 'archive_status' / (NAME + '.ready')).write_text('')
    lock, thread = _play_the_agent(key, NAME, delivers)
    # Port 1 of loopback refuses at once: a put that sends the file itself fails fast.
    argv = ['--ssh', 'barman@127.0.0.1', '--port', '1', '--identity-file', key, '--known-hosts', key]
    stderr = io.StringIO()
    try:
        code = walsender.main(argv + ['put', str(segment)], stderr=stderr)
    finally:
        thread.join()
        os.close(lock)
    if delivers:
        assert (code, stderr.getvalue()) == (0, ''), 'answered from the agent, no ssh'
    else:
        assert code == walsender.EXIT_TEMPORARY and 'ssh failed' in stderr.getvalue()


def test_an_agent_counts_as_running_from_its_start(key, pg_wal, tmp_path, monkeypatch):
    """The put that starts the agent hands it the lock: no moment without one, no second agent."""
    box = Spool(key)
    assert not walsender._agent_alive(box)
    stand_in = tmp_path / 'agent.py'  # started as the agent would be; it only lives a second
    stand_in.write_text('import time\ntime.sleep(1)\n')
    monkeypatch.setattr(walsender.sys, 'argv', [str(stand_in)])
    args = walsender.argparse.Namespace(ssh='barman@192.0.2.1', port=None, identity_file=key, known_hosts=key)
    for name in (NAME, '000000010000000000000006'):  # an agent starts only for more than one ready file
        (pg_wal / 'archive_status' / (name + '.ready')).write_text('')
    assert walsender._agent_runs(args, box, str(pg_wal))
    assert walsender._agent_alive(box), 'the lock went with the agent at once'
    assert walsender._agent_lock(box) is None
    deadline = time.time() + 10
    while walsender._agent_alive(box) and time.time() < deadline:
        time.sleep(0.05)
    assert not walsender._agent_alive(box), 'the lock ends with the agent'


def test_a_lone_ready_file_starts_an_agent_for_the_next_one_and_is_sent_by_its_put(key, pg_wal, tmp_path, monkeypatch):
    """A quiet server: the put sends its file itself; the agent it starts waits for the next file."""
    box = Spool(key)
    stand_in = tmp_path / 'agent.py'
    stand_in.write_text('import time\ntime.sleep(1)\n')
    monkeypatch.setattr(walsender.sys, 'argv', [str(stand_in)])
    args = walsender.argparse.Namespace(ssh='barman@192.0.2.1', port=None, identity_file=key, known_hosts=key)
    (pg_wal / 'archive_status' / (NAME + '.ready')).write_text('')
    assert not walsender._agent_runs(args, box, str(pg_wal)), 'no name: one ready file is no backlog'
    assert not walsender._agent_alive(box)
    assert not walsender._agent_runs(args, box, str(pg_wal), NAME), 'the put sends it itself'
    assert walsender._agent_alive(box), 'an agent now waits for the next file'
    assert walsender._agent_runs(args, box, str(pg_wal), '000000010000000000000006')
    deadline = time.time() + 10
    while walsender._agent_alive(box) and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.parametrize('through_pipe', [True, False])
def test_the_frame_is_the_same_through_sendfile_and_through_python(tmp_path, through_pipe):
    """sendfile into a pipe (the agent's stream, a put's ssh) or a plain write (no file descriptor)."""
    path = tmp_path / NAME
    data = os.urandom(3 * framing.CHUNK + 12345)
    path.write_bytes(data)
    expected = data + (b'%08x\n' % (zlib.crc32(data)))
    with open(str(path), 'rb') as source:
        if not through_pipe:
            sink = io.BytesIO()
            walsender._copy_with_checksum(source, sink)
            assert sink.getvalue() == expected
            return
        read_fd, write_fd = os.pipe()
        received = []
        reader = threading.Thread(target=lambda: received.append(os.fdopen(read_fd, 'rb').read()))
        reader.start()
        with os.fdopen(write_fd, 'wb') as sink:
            walsender._copy_with_checksum(source, sink)
        reader.join()
    assert received == [expected]


def test_a_put_waits_for_the_agent_no_longer_than_the_deadline(key, pg_wal, monkeypatch):
    """A claim that looks alive forever (a reused pid) holds a put up to CLAIM_WAIT_SECONDS only."""
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    box = Spool(key)
    lock = walsender._agent_lock(box)
    assert box.claim(NAME)  # held by this live process, never released
    monkeypatch.setattr(walsender, 'CLAIM_WAIT_SECONDS', 0.3)
    try:
        started = time.time()
        assert not walsender._delivered_by_agent(box, NAME, str(segment))
        assert time.time() - started < 5
    finally:
        os.close(lock)


def test_an_empty_or_damaged_claim_holds_nothing(key):
    box = Spool(key)
    for content in ('', '0', '-1', 'junk'):
        with open(os.path.join(box.path, NAME + '.claim'), 'w') as handle:
            handle.write(content)
        assert not box.claimed(NAME) and box.claim(NAME), content
        box.release(NAME)


# -- get: restore_command's answer ------------------------------------------------------------------------

# -- an agent of a former archive_command (the server moved to another backup server) -------------

OTHER = target_of('barman@192.0.2.2', 2222)  # where an agent of the former archive_command sends


def test_a_note_answers_only_a_put_of_the_same_target(key, pg_wal):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    Spool(key, OTHER).note_delivered(NAME, stat_key(os.stat(str(segment))))
    box = Spool(key, REMOTE)
    assert not box.was_delivered(NAME, str(segment))
    assert not box.delivered(NAME) and box.delivered_elsewhere(NAME)
    assert Spool(key, OTHER).was_delivered(NAME, str(segment)), 'kept: only a note of another file is dropped'
    assert not box.delivered_elsewhere('000000010000000000000006')


def test_a_release_drops_only_the_releasers_own_claim(key):
    box = Spool(key)
    with open(os.path.join(box.path, NAME + '.claim'), 'w') as handle:
        handle.write(str(os.getppid()))  # another live process: e.g. an agent's claim in a spool made again
    box.release(NAME)
    assert box.claimed(NAME)
    os.unlink(os.path.join(box.path, NAME + '.claim'))
    assert box.claim(NAME)
    box.release(NAME)
    assert not box.claimed(NAME)


def test_the_launcher_takes_no_note_of_another_target_for_an_answer(key, pg_wal, launcher):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    base = [launcher, '--identity-file', key, '--known-hosts', key]
    box = Spool(key, OTHER)
    assert box.claim(NAME)  # a live claim: the launcher would wait for it, were the note not final
    box.note_delivered(NAME, stat_key(os.stat(str(segment))))
    try:
        for ssh in (
            ['--ssh', 'barman@192.0.2.1'],
            ['--ssh', 'barman@192.0.2.2'],
            ['--ssh', 'barman@192.0.2.2', '--port', '22'],
        ):
            proc = subprocess.run(base + ssh + ['put', str(segment)], capture_output=True, check=False)
            assert proc.returncode == 7, 'sent to another backup server: the sender sends it itself'
        ssh = ['--ssh', 'barman@192.0.2.2', '--port', '2222']
        assert subprocess.run(base + ssh + ['put', str(segment)], capture_output=True, check=False).returncode == 0
    finally:
        box.release(NAME)


def test_a_put_sends_itself_what_an_agent_sent_to_another_target(key, pg_wal):
    segment = pg_wal / NAME
    segment.write_bytes(b'x' * 100)
    (pg_wal / 'archive_status' / (NAME + '.ready')).write_text('')
    box = Spool(key, OTHER)
    lock = walsender._agent_lock(box)  # the former agent still runs
    box.note_delivered(NAME, stat_key(os.stat(str(segment))))
    argv = ['--ssh', 'barman@127.0.0.1', '--port', '1', '--identity-file', key, '--known-hosts', key]
    stderr = io.StringIO()
    try:
        code = walsender.main(argv + ['put', str(segment)], stderr=stderr)
    finally:
        os.close(lock)
    assert code == walsender.EXIT_TEMPORARY and 'ssh failed' in stderr.getvalue(), 'not answered from that note'


RECEIVER = r"""
import sys
inp, out = sys.stdin.buffer, sys.stdout.buffer
for line in iter(inp.readline, b''):
    words = line.split()
    inp.read(int(words[2]))
    inp.readline()
    out.write(b'ok ' + words[1] + b'\n')
    out.flush()
"""


@pytest.fixture
def receiver(monkeypatch, tmp_path):
    """The agent's stream goes to a stand-in receiver that answers ok to every put frame."""
    script = tmp_path / 'receiver.py'
    script.write_text(RECEIVER)
    monkeypatch.setattr(walsender, '_ssh_argv', lambda args, remote: [sys.executable, str(script)])
    monkeypatch.setattr(walsender, 'AGENT_IDLE_SECONDS', 3600)


def _start_agent(key, pg_wal):
    args = walsender.argparse.Namespace(
        ssh='barman@192.0.2.1', port=None, identity_file=key, known_hosts=key, lock_fd=None, pg_wal=str(pg_wal)
    )
    result, stderr = [], io.StringIO()
    thread = threading.Thread(target=lambda: result.append(walsender.agent(args, stderr)))
    thread.start()
    return thread, result, stderr


def _wait(condition):
    deadline = time.time() + 20
    while not condition() and time.time() < deadline:
        time.sleep(0.02)
    return condition()


def _ready(pg_wal, name):
    (pg_wal / name).write_bytes(b'w' * 100)
    (pg_wal / 'archive_status' / (name + '.ready')).write_text('')


@pytest.mark.parametrize('made_again', [False, True])
def test_an_agent_stops_when_its_spool_goes_and_never_makes_it_again(key, pg_wal, receiver, made_again):
    box = Spool(key, REMOTE)
    _ready(pg_wal, NAME)
    thread, result, _stderr = _start_agent(key, pg_wal)
    assert _wait(lambda: box.delivered(NAME)), 'the note names the agent target'
    assert walsender._agent_alive(box)
    shutil.rmtree(box.path)
    if made_again:  # a new put made it again, and its agent runs there
        box = Spool(key, REMOTE)
        with open(os.path.join(box.path, 'agent.pid'), 'w') as handle:
            handle.write('999999999\n')
    second = '000000010000000000000006'
    _ready(pg_wal, second)
    thread.join(20)
    assert not thread.is_alive() and result == [0]
    assert os.path.exists(box.path) == made_again, 'the agent never makes its spool again'
    if made_again:
        assert sorted(os.listdir(box.path)) == ['agent.pid'], 'no claim, no note, no pid removed in the new spool'


def test_an_idle_agent_forgets_old_notes_and_ends_past_its_lifetime(key, pg_wal, receiver, monkeypatch):
    box = Spool(key, REMOTE)
    _ready(pg_wal, NAME)
    monkeypatch.setattr(walsender, 'AGENT_FORGET_SECONDS', 0)
    thread, result, _stderr = _start_agent(key, pg_wal)
    assert _wait(lambda: box.delivered(NAME))
    (pg_wal / 'archive_status' / (NAME + '.ready')).rename(pg_wal / 'archive_status' / (NAME + '.done'))
    assert _wait(lambda: not os.path.exists(os.path.join(box.path, NAME + '.done'))), 'archived: its note goes'
    assert thread.is_alive(), 'still within its lifetime'
    monkeypatch.setattr(walsender, 'AGENT_MAX_SECONDS', 0)
    thread.join(20)
    assert not thread.is_alive() and result == [0], 'idle past its lifetime: it ends'
    assert not walsender._agent_alive(box) and not os.path.exists(os.path.join(box.path, 'agent.pid'))


SEG = 1024 * 1024


def _segment(name, size=SEG):
    """A segment's long page header (what the sender checks) and zeros."""
    header = struct.pack(
        '<HHIQIIQII', 0xD110, 0x0002, 1, wal.segment_start_lsn(name, SEG), 0, 0, 7319180283384717360, SEG, 8192
    )
    return (header + bytes(SEG - len(header)))[:size]


OLD_NOT_FOUND = 'barman-wal-receiver: %s is not in the archive of server pg1\n' % NAME
CRASH = 'Traceback (most recent call last):\n  ...\nEOFError: Compressed file ended before the end-of-stream marker\n'


@pytest.mark.parametrize(
    'code, said, answer, outcome',
    [
        (0, '', _segment(NAME), 'fetched'),
        (0, '', _segment(NAME, SEG // 2), 'failed'),  # cut short, yet exit 0
        (0, '', b'', 'failed'),
        (0, '', _segment('000000010000000000000006'), 'failed'),  # another segment's content
        (walsender.EXIT_NOT_ARCHIVED, 'barman-wal-receiver: not in the archive\n', b'', 'not archived'),
        (1, OLD_NOT_FOUND, b'', 'not archived'),  # a receiver of 1.0
        (1, OLD_NOT_FOUND.replace(NAME, '000000010000000000000006'), b'', 'failed'),  # about another file
        (1, CRASH, b'', 'failed'),  # a crash exits 1 too
        (1, '', _segment(NAME), 'failed'),
        (walsender.EXIT_TEMPORARY, 'barman-wal-receiver: get failed: EOFError\n', b'', 'failed'),
        (255, 'ssh: connect to host 192.0.2.1 port 22: Connection refused\n', b'', 'failed'),
        (-9, '', b'', 'failed'),
        (walsender.EXIT_REFUSED, 'barman-wal-receiver: refused\n', b'', 'refused'),
        (126, '', b'', 'failed'),
        (127, 'sh: barman-wal-receiver: not found\n', b'', 'failed'),
    ],
)
def test_only_the_receivers_not_archived_answer_reads_as_not_found(code, said, answer, outcome):
    head = answer[: wal.LONG_PAGE_HEADER_SIZE]
    assert walsender.answer_of_get(NAME, code, said, len(answer), head)[0] == outcome


def test_a_history_file_must_not_be_empty():
    assert walsender.answer_of_get('00000002.history', 0, '', 0, b'')[0] == 'failed'
    text = b'1\t0/3000000\tno recovery target specified\n'
    assert walsender.answer_of_get('00000002.history', 0, '', len(text), text[:40])[0] == 'fetched'


FAKE_SSH = '''#!{python}
"""ssh for the tests: fails like an unreachable server while {state}/down counts down (-1: for ever),
answers with {state}/answer when there is one (exit code, stderr line, the answer's bytes), else runs the
real receiver on {state}/home, as sshd would run it for the forced command."""
import os, sys
state = {state!r}
with open(os.path.join(state, 'calls'), 'a') as calls:
    calls.write(sys.argv[-1] + '\\n')
down = os.path.join(state, 'down')
left = int(open(down).read()) if os.path.exists(down) else 0
if left:
    open(down, 'w').write(str(left - 1))
    sys.stderr.write('ssh: connect to host 192.0.2.1 port 22: Connection refused\\n')
    sys.exit(255)
answer = os.path.join(state, 'answer')
if os.path.exists(answer):
    with open(answer, 'rb') as handle:
        code, said, data = handle.read().split(b'\\n', 2)
    sys.stderr.write(said.decode() + '\\n')
    sys.stdout.buffer.write(data)
    sys.exit(int(code))
os.environ['SSH_ORIGINAL_COMMAND'] = sys.argv[-1]
from ansible_collections.barman.postgresql.runtime import walreceiver
sys.exit(walreceiver.main(['--barman-home', os.path.join(state, 'home'), '--server', 'pg1', '--no-background']))
'''


class FakeBackupServer:
    """The backup server as the sender sees it through ``ssh`` on PATH: the real receiver, or an outage,
    or a canned answer (the subprocess's exit code and output are the sender's only input)."""

    def __init__(self, tmp_path, monkeypatch):
        self.state = tmp_path / 'fake-ssh'
        (self.state / 'bin').mkdir(parents=True)
        self.home = str(self.state / 'home')
        os.mkdir(self.home)
        catalog.ensure_directories(catalog.ServerLayout(self.home, 'pg1'))
        ssh = self.state / 'bin' / 'ssh'
        ssh.write_text(FAKE_SSH.format(python=sys.executable, state=str(self.state)))
        ssh.chmod(0o755)
        monkeypatch.setenv('PATH', '%s%s%s' % (self.state / 'bin', os.pathsep, os.environ['PATH']))
        monkeypatch.setenv('PYTHONPATH', os.pathsep.join(p for p in sys.path if p))
        monkeypatch.setattr(walsender, 'FIRST_RETRY_PAUSE', 0.01)

    def archive(self, name, data, compression='gzip'):
        digest = hashlib.sha256(data).hexdigest()
        wal_archive = wal_store.WalArchive(self.home, 'pg1')
        assert wal_archive.receive(name, len(data), io.BytesIO(data), lambda: digest) == 'stored'
        wal_archive.process_incoming(compression)
        return wal_archive.locate(name)

    def down(self, calls):
        (self.state / 'down').write_text(str(calls))

    def answer(self, code, said, data=b''):
        (self.state / 'answer').write_bytes(b'%d\n%s\n%s' % (code, said.encode(), data))

    def calls(self):
        path = self.state / 'calls'
        return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def server(tmp_path, monkeypatch):
    return FakeBackupServer(tmp_path, monkeypatch)


def restore(key, name, path, *extra):
    """The sender as restore_command runs it; returns (exit code, stderr)."""
    stderr = io.StringIO()
    argv = ['--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'get', name, path]
    return walsender.main(argv + list(extra), stderr=stderr), stderr.getvalue()


def test_get_restores_an_archived_file_whole_and_answers_1_for_one_that_is_not(server, key, tmp_path):
    data = _segment(NAME)
    server.archive(NAME, data)
    target = tmp_path / 'pg_wal' / 'RECOVERYXLOG'
    target.parent.mkdir()
    assert restore(key, NAME, str(target)) == (0, '')
    assert target.read_bytes() == data
    target.unlink()
    code, err = restore(key, '000000010000000000000006', str(target))
    assert code == walsender.EXIT_NOT_FOUND == 1
    assert 'not in the archive' in err, 'the receiver says why in PostgreSQL log'
    assert restore(key, '00000002.history', str(target))[0] == 1, 'a probe for a timeline that never was'
    assert os.listdir(str(target.parent)) == []


def test_timeline_1_has_no_history_file_and_its_probe_asks_no_backup_server(server, key, tmp_path, launcher):
    target = tmp_path / 'RECOVERYXLOG'
    assert restore(key, walsender.FIRST_TIMELINE_HISTORY, str(target)) == (walsender.EXIT_NOT_FOUND, '')
    argv = [launcher, '--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'get']
    proc = subprocess.run(argv + ['00000001.history', str(target)], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout) == (1, ''), 'the launcher answers without its Python sender'
    assert server.calls() == [] and not target.exists()
    proc = subprocess.run(argv + ['00000002.history', str(target)], capture_output=True, text=True, check=False)
    assert proc.returncode == 7, 'any other history file goes to the sender'


def test_get_rides_out_a_short_outage(server, key, tmp_path):
    data = _segment(NAME)
    server.archive(NAME, data)
    server.down(2)
    target = tmp_path / 'RECOVERYXLOG'
    code, err = restore(key, NAME, str(target))
    assert code == 0 and target.read_bytes() == data, err
    assert err.count('retrying') == 2 and 'ssh failed (exit 255)' in err
    assert len(server.calls()) == 3


def test_get_stops_recovery_when_the_server_stays_unreachable(server, key, tmp_path):
    server.archive(NAME, _segment(NAME))
    server.down(-1)
    target = tmp_path / 'RECOVERYXLOG'
    started = time.monotonic()
    code, err = restore(key, NAME, str(target), '--retry-seconds', '0.5')
    assert code == walsender.EXIT_STOP_RECOVERY and code > 125, err
    assert 0.5 <= time.monotonic() - started < 5
    assert len(server.calls()) > 2
    assert 'could not fetch %s from barman@192.0.2.1' % NAME in err and 'Recovery stops here' in err
    assert 'start PostgreSQL again: recovery resumes' in err
    assert not target.exists() and not os.path.exists(str(target) + '.barman-partial')
    code, err = restore(key, '000000010000000000000006', str(target), '--retry-seconds', '0')
    assert code == walsender.EXIT_STOP_RECOVERY, 'absence cannot be confirmed while the server is unreachable'


def test_get_of_a_damaged_file_stops_recovery_and_leaves_no_half_file(server, key, tmp_path):
    path = server.archive(NAME, _segment(NAME))
    with open(path, 'rb') as handle:
        stored = handle.read()
    with open(path, 'wb') as handle:
        handle.write(stored[: len(stored) // 2])
    target = tmp_path / 'RECOVERYXLOG'
    code, err = restore(key, NAME, str(target), '--retry-seconds', '0.2')
    assert code == walsender.EXIT_STOP_RECOVERY, err
    assert 'the receiver could not serve it (exit 3)' in err and 'EOFError' in err
    assert not target.exists() and not os.path.exists(str(target) + '.barman-partial')


@pytest.mark.parametrize(
    'code, said, answer',
    [
        (1, CRASH.strip(), b''),  # a crash
        (0, '', _segment(NAME, 4096)),  # exit 0 with a short answer
        (walsender.EXIT_TEMPORARY, 'barman-wal-receiver: get failed', _segment(NAME, 4096)),
    ],
)
def test_get_never_reports_a_failure_as_not_found(server, key, tmp_path, code, said, answer):
    server.answer(code, said, answer)
    target = tmp_path / 'RECOVERYXLOG'
    assert restore(key, NAME, str(target), '--retry-seconds', '0.1')[0] == walsender.EXIT_STOP_RECOVERY
    assert not target.exists() and not os.path.exists(str(target) + '.barman-partial')


def test_a_receiver_of_1_0_still_answers_not_found(server, key, tmp_path):
    server.answer(1, OLD_NOT_FOUND.strip())
    assert restore(key, NAME, str(tmp_path / 'RECOVERYXLOG'))[0] == walsender.EXIT_NOT_FOUND
    assert len(server.calls()) == 1


def test_a_refusal_stops_recovery_at_once(server, key, tmp_path):
    server.answer(walsender.EXIT_REFUSED, "barman-wal-receiver: refused request 'get'")
    code, err = restore(key, NAME, str(tmp_path / 'RECOVERYXLOG'))
    assert code == walsender.EXIT_STOP_RECOVERY and len(server.calls()) == 1, err
    assert 'Check restore_command' in err


@pytest.mark.parametrize(
    'argv', [['get', NAME], ['get', 'pg_wal/RECOVERYXLOG', NAME], ['get', NAME, 'x', '--retry-seconds', '-1']]
)
def test_a_wrong_restore_command_stops_recovery(server, key, argv):
    """argparse's own exit 2 (or a bad name) would read as "not found": recovery would end at once."""
    stderr = io.StringIO()
    code = walsender.main(['--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key] + argv, stderr)
    assert code == walsender.EXIT_STOP_RECOVERY, stderr.getvalue()
    assert server.calls() == []


def test_get_killed_by_postgresql_dies_of_sigterm_and_leaves_nothing(server, key, tmp_path):
    server.down(-1)
    target = tmp_path / 'RECOVERYXLOG'
    argv = ['--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'get', NAME, str(target)]
    code = 'from ansible_collections.barman.postgresql.runtime import walsender; walsender.main(%r)'
    proc = subprocess.Popen([sys.executable, '-c', code % argv], stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while len(server.calls()) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGTERM, 'PostgreSQL exits quietly only on a SIGTERM death'
    assert not target.exists() and not os.path.exists(str(target) + '.barman-partial')


def test_end_recovery_releases_the_recoverys_hold_through_the_receiver(server, key, tmp_path, monkeypatch):  # noqa: F811
    layout = catalog.ServerLayout(server.home, 'pg1')
    backup, begin = '20261120T010000', wal.segment_name(1, 2, SEG)
    infofile.write_backup_info(
        layout.backup_info_path(backup), dict(status='DONE', begin_wal=begin, end_wal=begin, xlog_segment_size=SEG)
    )
    token = recovery_hold.take(layout, backup, begin, 'pg1:/copy')
    monkeypatch.chdir(str(tmp_path))
    argv = ['--ssh', 'barman@192.0.2.1', '--identity-file', key, '--known-hosts', key, 'end-recovery']
    stderr = io.StringIO()
    assert walsender.main(argv + ['--release-hold', token], stderr) == 0
    assert 'its hold %s on the catalog released' % token in stderr.getvalue()
    assert not os.path.exists(recovery_hold.hold_path(layout, token))
    assert 'release-hold %s' % token in server.calls()
    stderr = io.StringIO()
    assert walsender.main(argv + ['--release-hold', token], stderr) == 0, 'run again: nothing to release'
    assert 'had already been released' in stderr.getvalue()
    server.down(-1)  # the backup server is away: PostgreSQL only warns, the hold expires in time
    stderr = io.StringIO()
    assert walsender.main(argv + ['--release-hold', token], stderr) == 0
    assert 'was not released' in stderr.getvalue() and 'pg_backup_catalog action=release-hold' in stderr.getvalue()


@pytest.mark.parametrize(
    'token', ['../../etc/passwd', '20261120T010000-0123456789abcdeg', '20261120T010000', '20261120T010000-01234567']
)
def test_the_receiver_refuses_a_release_of_anything_but_a_hold_token(token):
    with pytest.raises(walreceiver.RequestError, match='refused release-hold: Hold token'):
        walreceiver.parse_request('release-hold ' + token)
