"""Retention that can be trusted: check mode names exactly what the real run removes, and a running
recovery's hold keeps its backup and WAL from retention and delete until it is released."""

import json
import os
import signal
import subprocess
import time

from labhosts import BARMAN_HOME, ROOT, catalog, module, playbook, psql, run, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import wal, wal_store

SIZE = wal.DEFAULT_SEGMENT_SIZE
COLLECTIONS = os.path.join(ROOT, 'build', 'collections')


def backups(server='pg1'):
    return catalog(dict(server=server))['servers'][0]['backups']


def back_up(server='pg1'):
    """A backup without retention, in a segment of its own; returns its id."""
    psql(server, 'CREATE TABLE IF NOT EXISTS trust_retention (n int); INSERT INTO trust_retention VALUES (1)')
    switch_wal(server)
    playbook('backup.yml', '--limit', server, '-e', 'barman_retention_policy=')
    return [b['backup_id'] for b in backups(server) if b['status'] == 'DONE'][-1]


def on_disk(server='pg1'):
    """Backup ids (meta and base) and every archived WAL name, wherever it is (wals/ or incoming/)."""
    root = os.path.join(BARMAN_HOME, server)
    infos = sorted(e[: -len('-backup.info')] for e in os.listdir(os.path.join(root, 'meta')) if e.endswith('.info'))
    bases = sorted(e for e in os.listdir(os.path.join(root, 'base')) if not e.startswith('.'))
    return infos, bases, set(wal_store.WalArchive(BARMAN_HOME, server).archived_names())


def incoming(server='pg1'):
    return sorted(wal_store.WalArchive(BARMAN_HOME, server).incoming_backlog())


class ProcessingHeld:
    """The archive's background compression kept busy, as the barman user: what is delivered meanwhile
    stays in incoming/, as it does while another compression of the server runs."""

    def __init__(self, server='pg1'):
        self.path = os.path.join(BARMAN_HOME, '.%s-archive-process.lock' % server)
        self.proc = None

    def __enter__(self):
        self.proc = subprocess.Popen(
            ['runuser', '-u', 'barman', '--', 'flock', self.path, 'sleep', '600'], start_new_session=True
        )
        deadline = time.time() + 30
        while run(['runuser', '-u', 'barman', '--', 'flock', '-n', self.path, 'true'], check=False).returncode == 0:
            assert time.time() < deadline and self.proc.poll() is None, 'could not hold ' + self.path
            time.sleep(0.2)
        return self

    def release(self):
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(30)

    def __exit__(self, *exc):
        self.release()


def as_barman_python(code):
    """Python as the barman user on the backup server, with the collection's module_utils importable."""
    proc = run(['runuser', '-u', 'barman', '--', 'env', 'PYTHONPATH=' + COLLECTIONS, '/usr/bin/python3', '-c', code])
    return proc.stdout.strip()


def take_hold(backup, destination, ttl_seconds=3600):
    """recovery_hold.take() as pg_recover calls it; returns the token."""
    code = (
        'from ansible_collections.barman.postgresql.plugins.module_utils import catalog, recovery_hold\n'
        'layout = catalog.ServerLayout(%r, "pg1")\n'
        'print(recovery_hold.take(layout, %r, %r, %r, %d))\n'
    ) % (BARMAN_HOME, backup['backup_id'], backup['begin_wal'], destination, ttl_seconds)
    return as_barman_python(code)


