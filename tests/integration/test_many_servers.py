"""An estate with two backup servers in one inventory: one backup.yml run backs up both PostgreSQL
servers at the same time, status.yml shows both, and recovering one touches nothing of the other."""

import datetime
import json
import os
import re
import shutil
import time

import pytest
import yaml
from labhosts import ROOT, psql, run, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, wal_store

INVENTORY = os.path.join(ROOT, 'tests', 'integration', 'two-backup-servers.yml')
HOMES = {'pg1': '/var/lib/barman', 'pg2': '/var/lib/barman2'}


def playbook(name, *args, check=True):
    return run(['ansible-playbook', '-i', INVENTORY, os.path.join('playbooks', name)] + list(args), check=check)


def infos(server):
    return infofile.backup_infos(catalog.ServerLayout(HOMES[server], server))


def footprint(server):
    """Everything of a server that a recovery of another one must leave alone."""
    layout = catalog.ServerLayout(HOMES[server], server)
    wals = sorted(entry for _dir, _dirs, files in os.walk(layout.wals_dir) for entry in files)
    data_directory = psql(server, 'SHOW data_directory')
    return dict(
        backups=sorted(os.listdir(layout.base_dir)),
        meta=sorted(os.listdir(layout.meta_dir)),
        wals=wals,
        pgdata=sorted(os.listdir(data_directory)),
        started=psql(server, 'SELECT pg_postmaster_start_time()'),
        timeline=psql(server, 'SELECT timeline_id FROM pg_control_checkpoint()'),
        rows=psql(server, 'SELECT count(*) FROM estate'),
    )


@pytest.fixture
def two_backup_servers(configured):
    # pg2's archive on backup2 from an earlier run of this test has a hole (pg2 archived to backup1 since), which
    # setup.yml's proof would rightly refuse: backup2 starts afresh.
    shutil.rmtree(os.path.join(HOMES['pg2'], 'pg2'), ignore_errors=True)
    yield
    # Back to the lab's usual estate (one backup server for both) for the tests that follow. pg2's
    # WAL went to backup2 meanwhile (and a new timeline, after the in-place recovery): its old archive
    # on backup1 has a hole that setup.yml's proof would rightly refuse, so it starts afresh.
    shutil.rmtree(os.path.join(HOMES['pg1'], 'pg2'), ignore_errors=True)
    run(['ansible-playbook', os.path.join('playbooks', 'setup.yml')])


