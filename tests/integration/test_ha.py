"""HA estates (issue 17) on the lab's pair: ha1 (primary) and ha2 (its streaming standby), one server 'ha', one
catalog. Backups from the standby under load restore to exactly the committed rows; a stopped standby makes
prefer-standby fall back to the primary (saying why) and standby refuse; refusals before any copy (members of two
clusters, hot_standby off, a lag above the limit); a failover needs no inventory change, and PITR to a time before
it and to one after it gives exactly the committed rows; a standby rebuilt from a backup streams and equals its
primary. The test leaves the pair failed over (ha2 primary, ha1 its standby), which the suite copes with."""

import json
import os
import shutil
import subprocess
import time

import pytest
from drills import recover
from labhosts import (
    BARMAN_HOME,
    CLUSTERS,
    as_postgres,
    catalog,
    module,
    pg_program,
    pgbench,
    playbook,
    primary,
    psql,
    switch_wal,
)

SERVER = 'ha'
MEMBERS = 'ha1,ha2'
NO_RETENTION = ('-e', 'barman_retention_policy=')


def data_dir(host):
    return '/srv/barman-lab/%s/data' % host


def pg_ctl(host, *args, check=True):
    return as_postgres(pg_program(host, 'pg_ctl'), '-D', data_dir(host), *args, check=check)


def newest():
    return catalog(dict(server=SERVER))['servers'][0]['backups'][-1]


def shown(backup_id):
    return catalog(dict(action='show', server=SERVER, backup_id=backup_id))['backup']


def backup(backup_from, check=True):
    """backup.yml over the pair (the inventory unchanged); the run's output."""
    return playbook(
        'backup.yml', '--limit', MEMBERS, '-e', 'barman_backup_from=%s' % backup_from, *NO_RETENTION, check=check
    )


def marks(host):
    return psql(host, 'SELECT count(*) FROM ha_marks')


def mark(host, what):
    psql(host, "INSERT INTO ha_marks (what) VALUES ('%s')" % what)


def wait_replayed(standby, primary_host):
    """Until the standby has replayed everything the primary wrote (it streams)."""
    target = psql(primary_host, 'SELECT pg_current_wal_lsn()')
    for _attempt in range(200):
        if psql(standby, "SELECT pg_last_wal_replay_lsn() >= '%s'::pg_lsn" % target) == 't':
            return
        time.sleep(0.1)
    raise AssertionError('%s did not replay up to %s' % (standby, target))


def module_params(**given):
    members = [dict(name=h, pg_host=CLUSTERS[h]['host'], pg_port=CLUSTERS[h]['port']) for h in ('ha1', 'ha2')]
    params = dict(server=SERVER, barman_home=BARMAN_HOME, pg_host=CLUSTERS['ha1']['host'], members=members)
    params.update(given)
    return params


@pytest.fixture(scope='module')
def pair(configured):
    assert primary(SERVER) == 'ha1', 'the pair must start as the lab makes it'
    psql('ha1', 'DROP TABLE IF EXISTS ha_marks; CREATE TABLE ha_marks (id serial PRIMARY KEY, what text)')
    as_postgres(*pgbench('ha1', '-i', '-s', '3', '-q', 'postgres')[4:])
    wait_replayed('ha2', 'ha1')
    return SERVER


def test_a_backup_from_the_standby_under_load_restores_the_committed_rows(pair):
    load = subprocess.Popen(pgbench('ha1', '-T', '30', '-c', '2', 'postgres'), stdout=subprocess.DEVNULL)
    try:
        time.sleep(1)
        out = backup('standby').stdout
        taken = newest()
        mark('ha1', 'after the backup')
    finally:
        load.terminate()
        load.wait()
    assert taken['status'] == 'DONE' and 'from the standby ha2' in out, out[-3000:]
    stats = shown(taken['backup_id'])['copy_stats']
    assert (stats['source_host'], stats['source_role']) == ('ha2', 'standby'), stats
    expected = marks('ha1')
    target = psql('ha1', 'SELECT now()')
    time.sleep(0.2)
    mark('ha1', 'after the target')
    switch_wal('ha1')
    rows, summary = recover(
        'ha-from-standby',
        'SELECT count(*) FROM ha_marks',
        server='ha1',
        port=6445,
        target_time=target,
        backup_id=taken['backup_id'],
    )
    assert rows == [expected], summary


def test_a_stopped_standby_falls_back_to_the_primary_or_is_refused(pair):
    pg_ctl('ha2', '-m', 'fast', '-w', 'stop')
    try:
        before = newest()['backup_id']
        out = backup('prefer-standby').stdout
        taken = newest()
        assert taken['backup_id'] != before and taken['status'] == 'DONE'
        assert shown(taken['backup_id'])['copy_stats']['source_role'] == 'primary'
        assert 'no standby is healthy (ha2: ' in out, out[-3000:]
        refused = backup('standby', check=False)
        assert refused.returncode != 0 and 'NO_HEALTHY_STANDBY' in refused.stdout, refused.stdout[-3000:]
        assert newest()['backup_id'] == taken['backup_id']
    finally:
        pg_ctl('ha2', '-l', '/srv/barman-lab/ha2/postgresql.log', '-w', 'start')


