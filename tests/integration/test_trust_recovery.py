"""Recovery never touches the original, refuses before copying, and the copy runs none of the original's
duties: drills on the lab through recover.yml and pg_recover, asserting on hosts, files and rows."""

import json
import os
import re
import shutil
import subprocess
import time

import pytest
import drills
from drills import DRILLS
from labhosts import BACKUP1, PG_OS_HOME, CLUSTERS, catalog, module, playbook, psql, run

PG1_DATA = '/srv/barman-lab/pg1/data'
PG2_DATA = '/var/lib/postgresql/15/labpg2'
RECOVERY_END_MARK = os.path.join(DRILLS, 'recovery_end_command-ran')


@pytest.fixture(scope='module')
def pg1_backup(configured):
    os.makedirs(DRILLS, exist_ok=True)
    shutil.chown(DRILLS, 'postgres', 'postgres')
    playbook('backup.yml', '--limit', 'pg1')
    return catalog(dict(server='pg1', action='show', backup_id='latest'))['backup']['backup_id']


def started_at(server):
    return psql(server, 'SELECT pg_postmaster_start_time()')


def moved_aside(path):
    parent, name = os.path.split(path)
    return sorted(entry for entry in os.listdir(parent) if entry.startswith(name + '.moved-'))


def test_in_place_on_another_host_is_refused_and_touches_nothing(configured):
    # pg1's data directory path exists on "pg2" too (the lab's hosts share one filesystem): exactly the
    # cluster an in-place recovery on the wrong host would have stopped and moved aside.
    before = {'pg1': started_at('pg1'), 'pg2': started_at('pg2')}
    aside = (moved_aside(PG1_DATA), moved_aside(PG2_DATA))  # earlier in-place drills leave theirs
    proc = playbook(
        'recover.yml', '-e', json.dumps(dict(server='pg1', recover_in_place=True, recover_host='pg2')), check=False
    )
    assert proc.returncode != 0
    assert 'In place recovers pg1 on its own host' in proc.stdout, proc.stdout[-3000:]
    assert {'pg1': started_at('pg1'), 'pg2': started_at('pg2')} == before
    assert (moved_aside(PG1_DATA), moved_aside(PG2_DATA)) == aside


def test_the_in_place_confirmation_names_the_host(configured):
    before = started_at('pg1')
    aside = moved_aside(PG1_DATA)
    proc = playbook(
        'recover.yml',
        '-e',
        json.dumps(dict(server='pg1', recover_in_place=True, recover_in_place_confirm='pg1')),
        check=False,
    )
    assert proc.returncode != 0
    assert 'recover_in_place_confirm=pg1@127.0.0.11' in proc.stdout, proc.stdout[-3000:]
    assert started_at('pg1') == before and moved_aside(PG1_DATA) == aside


def recover_module(params, *options):
    base = dict(server='pg1', destination_host=CLUSTERS['pg1']['host'])
    return module('pg_recover', dict(base, **params), *options)


@pytest.mark.parametrize('check_mode', [True, False])
def test_everything_is_checked_before_a_byte_moves(pg1_backup, check_mode):
    destination = os.path.join(DRILLS, 'refused-before-copy')
    drills.clear(destination)
    options = ['--check'] if check_mode else []
    succeeded, result = recover_module(dict(destination_directory=destination, get_wal=True), *options)
    assert not succeeded and 'wal_sender' in result['msg'], result
    assert not os.path.exists(destination)


@pytest.fixture
def tiny_filesystem(configured):
    """A 16 MiB filesystem on the destination host, far too small for pg1's backup."""
    mount_point = '/srv/barman-lab/pg1/tiny'
    os.makedirs(mount_point, exist_ok=True)
    # The drill makes what it needs: a machine where root cannot mount fails it, never skips it.
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=16m,mode=0755', 'tmpfs', mount_point], check=True)
    shutil.chown(mount_point, 'postgres', 'postgres')
    yield mount_point
    subprocess.run(['umount', mount_point], check=True)
    os.rmdir(mount_point)


@pytest.mark.parametrize('check_mode', [True, False])
def test_a_destination_without_room_is_refused_with_the_figures(pg1_backup, tiny_filesystem, check_mode):
    destination = os.path.join(tiny_filesystem, 'copy')
    options = ['--check'] if check_mode else []
    succeeded, result = recover_module(dict(destination_directory=destination, get_wal=False), *options)
    assert not succeeded, result
    assert 'the filesystem %s on the destination has 16 MiB free' % tiny_filesystem in result['msg'], result
    assert result['error_code'] == 'NOT_ENOUGH_SPACE', result
    assert result['needed_bytes'] > result['free_bytes'] == 16 * 1024 * 1024
    assert os.listdir(tiny_filesystem) == []


