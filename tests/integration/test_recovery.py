"""Recovery drills on the lab, through recover.yml as a DBA runs it at 3 a.m.: every target kind gives
back exactly the rows committed up to the target, on the original host, another host, or in place."""

import datetime
import json
import os
import re
import shutil
import time

import pytest
import drills
from drills import DRILLS
from labhosts import BARMAN_HOME, CLUSTERS, playbook, psql, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import wal_store


@pytest.fixture(scope='module')
def pg1_with_backup(configured):
    psql('pg1', 'DROP TABLE IF EXISTS events; CREATE TABLE events (id int PRIMARY KEY, note text)')
    commit_rows('pg1', 'before-backup', 3)
    playbook('backup.yml', '--limit', 'pg1')
    yield
    for entry in os.listdir(DRILLS) if os.path.isdir(DRILLS) else []:
        drills.stop_cluster(os.path.join(DRILLS, entry))


class Row:
    def __init__(self, **fields):
        self.__dict__.update(fields)


def commit_rows(server, note, count):
    """Insert rows one transaction each, recording around each commit its time, xid and LSN."""
    rows = []
    for _count in range(count):
        before = datetime.datetime.fromisoformat(psql(server, 'SELECT clock_timestamp()') + ':00')
        time.sleep(0.3)
        out = psql(
            server,
            "INSERT INTO events SELECT coalesce(max(id), 0) + 1, '%s' FROM events "
            'RETURNING id, pg_current_xact_id()' % note,
        )
        row_id, xid = out.split('|')
        lsn = psql(server, 'SELECT pg_current_wal_insert_lsn()')
        after = datetime.datetime.fromisoformat(psql(server, 'SELECT clock_timestamp()') + ':00')
        rows.append(Row(id=int(row_id), xid=xid, lsn=lsn, before=before, after=after))
        time.sleep(0.3)
    return rows


def between(row, next_row):
    """A time after row's commit and before next_row's."""
    return row.after + (next_row.before - row.after) / 2


def recover(drill, port=6441, check=True, **extra):
    """recover.yml for pg1 into DRILLS/drill on port; the recovered ids, the summary line."""
    ids, summary = drills.recover(drill, 'SELECT id FROM events ORDER BY id', port=port, check=check, **extra)
    return (None if ids is None else [int(i) for i in ids]), summary


def ids_up_to(rows, last):
    return [r.id for r in rows if r.id <= last.id]


def test_a_dropped_table_comes_back_as_it_was_at_a_time_between_two_commits(pg1_with_backup):
    rows = commit_rows('pg1', 'drill-time', 4)
    psql('pg1', 'DROP TABLE events')
    psql('pg1', 'CREATE TABLE events (id int PRIMARY KEY, note text)')  # the application goes on
    switch_wal('pg1')
    target = between(rows[1], rows[2])
    holds = os.path.join(BARMAN_HOME, 'pg1', 'recovery-holds')
    held = set(os.listdir(holds)) if os.path.isdir(holds) else set()
    ids, summary = recover('time', target_time=target.isoformat(' '))
    expected = list(range(1, rows[1].id + 1))
    assert ids == expected, 'recovered %s, expected the rows up to %d (%s)' % (ids, rows[1].id, summary)
    # The copy fetched its WAL, and released its hold on the catalog itself as its recovery ended.
    assert set(os.listdir(holds)) == held, 'a hold was left: %s' % (set(os.listdir(holds)) - held)
    with open(os.path.join(drills.DRILLS, 'time') + '.log') as log:
        assert re.search(r'recovery ended; its hold \S+ on the catalog released', log.read())


@pytest.mark.parametrize('kind', ['xid', 'name', 'lsn', 'immediate'])
def test_each_target_kind_stops_exactly_there(pg1_with_backup, kind):
    before_backup = [int(i) for i in psql('pg1', "SELECT id FROM events WHERE note = 'before-backup'").split()]
    psql('pg1', 'CREATE TABLE IF NOT EXISTS events (id int PRIMARY KEY, note text)')
    rows = commit_rows('pg1', 'drill-' + kind, 2)
    if kind == 'name':
        psql('pg1', "SELECT pg_create_restore_point('drill-%d')" % rows[1].id)
    rows += commit_rows('pg1', 'drill-' + kind, 1)
    commit_rows('pg1', 'after-' + kind, 1)
    switch_wal('pg1')
    target = dict(
        xid=dict(target_xid=rows[1].xid),
        name=dict(target_name='drill-%d' % rows[1].id),
        lsn=dict(target_lsn=rows[1].lsn),
        immediate=dict(target_immediate=True),
    )[kind]
    ids, summary = recover(kind, **target)
    present = set(psql('pg1', 'SELECT id FROM events').split())
    if kind == 'immediate':
        assert set(before_backup) <= set(ids) and not set(ids) & set(r.id for r in rows), (ids, summary)
    else:
        assert rows[1].id in ids and rows[2].id not in ids, (kind, ids, summary)
        assert ids == sorted(int(i) for i in present if int(i) <= rows[1].id), (kind, ids)


def test_the_backup_that_fits_the_target_is_chosen(pg1_with_backup):
    psql('pg1', 'CREATE TABLE IF NOT EXISTS events (id int PRIMARY KEY, note text)')
    first = commit_rows('pg1', 'between-backups', 2)
    playbook('backup.yml', '--limit', 'pg1')
    newer_id = sorted(os.listdir(os.path.join(BARMAN_HOME, 'pg1', 'base')))[-1]
    later = commit_rows('pg1', 'after-both', 2)
    switch_wal('pg1')
    summary = recover('older', target_time=between(first[0], first[1]).isoformat(' '))[1]
    assert 'from backup %s' % newer_id not in summary, summary
    ids, summary = recover('newer', target_time=between(later[0], later[1]).isoformat(' '))
    assert 'from backup %s' % newer_id in summary, summary
    assert later[0].id in ids and later[1].id not in ids