def test_check_mode_names_exactly_what_the_real_run_then_removes(configured):
    first = back_up()
    for _count in range(3):
        switch_wal('pg1')
    # WAL delivered while the compression is busy waits in incoming/, as seen after the demo, where it
    # was compressed and indexed between the check run and the real one.
    with ProcessingHeld() as held:
        second = back_up()
        for _count in range(3):
            switch_wal('pg1')
        third = back_up()
        waiting = incoming()
        assert waiting, 'nothing waited in incoming/: the drill did not arrange what it tests'
        policy = dict(server='pg1', action='retention', retention_policy='REDUNDANCY 1', minimum_redundancy=1)
        before = on_disk()
        dry = catalog(policy, '--check')
        assert on_disk()[:2] == before[:2] and before[2] <= on_disk()[2], 'check mode changed the catalog'
        held.release()
    ok, processed = module('pg_wal_archive', dict(server='pg1', action='process'))
    assert ok, processed
    assert not set(waiting) & set(incoming()), 'the compression did not run between the two runs'

    before = on_disk()
    done = catalog(policy)
    after = on_disk()
    assert first in dry['removed_backups'] and second in dry['removed_backups'] and third not in dry['removed_backups']
    assert done['removed_backups'] == dry['removed_backups'], (dry['removed_backups'], done['removed_backups'])
    assert done['removed_wals'] == dry['removed_wals'], (dry['removed_wals'], done['removed_wals'])
    assert done['removed_wal_names'] == dry['removed_wal_names']
    assert sorted(before[2] - after[2]) == sorted(dry['removed_wal_names']), 'the files gone are not the plan'
    assert sorted(set(before[0]) - set(after[0])) == sorted(set(before[1]) - set(after[1])) == dry['removed_backups']
    assert set(waiting) & set(dry['removed_wal_names']), 'no WAL from incoming/ was planned: nothing was tested'
    # Everything from the remaining backup on is still there.
    begin = [b for b in backups() if b['backup_id'] == third][0]['begin_wal']
    newest = max(n for n in after[2] if wal.is_segment_name(n))
    assert not set(wal.segments_between(begin, newest, SIZE)) - after[2]


def segno(name):
    return wal.segment_number(name[:24], SIZE)


def test_a_recovery_hold_keeps_the_backup_and_its_wal_until_released(configured):
    taken = [back_up() for _count in range(3)]
    done = [b for b in backups() if b['status'] == 'DONE']
    oldest, newest = done[0], done[-1]
    assert newest['backup_id'] == taken[-1]
    token = take_hold(oldest, 'pg1:/srv/barman-lab/pg1/drills/held')
    hold_file = os.path.join(BARMAN_HOME, 'pg1', 'recovery-holds', token + '.json')
    assert json.load(open(hold_file))['backup_id'] == oldest['backup_id']
    shown = catalog(dict(server='pg1'))['servers'][0]
    assert [h['token'] for h in shown['holds']] == [token] and not shown['holds'][0]['stale']
    assert [b['holds'] for b in shown['backups'] if b['backup_id'] == oldest['backup_id']] == [[token]]

    # REDUNDANCY 1: the held backup stays (HELD) with every WAL from its begin on; the others go.
    policy = dict(server='pg1', action='retention', retention_policy='REDUNDANCY 1', minimum_redundancy=1)
    before = on_disk()
    dry = catalog(policy, '--check')
    result = catalog(policy)
    after = on_disk()
    assert (
        result['removed_backups'] == dry['removed_backups'] and result['removed_wal_names'] == dry['removed_wal_names']
    )
    assert set(taken[:2]) - {oldest['backup_id']} <= set(result['removed_backups']), result['removed_backups']
    assert result['retention_status'][oldest['backup_id']] == 'HELD', result['retention_status']
    assert [h['token'] for h in result['holds']] == [token]
    assert oldest['backup_id'] in after[0] and oldest['backup_id'] in after[1] and newest['backup_id'] in after[0]
    needed = set(n for n in before[2] if wal.is_segment_name(n) and segno(n) >= segno(oldest['begin_wal']))
    assert needed and not needed - after[2], 'WAL the held recovery fetches was removed: %s' % sorted(needed - after[2])

    # delete refuses it, saying what holds it, since when and how to release it; nothing changes.
    ok, refused = module('pg_backup_catalog', dict(server='pg1', action='delete', backup_id=oldest['backup_id']))
    assert not ok, refused
    for part in ('held by a recovery to pg1:/srv/barman-lab/pg1/drills/held', 'since ', token, 'release-hold'):
        assert part in refused['msg'], refused['msg']
    assert on_disk()[:2] == after[:2]

    # Released (check mode first changes nothing), the next retention removes it and the WAL only it needed.
    release = dict(server='pg1', action='release-hold', hold=token)
    assert catalog(release, '--check')['changed'] and os.path.exists(hold_file)
    assert catalog(release)['changed'] and not os.path.exists(hold_file)
    assert not catalog(release)['changed']
    before = on_disk()
    gone = catalog(policy)
    after = on_disk()
    assert oldest['backup_id'] in gone['removed_backups'] and after[0] == after[1] == [newest['backup_id']]
    assert sorted(before[2] - after[2]) == sorted(gone['removed_wal_names'])
    assert oldest['begin_wal'] in gone['removed_wal_names']
