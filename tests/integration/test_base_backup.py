"""Base backups on the lab: backup.yml under write load, then each backup restored by hand, started and
compared with what the source had committed at the backup's end."""

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
from handrestore import restore
from labhosts import (
    BARMAN_HOME,
    CLUSTERS,
    ansible,
    as_postgres,
    pgbench,
    playbook,
    psql,
    run,
)

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, wal

# The rsync servers (pg3 is backed up by pg_basebackup: test_pg18.py).
SERVERS = ['pg1', 'pg2']
RESTORE_PORTS = {'pg1': 5451, 'pg2': 5452}


@pytest.fixture(scope='module')
def archiving(configured):
    for server in SERVERS:
        tablespace = ' TABLESPACE lab_tbs' if server == 'pg1' else ''
        psql(
            server,
            'DROP TABLE IF EXISTS markers; CREATE TABLE markers (id int PRIMARY KEY, '
            'lsn_before pg_lsn NOT NULL)%s' % tablespace,
        )
        as_postgres(
            'pgbench',
            '-h',
            '/var/run/postgresql',
            '-p',
            str(CLUSTERS[server]['port']),
            '-i',
            '-s',
            '5',
            '-q',
            'postgres',
        )
    return SERVERS


class Writers:
    """pgbench and a marker writer on every server: each marker commits alone and records the WAL
    position before its insert and after its commit, to decide which markers a backup must hold."""

    def __init__(self, servers):
        self.servers = servers
        self.stop_event = threading.Event()
        self.markers = dict((s, []) for s in servers)  # (id, lsn_before, lsn_after)
        self.threads = [threading.Thread(target=self.write_markers, args=(s,)) for s in servers]
        self.pgbench = [
            subprocess.Popen(
                pgbench(s, '-T', '600', '-c', '2', '-n', 'postgres'),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for s in servers
        ]
        for thread in self.threads:
            thread.start()

    def write_markers(self, server):
        port = str(CLUSTERS[server]['port'])
        psql_session = subprocess.Popen(
            [
                'runuser',
                '-u',
                'postgres',
                '--',
                'psql',
                '-XAtq',
                '-v',
                'ON_ERROR_STOP=1',
                '-h',
                '/var/run/postgresql',
                '-p',
                port,
                '-d',
                'postgres',
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )

        def ask(sql):
            psql_session.stdin.write(sql + '\n')
            psql_session.stdin.flush()
            return psql_session.stdout.readline().strip()

        next_id = int(ask('SELECT coalesce(max(id), 0) + 1 FROM markers;'))
        while not self.stop_event.is_set():
            before = ask('INSERT INTO markers VALUES (%d, pg_current_wal_insert_lsn()) RETURNING lsn_before;' % next_id)
            after = ask('SELECT pg_current_wal_insert_lsn();')
            self.markers[server].append((next_id, wal.parse_lsn(before), wal.parse_lsn(after)))
            next_id += 1
            time.sleep(0.01)
        psql_session.stdin.close()
        psql_session.wait()

    def stop(self):
        self.stop_event.set()
        for thread in self.threads:
            thread.join()
        for proc in self.pgbench:
            proc.terminate()
            proc.wait()


def backups_of(server):
    layout = catalog.ServerLayout(BARMAN_HOME, server)
    return dict(
        (e[: -len('-backup.info')], infofile.read_backup_info(os.path.join(layout.meta_dir, e)))
        for e in sorted(os.listdir(layout.meta_dir))
        if e.endswith('-backup.info')
    )


def run_backup(*extra):
    out = playbook('backup.yml', *extra).stdout
    return dict(
        (s, b)
        for s, b in (
            (line.split('"msg": "')[1].split(':')[0], line) for line in out.splitlines() if '"msg": "pg' in line
        )
    )


def newest_backup(server):
    return list(backups_of(server).items())[-1]


def assert_restored_equals_source_at_end(server, backup_id, markers, name):
    cluster, info = restore(server, backup_id, name, RESTORE_PORTS[server])
    try:
        end = wal.parse_lsn(info['end_xlog'])
        present = set(int(i) for i in cluster.sql('SELECT id FROM markers').split())
        must = [m for m in markers if m[2] <= end]
        must_not = [m for m in markers if m[1] >= end]
        assert must and must_not, '%s %s: no marker on each side of the backup end; the test proves nothing' % (
            server,
            backup_id,
        )
        missing = [m[0] for m in must if m[0] not in present]
        extra = [m[0] for m in must_not if m[0] in present]
        assert not missing, '%s %s: markers committed before the end %s are missing: %s' % (
            server,
            backup_id,
            info['end_xlog'],
            missing[:10],
        )
        assert not extra, '%s %s: markers written after the end %s are present: %s' % (
            server,
            backup_id,
            info['end_xlog'],
            extra[:10],
        )
        check = as_postgres(
            '/usr/lib/postgresql/15/bin/pg_amcheck',
            '-h',
            cluster.socket_dir,
            '-p',
            str(cluster.port),
            '--install-missing',
            '--heapallindexed',
            '--all',
            check=False,
        )
        assert check.returncode == 0, 'pg_amcheck on the restored %s %s: %s%s' % (
            server,
            backup_id,
            check.stdout,
            check.stderr,
        )
        if server == 'pg1':
            assert (
                cluster.sql(
                    'SELECT spcname FROM pg_tablespace t JOIN pg_class c ON c.reltablespace = t.oid '
                    "WHERE c.relname = 'markers'"
                )
                == 'lab_tbs'
            )
    finally:
        cluster.stop()


def inodes(path):
    found = {}
    for directory, _dirs, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            found[os.path.relpath(os.path.join(directory, name), path)] = (stat.st_ino, stat.st_size)
    return found


def test_full_and_incremental_backups_under_load_restore_to_their_end(archiving):
    writers = Writers(SERVERS)
    try:
        time.sleep(3)
        run_backup('--limit', ','.join(SERVERS), '-e', 'barman_backup_reuse=off')
        full = dict((s, newest_backup(s)) for s in SERVERS)
        time.sleep(3)
        # #15: one server's incremental sends changed files whole, the other's uses rsync's delta algorithm.
        modes = dict(zip(SERVERS, ('never', 'always') * len(SERVERS)))
        for server in SERVERS:
            run_backup('--limit', server, '-e', 'barman_backup_delta_transfer=%s' % modes[server])
        incremental = dict((s, newest_backup(s)) for s in SERVERS)
        time.sleep(1)
    finally:
        writers.stop()
    for server in SERVERS:
        full_id, full_info = full[server]
        incr_id, incr_info = incremental[server]
        assert full_id != incr_id and full_info['status'] == incr_info['status'] == 'DONE'
        assert full_info['copy_stats']['transfer'] == 'whole-file', full_info['copy_stats']
        expected = {'never': 'whole-file', 'always': 'delta'}[modes[server]]
        assert incr_info['copy_stats']['transfer'] == expected, incr_info['copy_stats']
        assert incr_info['copy_stats']['transfer_reason'] == 'delta_transfer=%s' % modes[server]
        layout = catalog.ServerLayout(BARMAN_HOME, server)
        old, new = inodes(layout.backup_dir(full_id)), inodes(layout.backup_dir(incr_id))
        shared = [p for p in new if p in old and old[p][0] == new[p][0]]
        assert 'data/PG_VERSION' in shared, 'an unchanged file was copied again instead of linked'
        written = sum(size for path, (ino, size) in new.items() if ino not in set(i for i, _size in old.values()))
        assert incr_info['deduplicated_size'] == written, (incr_info['deduplicated_size'], written)
        assert len(shared) > len(new) / 2, 'most files did not change, yet %d of %d were linked' % (
            len(shared),
            len(new),
        )
        for backup_id, name in ((full_id, 'full'), (incr_id, 'incremental')):
            assert_restored_equals_source_at_end(server, backup_id, writers.markers[server], '%s-%s' % (server, name))


def slow_backup(server, *extra):
    """backup.yml for one server, throttled so that the test can act during the copy."""
    return subprocess.Popen(
        [
            'ansible-playbook',
            'playbooks/backup.yml',
            '--limit',
            server,
            '-e',
            'barman_backup_reuse=off',
            '-e',
            'barman_backup_bandwidth_limit=20000',
        ]
        + list(extra),
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        env=dict(
            os.environ,
            PATH=os.path.join(os.path.dirname(__file__), '..', '..', '.venv', 'bin') + ':' + os.environ['PATH'],
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for(predicate, timeout=60, what='condition'):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError('timed out waiting for %s' % what)


def rsync_pids():
    out = subprocess.run(['pgrep', '-u', 'barman', '-x', 'rsync'], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def started_backup(server):
    backup_id, info = newest_backup(server)
    return backup_id if info['status'] == infofile.STARTED else None


def assert_failed_and_next_succeeds(server, backup_id, reason):
    """The next backup succeeds (so no lock was left behind) and the interrupted one is FAILED for reason."""
    run_backup('--limit', server)
    newest_id, newest = newest_backup(server)
    assert newest_id != backup_id and newest['status'] == infofile.DONE
    info = backups_of(server)[backup_id]
    assert info['status'] == infofile.FAILED, (backup_id, info['status'])
    assert reason in (info['error'] or ''), info['error']


def test_killing_rsync_leaves_a_failed_backup_and_the_next_one_succeeds(archiving):
    proc = slow_backup('pg1')
    backup_id = wait_for(lambda: started_backup('pg1'), what='the backup to start')
    wait_for(rsync_pids, what='rsync to run')
    for pid in rsync_pids():
        os.kill(pid, signal.SIGKILL)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode != 0 and 'rsync of' in out, out[-3000:]
    assert 'pg1: FAILED (RSYNC_FAILED): rsync of' in out, out[-3000:]
    assert_failed_and_next_succeeds('pg1', backup_id, 'rsync of')


def test_killing_the_postgres_session_leaves_a_failed_backup(archiving):
    proc = slow_backup('pg2')
    backup_id = wait_for(lambda: started_backup('pg2'), what='the backup to start')
    wait_for(rsync_pids, what='rsync to run')
    psql(
        'pg2',
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'barman.postgresql'",
    )
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, out[-3000:]
    assert_failed_and_next_succeeds('pg2', backup_id, 'PostgreSQL')


def test_a_killed_module_leaves_a_backup_the_next_run_marks_failed(archiving):
    proc = slow_backup('pg1')
    backup_id = wait_for(lambda: started_backup('pg1'), what='the backup to start')
    rsync = wait_for(rsync_pids, what='rsync to run')[0]
    with open('/proc/%d/stat' % rsync) as stat:
        module = int(stat.read().rsplit(')', 1)[1].split()[1])  # rsync's parent is the module's Python
    os.kill(module, signal.SIGKILL)
    for pid in rsync_pids():
        os.kill(pid, signal.SIGKILL)
    proc.communicate(timeout=120)
    assert backups_of('pg1')[backup_id]['status'] == infofile.STARTED
    assert_failed_and_next_succeeds('pg1', backup_id, 'died')


def test_a_second_concurrent_backup_is_refused(archiving):
    first = slow_backup('pg1')
    try:
        wait_for(lambda: started_backup('pg1'), what='the first backup to start')
        second = playbook('backup.yml', '--limit', 'pg1', check=False)
        # Told by its code, LOCK_BUSY: reported as BUSY, not as a failed backup (the first run's outcome counts).
        assert second.returncode == 0, second.stdout[-2000:]
        assert 'pg1: BUSY (LOCK_BUSY): no backup taken by this run' in second.stdout, second.stdout[-2000:]
        assert 'process' in second.stdout, second.stdout[-2000:]
    finally:
        out = first.communicate(timeout=300)[0]
    assert first.returncode == 0, out[-3000:]


def test_a_backup_lock_held_for_too_long_fails_the_play(archiving):
    """A hung run's lock must not turn every nightly run green: past barman_backup_busy_max_hours it is a failure."""
    path = os.path.join(BARMAN_HOME, '.pg1-backup.lock')
    started = (catalog.now_utc() - datetime.timedelta(hours=13)).isoformat()
    if not os.path.exists(path):  # the backups before made it; barman must be able to open it
        with open(path, 'w'):
            pass
        shutil.chown(path, 'barman', 'barman')
        os.chmod(path, 0o600)
    # One process holds it (flock(1) would leave its child holding the lock after a kill).
    hold = 'import fcntl, sys, time; f = open(sys.argv[1], "r+"); fcntl.flock(f, fcntl.LOCK_EX); time.sleep(600)'
    holder = subprocess.Popen([sys.executable, '-c', hold, path])
    try:
        wait_for(lambda: subprocess.run(['flock', '-n', path, 'true'], check=False).returncode != 0, what='the lock')
        with open(path, 'w') as handle:  # what a run stuck since 13 hours wrote (the first line is its pid)
            handle.write('%d\nbackup\n%s\n' % (holder.pid, started))
        result = playbook('backup.yml', '--limit', 'pg1', check=False)
        assert result.returncode != 0, result.stdout[-2000:]
        assert 'pg1: FAILED (LOCK_BUSY)' in result.stdout, result.stdout[-2000:]
        assert started in result.stdout, result.stdout[-2000:]
    finally:
        holder.kill()
        holder.wait()
    # Released with its holder: the next backups of the suite take it.
    assert subprocess.run(['flock', '-n', path, 'true'], check=False).returncode == 0


def module(args, check=False):
    return ansible(
        'backup1',
        '-b',
        '--become-user',
        'barman',
        '-m',
        'barman.postgresql.pg_basebackup_rsync',
        '-a',
        args,
        *(['--check'] if check else []),
        check=False,
    ).stdout


def test_bad_input_is_refused_clearly_and_touches_nothing(archiving):
    before = dict((s, sorted(backups_of(s))) for s in SERVERS)
    cases = [
        (
            'server=nosuchserver pg_host=127.0.0.11 pg_port=5441',
            'the archive of server nosuchserver does not exist',
        ),
        ('server=pg1 pg_host=127.0.0.99 pg_port=5441', 'cannot connect to PostgreSQL at 127.0.0.99:5441'),
        ('server=pg1 pg_host=127.0.0.11 pg_port=5441 pg_password=wrong', 'password authentication failed'),
        ('server=pg2 pg_host=127.0.0.12 pg_port=5441', 'cannot connect to PostgreSQL at 127.0.0.12:5441'),
        # pg2's cluster under pg1's name: another system identifier.
        ('server=pg1 pg_host=127.0.0.12 pg_port=5442', 'this is another cluster'),
    ]
    for args, message in cases:
        out = module(args)
        assert 'FAILED' in out and message in out, (args, out[-2000:])
    run(['pg_ctlcluster', '15', 'labpg2', 'stop'])
    try:
        out = module('server=pg2 pg_host=127.0.0.12 pg_port=5442')
        assert 'FAILED' in out and 'cannot connect to PostgreSQL at 127.0.0.12:5442' in out, out[-2000:]
    finally:
        run(['pg_ctlcluster', '15', 'labpg2', 'start'])
    psql('pg1', 'ALTER SYSTEM SET archive_mode = off')
    run(
        [
            'runuser',
            '-u',
            'postgres',
            '--',
            '/usr/lib/postgresql/15/bin/pg_ctl',
            '-D',
            '/srv/barman-lab/pg1/data',
            '-m',
            'fast',
            '-w',
            '-l',
            '/srv/barman-lab/pg1/postgresql.log',
            'restart',
        ]
    )
    try:
        out = module('server=pg1 pg_host=127.0.0.11 pg_port=5441')
        assert 'FAILED' in out and 'WAL archiving is off' in out, out[-2000:]
        checked = module('server=pg1 pg_host=127.0.0.11 pg_port=5441', check=True)
        assert 'FAILED' in checked and 'WAL archiving is off' in checked, checked[-2000:]
    finally:
        playbook('setup.yml')
    assert dict((s, sorted(backups_of(s))) for s in SERVERS) == before
    ok = json.loads(module('server=pg1 pg_host=127.0.0.11 pg_port=5441', check=True).split('=>', 1)[1])
    assert ok['changed'] is False and ok['checked'] is True
    assert dict((s, sorted(backups_of(s))) for s in SERVERS) == before