def test_a_lost_server_is_recovered_on_another_host(pg1_with_backup):
    rows = commit_rows('pg1', 'lost-server', 2)
    switch_wal('pg1')
    ids, summary = recover(
        'on-pg2', port=6442, recover_host='pg2', target_time=between(rows[0], rows[1]).isoformat(' ')
    )
    assert 'on pg2' in summary, summary
    assert rows[0].id in ids and rows[1].id not in ids, ids


def test_without_a_directory_the_copy_goes_beside_the_original_pgdata(pg1_with_backup):
    """One pg_recover call chooses the directory (no planning call first): <PGDATA>.recovered-<UTC time>."""
    rows = commit_rows('pg1', 'beside', 2)
    switch_wal('pg1')
    variables = dict(server='pg1', recover_port=6448, target_time=between(rows[0], rows[1]).isoformat(' '))
    proc = playbook('recover.yml', '-e', json.dumps(variables))
    summary = [line for line in proc.stdout.splitlines() if 'recovered from backup' in line][0]
    copy = re.search(r' into (\S+) on pg1, port 6448', summary).group(1)
    try:
        assert re.fullmatch(r'/srv/barman-lab/pg1/data\.recovered-\d{8}T\d{6}', copy), summary
        ids = [int(i) for i in drills.query(6448, 'SELECT id FROM events ORDER BY id')]
        assert rows[0].id in ids and rows[1].id not in ids, ids
    finally:
        drills.clear(copy)


def test_bad_requests_are_refused_before_anything_is_copied(pg1_with_backup):
    pgdata = '/srv/barman-lab/pg1/data'
    before = sorted(os.listdir(pgdata))
    newest = sorted(n for n in wal_store.WalArchive(BARMAN_HOME, 'pg1').archived_names() if len(n) == 24)[-1]
    future = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)).isoformat(' ')
    cases = [
        (dict(target_time='yesterday at noon'), 'is not a time'),
        (dict(target_time='2026-11-26 10:00:00'), 'has no time zone'),
        (dict(target_time='2000-01-01 00:00:00+00'), 'before the end of the oldest backup'),
        (dict(target_time=future), 'past the newest archived WAL'),
        (dict(backup_id='20000101T000000'), 'there is no backup 20000101T000000'),
        (dict(recover_dir=pgdata), 'is not empty'),
        (dict(target_xid='1', target_name='x'), 'several recovery targets'),
    ]
    for variables, message in cases:
        drill = 'refused'
        ids, out = recover(drill, check=False, **variables)
        assert ids is None and message in out, (variables, out[-3000:])
        assert not os.path.exists(os.path.join(DRILLS, drill)), 'a refused recovery created its directory'
    # A gap in the archive between the backup and the newest WAL.
    layout_path = wal_store.WalArchive(BARMAN_HOME, 'pg1').locate(newest)
    switch_wal('pg1')
    psql('pg1', 'SELECT 1')
    hidden = layout_path + '.hidden-by-test'
    shutil.move(layout_path, hidden)
    try:
        ids, out = recover('refused', check=False)
        assert ids is None and 'WAL is missing from the archive' in out and newest in out, out[-3000:]
    finally:
        shutil.move(hidden, layout_path)
    assert sorted(os.listdir(pgdata)) == before
    assert psql('pg1', 'SELECT 1') == '1', 'the original server must still run'


def test_in_place_moves_the_old_pgdata_aside_and_recovering_twice_follows_the_new_timeline(configured):
    psql('pg2', 'DROP TABLE IF EXISTS events; CREATE TABLE events (id int PRIMARY KEY, note text)')
    playbook('backup.yml', '--limit', 'pg2')
    rows = commit_rows('pg2', 'in-place-1', 3)
    switch_wal('pg2')
    pgdata = psql('pg2', 'SHOW data_directory')
    timeline = int(psql('pg2', 'SELECT pg_walfile_name(pg_current_wal_lsn())')[:8], 16)
    first = playbook(
        'recover.yml',
        '-e',
        json.dumps(dict(server='pg2', recover_in_place=True, target_time=between(rows[0], rows[1]).isoformat(' '))),
    )
    assert 'port %d' % CLUSTERS['pg2']['port'] in first.stdout, first.stdout[-2000:]
    assert [int(i) for i in psql('pg2', 'SELECT id FROM events ORDER BY id').split()] == [rows[0].id]
    moved = [e for e in os.listdir(os.path.dirname(pgdata)) if e.startswith(os.path.basename(pgdata) + '.moved-')]
    assert moved and os.path.exists(os.path.join(os.path.dirname(pgdata), moved[0], 'PG_VERSION')), moved
    assert int(psql('pg2', 'SELECT pg_walfile_name(pg_current_wal_lsn())')[:8], 16) == timeline + 1

    # Again, from a backup of the new timeline, after more writes.
    playbook('backup.yml', '--limit', 'pg2')
    more = commit_rows('pg2', 'in-place-2', 2)
    switch_wal('pg2')
    playbook(
        'recover.yml',
        '-e',
        json.dumps(dict(server='pg2', recover_in_place=True, target_time=between(more[0], more[1]).isoformat(' '))),
    )
    assert [int(i) for i in psql('pg2', 'SELECT id FROM events ORDER BY id').split()] == [rows[0].id, more[0].id]
    assert int(psql('pg2', 'SELECT pg_walfile_name(pg_current_wal_lsn())')[:8], 16) == timeline + 2
    for new_timeline in (timeline + 1, timeline + 2):
        assert wal_store.WalArchive(BARMAN_HOME, 'pg2').locate('%08X.history' % new_timeline)
