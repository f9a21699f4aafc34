"""A failed fetch is not "not found": restore_command with the backup server unreachable.

PostgreSQL reads a restore_command's exit code: 1..125 means "not in the archive" (recovery ends there
and, with no target, promotes); above 125 it stops with FATAL. So the sender may answer "not found"
only for a file the archive truly does not hold; when it cannot tell, it retries, then stops recovery.
"""

import json
import os
import shutil
import subprocess
import tempfile
import time

import drills
import pytest
from drills import DRILLS
from labhosts import BARMAN_HOME, LAB, ROOT, VENV_BIN, as_postgres, playbook, psql, run, sender_argv, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import wal, wal_store

SEGMENT = 16 * 1024 * 1024
SEGMENTS = 40  # replay long enough to cut the backup server off in its middle
OUTAGE_SECONDS = 5
PORT = 6447


def archived_segments(server):
    return [n for n in wal_store.WalArchive(BARMAN_HOME, server).archived_names() if wal.is_segment_name(n)]


def wait_until_archived(server, name, timeout=180):
    deadline = time.time() + timeout
    while not wal_store.WalArchive(BARMAN_HOME, server).locate(name):
        assert time.time() < deadline, '%s of %s did not reach the archive in %d s' % (name, server, timeout)
        time.sleep(0.2)


@pytest.fixture(scope='module')
def long_archive(configured):
    """A backup of pg1, then SEGMENTS segments, each with one committed row, all archived."""
    psql('pg1', 'DROP TABLE IF EXISTS fetch_drill; CREATE TABLE fetch_drill (id int PRIMARY KEY)')
    playbook('backup.yml', '--limit', 'pg1')
    # A checkpoint logs the running transactions (none): the copy then takes connections (hot standby)
    # right after its consistent point, rather than at the next such record, which may come late.
    psql('pg1', 'CHECKPOINT')
    for row in range(1, SEGMENTS + 1):
        psql('pg1', 'INSERT INTO fetch_drill VALUES (%d)' % row)
        last = switch_wal('pg1')
    wait_until_archived('pg1', last)
    return last