def test_refusals_before_any_copy(pair):
    before = newest()['backup_id']
    # Two clusters under one server name.
    pg1 = dict(name='pg1', pg_host=CLUSTERS['pg1']['host'], pg_port=CLUSTERS['pg1']['port'])
    ok, result = module('pg_basebackup_rsync', module_params(members=module_params()['members'] + [pg1]))
    assert not ok and result['error_code'] == 'IDENTITY_MISMATCH' and 'pg1 has system identifier' in result['msg']
    # A standby that replays behind the limit.
    psql('ha2', 'SELECT pg_wal_replay_pause()')
    try:
        psql('ha1', 'CREATE TABLE IF NOT EXISTS ha_lag AS SELECT g FROM generate_series(1, 100000) g')
        psql('ha1', 'DROP TABLE ha_lag')
        ok, result = module('pg_basebackup_rsync', module_params(backup_from='standby', standby_max_lag=0))
        assert not ok and result['error_code'] == 'NO_HEALTHY_STANDBY', result
        assert 'ha2: replays' in result['msg'] and 'standby_max_lag (0 MiB)' in result['msg']
    finally:
        psql('ha2', 'SELECT pg_wal_replay_resume()')
    # hot_standby off: nothing connects to the standby.
    psql('ha2', 'ALTER SYSTEM SET hot_standby = off')
    pg_ctl('ha2', '-m', 'fast', '-w', 'restart', '-l', '/srv/barman-lab/ha2/postgresql.log')
    try:
        ok, result = module('pg_basebackup_rsync', module_params(backup_from='standby'))
        assert not ok and result['error_code'] == 'NO_HEALTHY_STANDBY', result
        assert 'hot_standby is off' in result['msg'], result['msg']
    finally:
        as_postgres('sed', '-i', '/^hot_standby = /d', os.path.join(data_dir('ha2'), 'postgresql.auto.conf'))
        pg_ctl('ha2', '-m', 'fast', '-w', 'restart', '-l', '/srv/barman-lab/ha2/postgresql.log')
    assert newest()['backup_id'] == before


def test_a_failover_needs_no_inventory_change_and_pitr_works_on_both_sides(pair):
    mark('ha1', 'before the failover')
    before_failover = (marks('ha1'), psql('ha1', 'SELECT now()'))
    time.sleep(0.2)
    mark('ha1', 'just before the failover')
    switch_wal('ha1')
    wait_replayed('ha2', 'ha1')
    pg_ctl('ha1', '-m', 'fast', '-w', 'stop')
    psql('ha2', 'SELECT pg_promote()')
    assert primary(SERVER) == 'ha2'
    mark('ha2', 'after the failover')
    after_failover = (marks('ha2'), psql('ha2', 'SELECT now()'))
    time.sleep(0.2)
    mark('ha2', 'after the second target')
    switch_wal('ha2')

    out = backup('prefer-standby').stdout
    taken = newest()
    assert taken['status'] == 'DONE' and shown(taken['backup_id'])['copy_stats']['source_host'] == 'ha2', out[-3000:]
    assert taken['timeline'] == 2, taken
    check = catalog(dict(action='check', server=SERVER))['servers'][0]
    assert not check['window']['gaps'], check['window']

    rows, summary = recover(
        'ha-before', 'SELECT count(*) FROM ha_marks', server='ha2', port=6446, target_time=before_failover[1]
    )
    assert rows == [before_failover[0]], summary
    rows, summary = recover(
        'ha-after', 'SELECT count(*) FROM ha_marks', server='ha2', port=6446, target_time=after_failover[1]
    )
    assert rows == [after_failover[0]], summary


def test_a_standby_rebuilt_from_a_backup_streams_and_equals_its_primary(pair):
    """ha1, the old primary, rebuilt from the catalog (not from ha2) as a standby of ha2 in its own directory."""
    assert primary(SERVER) == 'ha2'
    if os.path.exists(os.path.join(data_dir('ha1'), 'postmaster.pid')):
        pg_ctl('ha1', '-m', 'fast', '-w', 'stop', check=False)
    aside = data_dir('ha1') + '.failed-over'
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(data_dir('ha1'), aside)  # never removed by us during a recovery: moved aside
    variables = dict(
        server='ha1',
        standby=True,
        recover_dir=data_dir('ha1'),
        recover_port=CLUSTERS['ha1']['port'],
        recover_wait_seconds=300,
    )
    proc = playbook('recover.yml', '-e', json.dumps(variables))
    assert 'a standby of ha2, streaming' in proc.stdout, proc.stdout[-3000:]
    assert psql('ha1', 'SELECT pg_is_in_recovery()') == 't'
    assert psql('ha1', 'SELECT status FROM pg_stat_wal_receiver') == 'streaming'
    mark('ha2', 'after the rebuild')
    wait_replayed('ha1', 'ha2')
    digest = "SELECT md5(string_agg(id || what, ',' ORDER BY id)) || count(*) FROM ha_marks"
    assert psql('ha1', digest) == psql('ha2', digest)
    bench = 'SELECT sum(abalance)::text || count(*) FROM pgbench_accounts'
    assert psql('ha1', bench) == psql('ha2', bench)
    shutil.rmtree(aside, ignore_errors=True)
