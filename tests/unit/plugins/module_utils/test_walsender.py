# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The sender's bookkeeping for its look-ahead agent: claims, delivery notes, the ready list."""

import io
import os
import shlex
import subprocess
import threading
import time

import jinja2
import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import walsender
from ansible_collections.barman.postgresql.plugins.module_utils.spool import Spool, stat_key

NAME = '000000010000000000000005'
TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


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
    Spool(key).note_delivered(NAME, stat_key(os.stat(str(segment))))
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
    Spool(key).note_delivered(NAME, stat_key(os.stat(str(segment))))
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
    box = Spool(key)
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
        box = Spool(key)
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