def start_playbook(name, variables):
    """ansible-playbook in the background (labhosts.run's environment): the outage may cut its connections."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_FORCE_COLOR='0')
    env['PATH'] = VENV_BIN + os.pathsep + env.get('PATH', '')
    argv = ['ansible-playbook', os.path.join('playbooks', name), '-e', json.dumps(variables)]
    return subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read(path):
    try:
        with open(path, errors='replace') as handle:
            return handle.read()
    except FileNotFoundError:
        return ''


def promotion_lsn(data_dir):
    """Where the copy ended recovery: the switch point in its newest timeline history file, or None."""
    pg_wal = os.path.join(data_dir, 'pg_wal')
    histories = sorted(n for n in os.listdir(pg_wal) if n.endswith('.history')) if os.path.isdir(pg_wal) else []
    if not histories:
        return None
    timeline = int(histories[-1][:8], 16)
    entries = wal.parse_timeline_history(read(os.path.join(pg_wal, histories[-1])), timeline)
    return entries[-1].switch_lsn


def pause_replay(recovery, log_path, timeout=300):
    """Pause the copy's replay as soon as it takes connections (once consistent); return the LSN replayed."""
    deadline = time.time() + timeout
    while True:
        proc = as_postgres(
            'psql', '-XAtq', '-h', '/var/run/postgresql', '-p', str(PORT), '-d', 'postgres',
            '-c', 'SELECT pg_wal_replay_pause()', check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            break
        assert 'recovery is not in progress' not in proc.stderr, 'replay ended before the outage: make it longer'
        assert recovery.poll() is None, 'recover.yml ended before replay began:\n%s' % recovery.stdout.read()
        assert time.time() < deadline, 'the copy took no connection in %d s:\n%s' % (timeout, read(log_path)[-3000:])
        time.sleep(0.02)
    while drills.query(PORT, 'SELECT pg_get_wal_replay_pause_state()') != ['paused']:
        assert time.time() < deadline, 'replay did not pause'
        time.sleep(0.02)
    return wal.parse_lsn(drills.query(PORT, 'SELECT pg_last_wal_replay_lsn()')[0])


def running(data_dir):
    pid_file = os.path.join(data_dir, 'postmaster.pid')
    if not os.path.exists(pid_file):
        return False
    try:
        os.kill(int(read(pid_file).split()[0]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    return True


def test_a_backup_server_outage_during_replay_never_promotes_short(long_archive):
    newest = archived_segments('pg1')[-1]
    data_dir = os.path.join(DRILLS, 'fetch-outage')
    log_path = data_dir + '.log'
    drills.clear(data_dir)
    recovery = start_playbook('recover.yml', dict(server='pg1', recover_dir=data_dir, recover_port=PORT))
    try:
        # Cut the backup server off in the middle of replay, past the consistent point: from there a fetch
        # mistaken for "not found" ends recovery and promotes, short of the archive. Replay of nearly
        # empty segments is fast, so it is paused (PostgreSQL's own pg_wal_replay_pause) while sshd stops.
        paused_at = pause_replay(recovery, log_path)
        assert paused_at < wal.segment_start_lsn(newest, SEGMENT), 'replay ended before the outage: make it longer'
        run([LAB, 'sshd-stop'])
        try:
            drills.query(PORT, 'SELECT pg_wal_replay_resume()')
            time.sleep(OUTAGE_SECONDS)
        finally:
            run([LAB, 'sshd-start'])
        # Judge by the copy: recover.yml (or its connection) may not live through the outage.
        deadline = time.time() + 300
        while recovery.poll() is None and running(data_dir) and time.time() < deadline:
            time.sleep(0.5)
        try:
            out = recovery.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            recovery.kill()
            out = recovery.communicate()[0]
        log = read(log_path)
        ended_at = promotion_lsn(data_dir)
        if ended_at is not None:
            reached = wal.format_lsn(ended_at)
            needed = wal.format_lsn(wal.segment_start_lsn(newest, SEGMENT))
            assert ended_at >= wal.segment_start_lsn(newest, SEGMENT), (
                'the copy promoted at %s, short of the newest archived segment %s (%s):\n%s'
                % (reached, newest, needed, log[-4000:])
            )
            rows = drills.query(PORT, 'SELECT count(*) FROM fetch_drill')
            assert rows == [str(SEGMENTS)], 'the copy holds %s rows of %d' % (rows, SEGMENTS)
        else:
            # The other honest outcome: recovery stopped, the server is down and its log says why.
            assert not running(data_dir), 'the copy neither reached the end nor stopped:\n%s' % log[-4000:]
            assert 'FATAL' in log and 'Recovery stops here' in log, log[-4000:]
        # The drill was one: a fetch did fail during replay, and the sender said so.
        assert 'barman-wal-sender: get ' in log and 'retrying' in log, (
            wal.format_lsn(paused_at),
            log[-4000:],
            out[-3000:],
        )
    finally:
        run([LAB, 'sshd-start'])
        if recovery.poll() is None:
            recovery.kill()
            recovery.communicate()
        drills.stop_cluster(data_dir)


def test_replay_takes_the_look_ahead_and_leaves_no_spool(long_archive):
    """recover.yml with get_wal over SEGMENTS segments: the gets were served by the look-ahead (the sender
    logs its start, recovery_end_command its tally), the copy holds every row, and no spool survives."""
    data_dir = os.path.join(DRILLS, 'fetch-look-ahead')
    drills.clear(data_dir)
    try:
        recovery = start_playbook('recover.yml', dict(server='pg1', recover_dir=data_dir, recover_port=PORT))
        out = recovery.communicate(timeout=600)[0]
        assert recovery.returncode == 0, out[-3000:]
        log = read(data_dir + '.log')
        assert 'barman-wal-sender: look-ahead: fetching up to' in log, log[-4000:]
        tally = [line for line in log.splitlines() if 'recovery ended; the look-ahead fetched' in line]
        assert tally, log[-4000:]
        fetched = int(tally[-1].split('the look-ahead fetched ')[1].split()[0])
        assert fetched >= SEGMENTS // 2, tally[-1]
        # PostgreSQL's re-read of its last record's segment came from its own kept copy, not the backup server.
        assert 'served again from the copy PostgreSQL kept in place' in log, log[-4000:]
        assert not os.path.exists(os.path.join(data_dir, 'barman_wal_spool')), 'the spool outlived recovery'
        assert drills.query(PORT, 'SELECT count(*) FROM fetch_drill') == [str(SEGMENTS)]
    finally:
        drills.stop_cluster(data_dir)


@pytest.fixture
def scratch():
    """A directory the postgres user writes to, removed afterwards."""
    path = tempfile.mkdtemp(prefix='fetch-drill-')
    shutil.chown(path, 'postgres', 'postgres')
    yield path
    shutil.rmtree(path)


def test_get_answers_not_found_only_for_a_file_the_archive_does_not_hold(long_archive, scratch):
    present = archived_segments('pg1')[-1]
    missing = wal.segment_name(1, wal.segment_number(present, SEGMENT) + 1000, SEGMENT)
    target = os.path.join(scratch, 'x')

    def get(name, *extra):
        proc = as_postgres(*sender_argv('pg1', 'get', name, target, *extra), check=False)
        return proc.returncode, sorted(os.listdir(scratch)), proc.stderr

    code, files, err = get(present)
    assert (code, files) == (0, ['x']), err
    with open(target, 'rb') as handle:
        fetched = wal_store.hashlib.sha256(handle.read()).hexdigest()
    assert fetched == wal_store.content_digest(wal_store.WalArchive(BARMAN_HOME, 'pg1').locate(present))
    os.unlink(target)
    assert get(missing)[:2] == (1, []), 'a file the archive does not hold is "not found"'
    assert get('000000FF.history')[:2] == (1, []), 'a history probe of a timeline that never was'

    run([LAB, 'sshd-stop'])
    try:
        started = time.time()
        code, files, err = get(present, '--retry-seconds', '2')
        took = time.time() - started
        missing_code, missing_files, _err = get(missing, '--retry-seconds', '2')
    finally:
        run([LAB, 'sshd-start'])
    assert code > 125 and files == [], 'unreachable: exit %d, files %s; stderr:\n%s' % (code, files, err)
    assert 2 <= took < 30, 'it retried %.1f s for a budget of 2 s' % took
    assert 'Recovery stops here' in err and present in err, err
    assert missing_code > 125 and missing_files == [], 'absence cannot be confirmed while the server is unreachable'
