"""WAL archiving on the lab, end to end: setup.yml, then PostgreSQL's archive_command under load.

Each test arranges real hosts, acts through PostgreSQL and SSH as production does, and asserts on the
archive's bytes: every segment arrives, decompresses to what PostgreSQL archived, and nothing else gets in.
"""

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest
from labhosts import (
    BARMAN_HOME,
    CLUSTERS,
    LAB,
    PG_OS_HOME,
    ansible,
    as_postgres,
    current_wal,
    pgbench,
    playbook,
    psql,
    run,
    sender_argv,
    ssh_with_server_key,
    standalone,
    switch_wal,
)

from ansible_collections.barman.postgresql.plugins.module_utils import wal, wal_store
from ansible_collections.barman.postgresql.runtime.spool import Spool

SERVERS = standalone()  # the HA pair's standby takes no WAL switch nor pgbench -i
SEGMENT = 16 * 1024 * 1024
WRAPPER = '/srv/barman-lab/archive-sha256'
WORKDIR = '/srv/barman-lab/archiving-test'


@pytest.fixture(scope='module')
def archiving(lab):
    """The lab after setup.yml: archiving on for pg1 and pg2, proven by the role itself."""
    playbook('setup.yml')
    os.makedirs(WORKDIR, exist_ok=True)
    run(['chown', 'postgres:postgres', WORKDIR])
    os.chmod(WORKDIR, 0o700)
    return SERVERS


def stored(server, name):
    """sha256 of an archived file's original content, or None when it is not in the archive."""
    path = wal_store.WalArchive(BARMAN_HOME, server).locate(name)
    return wal_store.content_digest(path) if path else None