@pytest.fixture
def pg1_with_duties(configured):
    """pg1 subscribes to a publication of pg2 and runs a recovery_end_command: duties of the original."""
    run(['pg_ctlcluster', '15', 'labpg2', 'stop'])
    psql_conf = '/etc/postgresql/15/labpg2/conf.d/barman-drill-logical.conf'
    with open(psql_conf, 'w') as conf:
        conf.write('wal_level = logical\n')
    run(['pg_ctlcluster', '15', 'labpg2', 'start'])
    for server in ('pg1', 'pg2'):
        psql(server, 'CREATE TABLE IF NOT EXISTS drill_feed (id int PRIMARY KEY)')
    psql('pg2', 'CREATE PUBLICATION drill_pub FOR TABLE drill_feed')
    psql(
        'pg1',
        "CREATE SUBSCRIPTION drill_sub CONNECTION 'host=/var/run/postgresql port=%d dbname=postgres' "
        'PUBLICATION drill_pub' % CLUSTERS['pg2']['port'],
    )
    psql('pg1', "ALTER SYSTEM SET recovery_end_command = 'touch %s'" % RECOVERY_END_MARK)
    if os.path.exists(RECOVERY_END_MARK):
        os.unlink(RECOVERY_END_MARK)
    psql('pg2', 'INSERT INTO drill_feed SELECT generate_series(1, 5)')
    wait_for(lambda: psql('pg1', 'SELECT count(*) FROM drill_feed') == '5', 'pg1 to apply the subscription')
    yield
    psql('pg1', 'DROP SUBSCRIPTION drill_sub')
    psql('pg1', 'ALTER SYSTEM RESET recovery_end_command')
    psql('pg2', 'DROP PUBLICATION drill_pub')
    os.unlink(psql_conf)
    run(['pg_ctlcluster', '15', 'labpg2', 'restart'])


def wait_for(condition, what, seconds=30):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, 'waited %d s for %s' % (seconds, what)
        time.sleep(0.2)


def test_a_copy_runs_none_of_the_original_duties(pg1_with_duties):
    playbook('backup.yml', '--limit', 'pg1')
    data_dir = os.path.join(DRILLS, 'no-duties')
    drills.clear(data_dir)
    proc = playbook('recover.yml', '-e', json.dumps(dict(server='pg1', recover_dir=data_dir, recover_port=6446)))
    summary = [line for line in proc.stdout.splitlines() if 'recovered from backup' in line][0]
    assert re.search(r'reached\\?"\s*:\s*true', summary), summary
    try:
        assert drills.query(6446, 'SELECT count(*) FROM drill_feed') == ['5']
        assert drills.query(6446, 'SHOW max_logical_replication_workers') == ['0']
        # An apply worker would start within a second or two: none may appear.
        deadline = time.time() + 5
        while time.time() < deadline:
            assert drills.query(6446, 'SELECT count(*) FROM pg_stat_subscription WHERE pid IS NOT NULL') == ['0']
            time.sleep(0.5)
        # The publisher still serves the original alone.
        senders = psql('pg2', "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'drill_sub'")
        assert senders == '1'
        assert not os.path.exists(RECOVERY_END_MARK), 'the copy ran the original recovery_end_command'
        with open(os.path.join(data_dir, 'postgresql.auto.conf')) as conf:
            assert "#barman.postgresql (recovered copy): recovery_end_command = 'touch" in conf.read()
    finally:
        drills.stop_cluster(data_dir)


def test_sshd_without_pam_accepts_the_server_key(configured):
    """The barman account is not locked: sshd with UsePAM no refuses key logins to a locked one."""
    with open('/etc/shadow') as shadow:
        fields = [line.split(':') for line in shadow if line.startswith('barman:')][0]
    assert fields[1] == '*'
    config = '/var/lib/barman-lab/sshd_nopam_config'
    with open('/var/lib/barman-lab/sshd_config') as lab_config:
        text = lab_config.read().replace('UsePAM yes', 'UsePAM no')
    text = '\n'.join(line for line in text.splitlines() if not line.startswith(('ListenAddress', 'PidFile')))
    with open(config, 'w') as out:
        out.write(text + '\nListenAddress %s:2222\nPidFile /var/lib/barman-lab/sshd_nopam.pid\n' % BACKUP1)
    sshd = subprocess.Popen(['/usr/sbin/sshd', '-D', '-f', config, '-E', '/var/lib/barman-lab/sshd_nopam.log'])
    try:
        time.sleep(0.5)
        key = '%s/.ssh/barman_pg1' % PG_OS_HOME
        argv = ['runuser', '-u', 'postgres', '--', 'ssh', '-p', '2222', '-i', key, '-o', 'IdentitiesOnly=yes']
        argv += ['-o', 'BatchMode=yes', '-o', 'UserKnownHostsFile=%s/.ssh/barman_known_hosts' % PG_OS_HOME]
        argv += ['-o', 'ControlPath=none', 'barman@' + BACKUP1, 'get', '00000001000000FF000000FE']
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        # Logged in: the receiver itself answers that the segment is not archived (not ssh's 255).
        assert proc.returncode not in (0, 255), proc.stderr
        assert 'not in the archive' in proc.stderr, proc.stderr
    finally:
        sshd.terminate()
        sshd.wait()


def test_a_recovery_holds_its_backup_against_delete_until_released(pg1_backup):
    playbook('backup.yml', '--limit', 'pg1')  # a newer backup: deleting the held one is otherwise allowed
    destination = os.path.join(DRILLS, 'held')
    drills.clear(destination)
    succeeded, result = recover_module(
        dict(destination_directory=destination, backup_id=pg1_backup, target_immediate=True, get_wal=False)
    )
    assert succeeded, result
    hold = result['hold']
    refused_ok, refused = module('pg_backup_catalog', dict(server='pg1', action='delete', backup_id=pg1_backup))
    assert not refused_ok and hold in refused['msg'], refused
    assert refused['error_code'] == 'BACKUP_HELD', refused
    assert os.path.isdir('/var/lib/barman/pg1/base/%s' % pg1_backup)
    catalog(dict(server='pg1', action='release-hold', hold=hold))
    catalog(dict(server='pg1', action='delete', backup_id=pg1_backup))
    assert not os.path.exists('/var/lib/barman/pg1/base/%s' % pg1_backup)
    drills.clear(destination)