def test_two_backup_servers_back_up_in_parallel_and_recover_apart(two_backup_servers):
    setup = playbook('setup.yml')
    assert 'backup2' in setup.stdout
    for server in ('pg1', 'pg2'):
        psql(server, 'DROP TABLE IF EXISTS estate; CREATE TABLE estate AS SELECT g FROM generate_series(1, 50) g')

    # One run, both servers; a bandwidth limit makes each copy last a few seconds, long enough to see overlap.
    # One backup at a time per backup server: each has its own quota, so pg1's and pg2's still overlap.
    backup = playbook(
        'backup.yml',
        '-e',
        json.dumps(dict(barman_backup_bandwidth_limit=8000, barman_retention_policy='', barman_backup_concurrency=1)),
    )
    newest = dict((server, infos(server)[max(infos(server))]) for server in ('pg1', 'pg2'))
    for server, info in newest.items():
        assert info['status'] == 'DONE', (server, backup.stdout[-2000:])
        assert os.path.isdir(os.path.join(HOMES[server], server, 'base', max(infos(server)), 'data'))
    assert not os.path.exists(os.path.join(HOMES['pg2'], 'pg1')), 'pg1 must not be kept on backup2'
    first, second = newest['pg1'], newest['pg2']
    assert first['begin_time'] < second['end_time'] and second['begin_time'] < first['end_time'], (
        'the two backups did not overlap: %s..%s and %s..%s'
        % (first['begin_time'], first['end_time'], second['begin_time'], second['end_time'])
    )

    status = playbook('status.yml', '-e', 'status_report=/tmp/barman-status-estate.html')
    for server in ('pg1', 'pg2'):  # each head: name, PostgreSQL version, health
        assert re.search(r'%s  PostgreSQL 15\.[0-9]+  OK' % server, status.stdout), status.stdout[-3000:]
    with open('/tmp/barman-status-estate.html') as report:
        html = report.read()
    assert 'pg1' in html and 'pg2' in html

    # pg2 in place, from backup2: pg1, its catalog on backup1 and its WAL are untouched.
    psql('pg2', 'INSERT INTO estate SELECT generate_series(51, 60)')
    switch_wal('pg2')
    psql('pg1', 'INSERT INTO estate SELECT generate_series(51, 55)')
    switched = switch_wal('pg1')
    pg1_archive = wal_store.WalArchive(HOMES['pg1'], 'pg1')
    deadline = time.time() + 60
    while not pg1_archive.locate(switched) or pg1_archive.incoming_backlog():
        assert time.time() < deadline, '%s did not reach the archive of pg1' % switched
        time.sleep(0.2)
    before = footprint('pg1')
    started = datetime.datetime.now(datetime.timezone.utc)
    recovered = playbook(
        'recover.yml',
        '-e',
        json.dumps(dict(server='pg2', recover_in_place=True, recover_in_place_confirm='pg2@127.0.0.12')),
    )
    assert 'pg2 recovered from backup' in recovered.stdout, recovered.stdout[-3000:]
    assert psql('pg2', 'SELECT count(*) FROM estate') == '60'
    assert footprint('pg1') == before
    # No backup of pg1 from then on (a FAILED one of another run may have no end time: its begin tells).
    assert all((info['end_time'] or info['begin_time']) < started for info in infos('pg1').values()
               if info['end_time'] or info['begin_time'])  # fmt: skip


def test_backup_concurrency_of_one_backup_server_is_honoured(configured, tmp_path):
    """barman_backup_concurrency 1 on backup1 (its inventory variable): pg1's and pg2's backups, started by one
    run at the same time, run one after the other."""
    with open(os.path.join(ROOT, 'inventory', 'lab.yml')) as handle:
        inventory = yaml.safe_load(handle)
    inventory['all']['children']['backup_servers']['hosts']['backup1']['barman_backup_concurrency'] = 1
    path = tmp_path / 'one-at-a-time.yml'
    path.write_text(yaml.safe_dump(inventory))

    def lab_infos(server):  # in the lab inventory backup1 keeps both
        return infofile.backup_infos(catalog.ServerLayout(HOMES['pg1'], server))

    before = dict((server, set(lab_infos(server))) for server in ('pg1', 'pg2'))
    logs = dict((server, os.path.join(HOMES['pg1'], server, 'backup.log')) for server in ('pg1', 'pg2'))
    logged = dict((server, os.path.getsize(log) if os.path.exists(log) else 0) for server, log in logs.items())
    # Long enough copies that, unthrottled, they would overlap (as in the test above).
    backup = run(
        ['ansible-playbook', '-i', str(path), os.path.join('playbooks', 'backup.yml'), '-e',
         json.dumps(dict(barman_backup_bandwidth_limit=8000, barman_retention_policy=''))]
    )  # fmt: skip
    taken = {}
    for server in ('pg1', 'pg2'):
        new = set(lab_infos(server)) - before[server]
        assert len(new) == 1, (server, backup.stdout[-2000:])
        taken[server] = lab_infos(server)[new.pop()]
        assert taken[server]['status'] == 'DONE', (server, backup.stdout[-2000:])
    first, second = sorted(taken.values(), key=lambda info: info['begin_time'])
    assert first['end_time'] <= second['begin_time'], (
        'with barman_backup_concurrency 1 the backups overlapped: %s..%s and %s..%s'
        % (first['begin_time'], first['end_time'], second['begin_time'], second['end_time'])
    )
    # The one that came second said in its progress log why it waited.
    with open(logs[second['server_name']]) as handle:
        handle.seek(logged[second['server_name']])
        assert re.search(r'waiting for one of .*\b1 backup slots', handle.read())