def wait_until_archived(server, name, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if stored(server, name):
            return
        time.sleep(0.5)
    stats = psql(server, 'SELECT row_to_json(a) FROM pg_stat_archiver a')
    raise AssertionError(
        '%s of %s did not reach the archive in %d s; pg_stat_archiver: %s' % (name, server, timeout, stats)
    )


def archiver(server):
    return json.loads(psql(server, 'SELECT row_to_json(a) FROM pg_stat_archiver a'))


@contextlib.contextmanager
def recording_what_postgres_archives():
    """Wrap each cluster's archive_command to log 'name sha256' of every file it archived successfully."""
    with open(WRAPPER, 'w') as script:
        script.write(
            '#!/bin/sh\n'
            '# test only: run the real archive_command, then record what PostgreSQL archived\n'
            'log=$1; shift\n'
            'for last; do :; done\n'
            '"$@" || exit $?\n'
            'echo "$(basename "$last") $(sha256sum < "$last" | cut -d" " -f1)" >> "$log"\n'
        )
    os.chmod(WRAPPER, 0o755)
    logs, originals = {}, {}
    for server in SERVERS:
        logs[server] = '/srv/barman-lab/%s-archived.sha256' % server
        run(['install', '-o', 'postgres', '-m', '0600', '/dev/null', logs[server]])
        originals[server] = psql(server, 'SHOW archive_command')
        set_archive_command(server, '%s %s %s' % (WRAPPER, logs[server], originals[server]))
    try:
        yield logs
    finally:
        for server in SERVERS:
            set_archive_command(server, originals[server])


def set_archive_command(server, command):
    port = str(CLUSTERS[server]['port'])
    run(
        [
            'runuser',
            '-u',
            'postgres',
            '--',
            'psql',
            '-XAtq',
            '-h',
            '/var/run/postgresql',
            '-p',
            port,
            '-d',
            'postgres',
            '-v',
            'ON_ERROR_STOP=1',
            '-v',
            'cmd=' + command,
        ],
        input="ALTER SYSTEM SET archive_command = :'cmd';\nSELECT pg_reload_conf();\n",
    )
    deadline = time.time() + 10
    while psql(server, 'SHOW archive_command') != command:
        assert time.time() < deadline, 'archive_command of %s did not change' % server
        time.sleep(0.1)


def read_log(path):
    with open(path) as handle:
        return dict(line.split() for line in handle if line.strip())


def assert_archive_complete(server, first, last, logged):
    """Every segment first..last is archived, and each one PostgreSQL archived decompresses identical."""
    names = wal.segments_between(first, last, SEGMENT)
    missing = [n for n in names if stored(server, n) is None]
    assert not missing, '%s: %d of %d segments missing from the archive: %s' % (
        server,
        len(missing),
        len(names),
        missing[:5],
    )
    assert logged, '%s: the wrapper recorded nothing: did PostgreSQL archive through it?' % server
    differ = [n for n, digest in logged.items() if stored(server, n) != digest]
    assert not differ, '%s: archived content differs from what PostgreSQL sent for %s' % (server, differ[:5])


def check_continuity(server):
    """The product's own continuity check, through Ansible on the backup server."""
    out = ansible(
        'backup1',
        '-b',
        '--become-user',
        'barman',
        '-m',
        'barman.postgresql.pg_wal_archive',
        '-a',
        'server=%s switch_wal=false fail_on_problem=false' % server,
        '-o',
    ).stdout
    result = json.loads(out.split('=>', 1)[1])
    return result['continuity']


def run_load(seconds, *servers):
    """pgbench on each server at once, in the background."""
    procs = []
    for server in servers:
        as_postgres(
            'pgbench',
            '-h',
            '/var/run/postgresql',
            '-p',
            str(CLUSTERS[server]['port']),
            '-i',
            '-s',
            '10',
            '-q',
            'postgres',
        )
        procs.append(
            subprocess.Popen(
                pgbench(server, '-T', str(seconds), '-c', '2', '-n', 'postgres'),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    return procs


def wait_load(procs):
    for proc in procs:
        err = proc.communicate(timeout=600)[1]
        assert proc.returncode == 0, 'pgbench failed: %s' % err.decode()


def test_setup_is_idempotent(archiving):
    recap = playbook('setup.yml').stdout.split('PLAY RECAP')[-1]
    for host in ('backup1', 'pg1', 'pg2'):
        line = [entry for entry in recap.splitlines() if entry.startswith(host)][0]
        assert 'changed=0' in line and 'failed=0' in line, recap


def test_every_segment_arrives_identical_under_load(archiving):
    with recording_what_postgres_archives() as logs:
        for server in SERVERS:
            psql(server, "SELECT pg_stat_reset_shared('archiver')")
        first = dict((server, current_wal(server)) for server in SERVERS)
        wait_load(run_load(60, *SERVERS))
        last = dict((server, switch_wal(server)) for server in SERVERS)
        for server in SERVERS:
            wait_until_archived(server, last[server])
    for server in SERVERS:
        assert wal.segment_number(last[server], SEGMENT) - wal.segment_number(first[server], SEGMENT) >= 5, (
            '%s: the load wrote too little WAL to test anything (%s..%s)' % (server, first[server], last[server])
        )
        assert_archive_complete(server, first[server], last[server], read_log(logs[server]))
        assert archiver(server)['failed_count'] == 0, archiver(server)
        continuity = check_continuity(server)
        assert continuity['ok'] and not continuity['missing'], continuity


def test_backup_server_outage_loses_nothing(archiving):
    with recording_what_postgres_archives() as logs:
        for server in SERVERS:
            psql(server, "SELECT pg_stat_reset_shared('archiver')")
        first = dict((server, current_wal(server)) for server in SERVERS)
        load = run_load(50, *SERVERS)
        time.sleep(5)
        run([LAB, 'sshd-stop'])
        try:
            time.sleep(30)
            failed_during_outage = dict((server, archiver(server)['failed_count']) for server in SERVERS)
        finally:
            run([LAB, 'sshd-start'])
        wait_load(load)
        last = dict((server, switch_wal(server)) for server in SERVERS)
        for server in SERVERS:
            wait_until_archived(server, last[server], timeout=300)
    for server in SERVERS:
        assert failed_during_outage[server] > 0, 'PostgreSQL of %s saw no failure while sshd was down' % server
        assert_archive_complete(server, first[server], last[server], read_log(logs[server]))
        continuity = check_continuity(server)
        assert continuity['ok'] and not continuity['missing'], continuity


def newest_archived_segment(server):
    return [n for n in wal_store.WalArchive(BARMAN_HOME, server).archived_names() if wal.is_segment_name(n)][-1]


def errors_of(server):
    return sorted(os.listdir(os.path.join(BARMAN_HOME, server, 'errors')))


def test_a_different_file_under_an_archived_name_is_refused_and_the_same_one_accepted(archiving):
    name = newest_archived_segment('pg1')
    before = stored('pg1', name)
    copy = os.path.join(WORKDIR, name)
    as_postgres(*sender_argv('pg1', 'get', name, copy))
    with open(copy, 'rb') as handle:
        assert wal_store.hashlib.sha256(handle.read()).hexdigest() == before

    again = as_postgres(*sender_argv('pg1', 'put', copy), check=False)
    assert again.returncode == 0, again.stderr

    errors_before = errors_of('pg1')
    with open(copy, 'r+b') as handle:
        handle.seek(10 * 8192)
        byte = handle.read(1)
        handle.seek(10 * 8192)
        handle.write(bytes([byte[0] ^ 0xFF]))
    refused = as_postgres(*sender_argv('pg1', 'put', copy), check=False)
    assert refused.returncode == 2, (refused.returncode, refused.stderr)
    assert 'refused %s' % name in refused.stderr and 'different file' in refused.stderr, refused.stderr
    assert stored('pg1', name) == before, 'the archived file changed'
    kept = [e for e in errors_of('pg1') if e not in errors_before]
    assert len(kept) == 1 and kept[0].startswith(name + '.'), kept


def stop_agent(spool):
    """End the look-ahead agent of ``spool`` (if one runs) and wait until it is gone."""
    try:
        with open(os.path.join(spool.path, 'agent.pid')) as handle:
            pid = int(handle.read())
        os.kill(pid, signal.SIGTERM)
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return
    for _attempt in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError('the look-ahead agent %d did not end on SIGTERM' % pid)


def test_a_refused_file_in_a_backlog_is_reported_once_and_the_rest_still_arrives(archiving):
    """PostgreSQL's archiver draining three ready segments, the middle one a different file under an
    archived name: the look-ahead agent delivers the others, gives the refused one up (it does not
    send it again and again, each refusal keeping a copy in errors/), and archive_command reports it."""
    names = [n for n in wal_store.WalArchive(BARMAN_HOME, 'pg1').archived_names() if wal.is_segment_name(n)][-3:]
    pgdata = os.path.join(WORKDIR, 'backlog')
    status = os.path.join(pgdata, 'pg_wal', 'archive_status')
    as_postgres('mkdir', '-p', status)
    for name in names:
        as_postgres(*sender_argv('pg1', 'get', name, os.path.join(pgdata, 'pg_wal', name)))
        as_postgres('touch', os.path.join(status, name + '.ready'))
    with open(os.path.join(pgdata, 'pg_wal', names[1]), 'r+b') as handle:
        handle.seek(10 * 8192)
        byte = handle.read(1)
        handle.seek(10 * 8192)
        handle.write(bytes([byte[0] ^ 0xFF]))
    errors_before = errors_of('pg1')
    codes = {}
    for name in (names[0], names[1], names[2]):  # in order, as PostgreSQL would (it would retry the second)
        argv = ['runuser', '-u', 'postgres', '--'] + sender_argv('pg1', 'put', 'pg_wal/' + name)
        proc = subprocess.run(argv, cwd=pgdata, capture_output=True, text=True, check=False)
        codes[name] = proc.returncode
        if proc.returncode == 0:
            os.rename(os.path.join(status, name + '.ready'), os.path.join(status, name + '.done'))
        else:
            assert 'refused %s' % name in proc.stderr and 'different file' in proc.stderr, proc.stderr
    assert codes == {names[0]: 0, names[1]: 2, names[2]: 0}
    # The agent stays up for the next segment (AGENT_IDLE_SECONDS): end it here rather than wait for that.
    spool = Spool('%s/.ssh/barman_pg1' % PG_OS_HOME)
    stop_agent(spool)
    kept = [e for e in errors_of('pg1') if e not in errors_before]
    assert len(kept) == 2 and all(k.startswith(names[1] + '.') for k in kept), "the agent's copy and the put's"
    assert spool.given_up(names[1]) and not spool.claimed(names[1])
    run(['rm', '-rf', pgdata])


def test_the_restricted_key_cannot_do_anything_but_its_own_wal(archiving):
    # No shell, no other command: the forced command answers every request and refuses these.
    for request in (
        [],
        ['id'],
        ['cat', '/var/lib/barman/pg2/identity.json'],
        ['sh', '-c', 'touch /tmp/pwned'],
        ['rsync', '--server', '.', '/var/lib/barman/pg2/wals/'],
    ):
        proc = as_postgres(*ssh_with_server_key('pg1', '-T', 'barman@127.0.0.21', *request), check=False)
        assert proc.returncode == 2, (request, proc.returncode, proc.stdout, proc.stderr)
        assert 'refused request' in proc.stderr and 'uid=' not in proc.stdout, (request, proc.stderr)
    assert not os.path.exists('/tmp/pwned')

    # scp / sftp and rsync over the key are refused the same way, and write nothing.
    probe = os.path.join(WORKDIR, 'probe')
    as_postgres('sh', '-c', 'echo probe > %s' % probe)
    scp = as_postgres(
        'scp', *ssh_with_server_key('pg1')[1:], probe, 'barman@127.0.0.21:/var/lib/barman/probe', check=False
    )
    assert scp.returncode != 0
    rsync = as_postgres(
        'rsync',
        '-e',
        ' '.join(ssh_with_server_key('pg1')),
        probe,
        'barman@127.0.0.21:/var/lib/barman/pg2/incoming/',
        check=False,
    )
    assert rsync.returncode != 0
    assert not os.path.exists('/var/lib/barman/probe')
    assert 'probe' not in os.listdir('/var/lib/barman/pg2/incoming')

    # Paths instead of names are refused; another server's WAL is out of reach.
    for name in ('../pg2/wals/x', '000000010000000000000001/../../x', '/etc/passwd'):
        proc = as_postgres(*ssh_with_server_key('pg1', 'barman@127.0.0.21', 'put', name, '10'), check=False)
        assert proc.returncode == 2 and 'is not a WAL file name' in proc.stderr, (name, proc.stderr)
    pg1_names = set(wal_store.WalArchive(BARMAN_HOME, 'pg1').archived_names())
    while newest_archived_segment('pg2') in pg1_names:
        wait_until_archived('pg2', switch_wal('pg2'))
    only_pg2 = newest_archived_segment('pg2')
    proc = as_postgres(*sender_argv('pg1', 'get', only_pg2, os.path.join(WORKDIR, 'stolen')), check=False)
    assert proc.returncode == 1 and 'not in the archive of server pg1' in proc.stderr, proc.stderr
    assert not os.path.exists(os.path.join(WORKDIR, 'stolen'))


def archive_listing(server):
    root = os.path.join(BARMAN_HOME, server)
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _dirs, files in os.walk(root) for f in files)


def test_bad_deliveries_are_refused_with_a_reason_and_write_nothing(archiving):
    before = archive_listing('pg1')
    empty = os.path.join(WORKDIR, '0000000100000000000000F0')
    short = os.path.join(WORKDIR, '0000000100000000000000F1')
    as_postgres('sh', '-c', ': > %s; head -c 1000 /dev/zero > %s' % (empty, short))
    cases = [
        (empty, 'is empty'),
        (short, 'WAL'),
        (os.path.join(WORKDIR, 'probe'), 'is not a WAL file name'),
    ]
    for path, reason in cases:
        proc = as_postgres(*sender_argv('pg1', 'put', path), check=False)
        assert proc.returncode == 2, (path, proc.returncode, proc.stderr)
        assert reason in proc.stderr and os.path.basename(path) in proc.stderr, (path, proc.stderr)
    # A size that is not the segment's: the receiver reads the header and refuses.
    proc = as_postgres(
        *ssh_with_server_key('pg1', 'barman@127.0.0.21', 'put', '0000000100000000000000F2', '99999999999'),
        check=False,
    )
    assert proc.returncode == 2 and 'more than a WAL segment' in proc.stderr, proc.stderr
    assert archive_listing('pg1') == before


def test_unknown_server_is_refused_clearly(archiving):
    out = ansible(
        'backup1',
        '-b',
        '--become-user',
        'barman',
        '-m',
        'barman.postgresql.pg_wal_archive',
        '-a',
        'server=nosuchserver switch_wal=false',
        check=False,
    ).stdout
    assert 'FAILED' in out and 'the archive of server nosuchserver does not exist' in out, out
    out = ansible(
        'backup1',
        '-b',
        '--become-user',
        'barman',
        '-m',
        'barman.postgresql.pg_wal_archive',
        '-a',
        'server=../pg1 switch_wal=false',
        check=False,
    ).stdout
    assert 'FAILED' in out and '../pg1' in out, out
    proc = run(
        [
            'runuser',
            '-u',
            'barman',
            '--',
            '/usr/local/lib/barman-postgresql/bin/barman-wal-receiver',
            '--barman-home',
            BARMAN_HOME,
            '--server',
            'nosuchserver',
        ],
        check=False,
        env=dict(os.environ, SSH_ORIGINAL_COMMAND='get 000000010000000000000001'),
    )
    assert proc.returncode == 3 and 'does not exist' in proc.stderr, proc.stderr


def test_module_process_and_rebuild_keep_the_index_true(archiving):
    xlog_db = os.path.join(BARMAN_HOME, 'pg1', 'wals', 'pg1-xlog.db')
    with open(xlog_db) as handle:
        original = handle.read()
    base = ['backup1', '-b', '--become-user', 'barman', '-m', 'barman.postgresql.pg_wal_archive', '-o']
    check = ansible(*base, '-a', 'server=pg1 action=rebuild', '--check').stdout
    assert '"changed": false' in check, check
    os.unlink(xlog_db)
    rebuilt = ansible(*base, '-a', 'server=pg1 action=rebuild').stdout
    assert 'CHANGED' in rebuilt, rebuilt
    with open(xlog_db) as handle:
        names = sorted(line.split()[0] for line in handle)
    assert names == sorted(line.split()[0] for line in original.splitlines()), 'rebuild lost or invented entries'
    processed = ansible(*base, '-a', 'server=pg1 action=process').stdout
    assert 'SUCCESS' in processed or 'CHANGED' in processed, processed
