"""The catalog on the lab: retention never costs recoverability, check sees what is broken, bad input
is refused with nothing changed, and Barman 3.19 reads our catalog as we read its."""

import os
import shutil
import tempfile
import time

import drills
import pytest
from labhosts import BARMAN_HOME, CLUSTERS, barman, catalog, module, playbook, psql, run, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import wal, wal_store


def backups(server):
    return catalog(dict(server=server))['servers'][0]['backups']


def newest_id(server):
    return [b['backup_id'] for b in backups(server) if b['status'] == 'DONE'][-1]


def tree(server):
    """What a change would touch: backups and keep annotations, and the archived WAL."""
    root = os.path.join(BARMAN_HOME, server)
    return (
        sorted(os.listdir(os.path.join(root, 'meta'))),
        sorted(os.listdir(os.path.join(root, 'base'))),
        sorted(wal_store.WalArchive(BARMAN_HOME, server).archived_names()),
    )


def recovered_stages(drill, backup_id, **target):
    out, summary = drills.recover(
        drill,
        "SELECT stage || ':' || count(*) FROM stages GROUP BY stage ORDER BY stage",
        backup_id=backup_id,
        **target,
    )
    assert out is not None, summary[-3000:]
    assert 'from backup %s' % backup_id in summary, summary
    return dict((int(s), int(c)) for s, c in (r.split(':') for r in out))


def upto(last):
    return dict((stage, 100) for stage in range(1, last + 1))


@pytest.fixture(scope='module')
def stages(configured):
    """Four backups of pg1 (no retention yet), 100 rows of stage n committed before backup n, and a
    fifth stage after the last one, archived."""
    psql('pg1', 'DROP TABLE IF EXISTS stages; CREATE TABLE stages (stage int, n int)')
    ids = []
    for stage in range(1, 5):
        psql('pg1', 'INSERT INTO stages SELECT %d, g FROM generate_series(1, 100) g' % stage)
        switch_wal('pg1')  # each backup starts in a segment of its own
        playbook('backup.yml', '--limit', 'pg1', '-e', 'barman_retention_policy=')
        ids.append(newest_id('pg1'))
    psql('pg1', 'INSERT INTO stages SELECT 5, g FROM generate_series(1, 100) g')
    switch_wal('pg1')
    yield ids
    for entry in os.listdir(drills.DRILLS) if os.path.isdir(drills.DRILLS) else []:
        drills.stop_cluster(os.path.join(drills.DRILLS, entry))


def test_retention_keeps_every_remaining_backup_recoverable(stages):
    first, second, third, fourth = stages
    info = dict((b['backup_id'], b) for b in backups('pg1'))
    everything = sorted(info)

    # keep: check mode changes nothing, then the annotation is Barman's file.
    assert catalog(dict(server='pg1', action='keep', backup_id=first, target='standalone'), '--check')['changed']
    assert not os.path.exists(os.path.join(BARMAN_HOME, 'pg1', 'meta', first + '-keep'))
    assert catalog(dict(server='pg1', action='keep', backup_id=first, target='standalone'))['changed']
    assert not catalog(dict(server='pg1', action='keep', backup_id=first, target='standalone'))['changed']

    # REDUNDANCY 2: the two newest stay, the kept one stays, everything else goes (with its WAL).
    policy = dict(server='pg1', action='retention', retention_policy='REDUNDANCY 2', minimum_redundancy=1)
    before = tree('pg1')
    dry = catalog(policy, '--check', '--diff')
    assert tree('pg1') == before, 'check mode changed the catalog'
    expected = sorted(set(everything) - {first, third, fourth})
    assert dry['changed'] and dry['removed_backups'] == expected, dry
    done = catalog(policy)
    assert done['removed_backups'] == expected and done['removed_wals'] == dry['removed_wals'], (dry, done)
    assert done['removed_wal_names'] == dry['removed_wal_names'], 'check mode did not name what the real run removed'
    listed = backups('pg1')
    assert [b['backup_id'] for b in listed] == [first, third, fourth]
    assert listed[0]['keep'] == 'standalone'

    # Only WAL no remaining backup needs is gone: the standalone range and everything from the third on stay.
    names = wal_store.WalArchive(BARMAN_HOME, 'pg1').archived_names()
    segments = set(n for n in names if wal.is_segment_name(n))
    size = wal.DEFAULT_SEGMENT_SIZE
    for needed in wal.segments_between(info[first]['begin_wal'], info[first]['end_wal'], size):
        assert needed in segments, needed
    newest = max(segments)
    for needed in wal.segments_between(info[third]['begin_wal'], newest, size):
        assert needed in segments, needed
    gone = wal.segments_between(wal.wal_segment_after(info[first]['end_wal'], size), info[second]['end_wal'], size)
    assert gone and not set(gone) & segments, 'WAL only the deleted backups needed is still there'

    # Every remaining backup recovers to its end, and the full ones to the newest WAL.
    assert recovered_stages('standalone', first, target_immediate=True) == upto(1)
    assert recovered_stages('third-end', third, target_immediate=True) == upto(3)
    assert recovered_stages('third-all', third) == upto(5)
    assert recovered_stages('fourth-end', fourth, target_immediate=True) == upto(4)

    # minimum_redundancy above the policy, a recovery window covering all: nothing goes.
    kept = catalog(dict(policy, retention_policy='REDUNDANCY 1', minimum_redundancy=2))
    assert not kept['changed'] and kept['removed_backups'] == []
    window = catalog(dict(policy, retention_policy='RECOVERY WINDOW OF 1 DAYS'))
    assert not window['changed'] and window['retention_status'][third] == 'VALID'

    # delete refuses a kept backup and going below minimum_redundancy.
    ok, result = module('pg_backup_catalog', dict(server='pg1', action='delete', backup_id=first))
    assert not ok and 'is kept' in result['msg'], result
    ok, result = module('pg_backup_catalog', dict(server='pg1', action='delete', backup_id=third, minimum_redundancy=3))
    assert not ok and 'below the minimum of 3' in result['msg'], result
    assert [b['backup_id'] for b in backups('pg1')] == [first, third, fourth]

    # Released, REDUNDANCY 1: only the newest stays, and it still recovers to the newest WAL.
    assert catalog(dict(server='pg1', action='release', backup_id=first))['changed']
    last = catalog(dict(policy, retention_policy='REDUNDANCY 1'))
    assert last['removed_backups'] == [first, third]
    assert [b['backup_id'] for b in backups('pg1')] == [fourth]
    assert recovered_stages('fourth-all', fourth) == upto(5)
    check = catalog(dict(server='pg1', action='check'))
    assert dict((c['name'], c['status']) for c in check['servers'][0]['checks'])['wal_archive'] == 'ok', check


def checks_of(result):
    return dict((c['name'], c) for c in result['servers'][0]['checks'])


def pg2_check(**params):
    cluster = CLUSTERS['pg2']
    # Disk thresholds off: this machine's free space is not what is tested here.
    options = dict(disk_warning_percent=0, disk_critical_percent=0)
    options.update(params)
    return catalog(dict(server='pg2', action='check', pg_host=cluster['host'], pg_port=cluster['port'], **options))


def wait_for(what, predicate, timeout=60):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, 'timed out waiting for ' + what
        time.sleep(0.5)


def test_check_turns_critical_for_broken_archiving_a_missing_wal_and_an_old_backup(configured):
    playbook('backup.yml', '--limit', 'pg2')
    ended = time.time()
    healthy = pg2_check()
    assert healthy['status'] == 'ok', healthy['nagios']

    # archive_command failing: PostgreSQL counts failures, check reads them from pg_stat_archiver.
    command = psql('pg2', 'SHOW archive_command')
    failed = int(psql('pg2', 'SELECT failed_count FROM pg_stat_archiver'))
    psql('pg2', "ALTER SYSTEM SET archive_command = 'false'")
    psql('pg2', 'SELECT pg_reload_conf()')
    try:
        switch_wal('pg2')
        wait_for('a failed archive', lambda: int(psql('pg2', 'SELECT failed_count FROM pg_stat_archiver')) > failed)
        broken = pg2_check()
        assert broken['status'] == 'critical', broken['nagios']
        assert 'archive_command is failing' in checks_of(broken)['archiver']['message']
        status = playbook(
            'status.yml', '--limit', 'pg2', '-e', 'status_report=/tmp/barman-status-test.html', check=False
        )
        assert status.returncode != 0 and 'BARMAN CRITICAL - pg2' in status.stdout, status.stdout[-3000:]
        assert 'CRITICAL' in open('/tmp/barman-status-test.html').read().upper()
    finally:
        psql('pg2', 'ALTER SYSTEM SET archive_command = $cmd$%s$cmd$' % command)
        psql('pg2', 'SELECT pg_reload_conf()')
    wait_for(
        'archiving to work again',
        lambda: psql('pg2', 'SELECT last_archived_time > last_failed_time FROM pg_stat_archiver') == 't',
    )
    assert checks_of(pg2_check())['archiver']['status'] == 'ok'

    # A WAL missing from the middle of the archive.
    closed = [switch_wal('pg2') for _count in range(3)]
    pg2 = wal_store.WalArchive(BARMAN_HOME, 'pg2')
    # In wals/, not still in incoming/: the receiver processes incoming/ on its own (a stream idle for 1 s).
    wait_for('the switched segments in wals/', lambda: all('/wals/' in (pg2.locate(n) or '') for n in closed))
    path = pg2.locate(closed[1])
    hidden = path + '.hidden-by-test'
    shutil.move(path, hidden)
    try:
        gap = pg2_check()
        assert gap['status'] == 'critical' and closed[1] in checks_of(gap)['wal_archive']['message'], gap['nagios']
        assert [(g['first'], g['last']) for g in gap['servers'][0]['window']['gaps']] == [(closed[1], closed[1])]
    finally:
        shutil.move(hidden, path)
    assert checks_of(pg2_check())['wal_archive']['status'] == 'ok'

    # The newest backup older than the maximum age.
    time.sleep(max(0, 61 - (time.time() - ended)))
    old = pg2_check(last_backup_maximum_age='1 MINUTES')
    assert checks_of(old)['last_backup_age']['status'] == 'critical' and old['status'] == 'critical', old['nagios']
    assert checks_of(pg2_check(last_backup_maximum_age='1 DAYS'))['last_backup_age']['status'] == 'ok'


def test_bad_input_is_refused_clearly_and_a_malformed_file_is_reported_not_skipped(configured):
    playbook('backup.yml', '--limit', 'pg2')
    before = tree('pg2')
    cases = [
        (dict(server='pg2', action='show', backup_id='20000101T000000'), 'has no backup 20000101T000000'),
        (dict(server='pg2', action='show', backup_id='yesterday'), 'yesterday'),
        (dict(server='nosuch', action='list'), 'has no catalog'),
        (dict(server='pg2', action='retention', retention_policy='KEEP 3 BACKUPS'), 'not one Barman understands'),
        (dict(server='pg2', action='retention', retention_policy='REDUNDANCY 0'), 'keeps no backup'),
        (dict(server='pg2', action='check', last_backup_maximum_age='soon'), 'does not parse'),
        (dict(server='pg2', query='servers[?'), 'not valid JMESPath'),
    ]
    for params, message in cases:
        ok, result = module('pg_backup_catalog', params)
        assert not ok and message in result['msg'], (params, result)
    assert tree('pg2') == before

    bad = os.path.join(BARMAN_HOME, 'pg2', 'meta', '20000101T000000-backup.info')
    with open(bad, 'w') as handle:
        handle.write('status=DONE\nthis is not a backup.info line\n')
    shutil.chown(bad, 'barman', 'barman')
    try:
        listed = catalog(dict(server='pg2'))
        assert listed['servers'][0]['malformed'][0]['path'] == bad
        ok, result = module(
            'pg_backup_catalog', dict(server='pg2', action='retention', retention_policy='REDUNDANCY 1')
        )
        assert not ok and bad in result['msg'] and 'line 2' in result['msg'], result
        checked = pg2_check()
        assert checks_of(checked)['catalog']['status'] == 'critical' and bad in checked['nagios']
        assert os.path.exists(bad), 'a malformed file must never be deleted'
        assert tree('pg2')[1:] == before[1:]
    finally:
        os.unlink(bad)


# -- Barman 3.19 and us, on one catalog ----------------------------------------------------------------


def start_and_count(data_dir, port):
    """Start a copy Barman recovered (it pauses at its target) and count its rows there."""
    run(['chown', '-R', 'postgres:postgres', os.path.dirname(data_dir)])
    options = "-p %d -c listen_addresses='' -c unix_socket_directories=%s -c archive_mode=off" % (port, data_dir)
    run(
        [
            'runuser',
            '-u',
            'postgres',
            '--',
            drills.PG_CTL,
            '-D',
            data_dir,
            '-o',
            options,
            '-l',
            data_dir + '.log',
            '-w',
            '-t',
            '120',
            'start',
        ]
    )
    try:
        wait_for(
            'recovery to reach its target',
            lambda: drills.query(port, 'SELECT pg_get_wal_replay_pause_state()', data_dir) == ['paused'],
            timeout=120,
        )
        return int(drills.query(port, 'SELECT count(*) FROM interop', data_dir)[0])
    finally:
        drills.stop_cluster(data_dir)


def test_barman_reads_our_catalog_and_we_read_barmans(configured, barman_conf):
    psql('pg1', 'DROP TABLE IF EXISTS interop; CREATE TABLE interop AS SELECT g FROM generate_series(1, 10) g')
    playbook('backup.yml', '--limit', 'pg1')
    ours = newest_id('pg1')
    psql('pg1', 'INSERT INTO interop SELECT generate_series(11, 15)')
    switch_wal('pg1')

    # Barman lists and shows our backups as we do.
    listing = barman(barman_conf, 'list-backups', 'pg1').stdout
    for backup in backups('pg1'):
        line = [row for row in listing.splitlines() if backup['backup_id'] in row]
        assert line, (backup['backup_id'], listing)
        assert ('FAILED' in line[0]) == (backup['status'] == 'FAILED'), line
    shown = barman(barman_conf, 'show-backup', 'pg1', ours).stdout
    mine = catalog(dict(server='pg1', action='show', backup_id=ours))['backup']
    fields = dict((k.strip(), v.strip()) for k, _sep, v in (row.partition(':') for row in shown.splitlines()))
    pairs = [('Status', 'status'), ('Begin WAL', 'begin_wal'), ('End WAL', 'end_wal'), ('Begin LSN', 'begin_xlog')]
    for label, key in pairs + [('End LSN', 'end_xlog')]:
        assert fields[label] == mine[key], (label, shown)

    # Barman recovers our backup to its end: the 10 rows committed before it.
    dest = tempfile.mkdtemp(prefix='barman-recover-', dir='/srv/barman-lab')
    try:
        shutil.chown(dest, 'barman', 'barman')
        data_dir = os.path.join(dest, 'data')
        barman(
            barman_conf, 'recover', '--target-immediate', '--tablespace', 'lab_tbs:%s/tbs' % dest, 'pg1', ours, data_dir
        )
        assert start_and_count(data_dir, 6443) == 10
    finally:
        drills.stop_cluster(os.path.join(dest, 'data'))
        shutil.rmtree(dest, ignore_errors=True)

    # A backup Barman takes into the same catalog: we list it with its id, status and WAL range, and recover it.
    taken = barman(barman_conf, 'backup', '--immediate-checkpoint', '--wait', '--wait-timeout', '120', 'pg1')
    theirs = backups('pg1')[-1]
    assert theirs['backup_id'] != ours and theirs['backup_id'] in taken.stdout and theirs['status'] == 'DONE', (
        theirs,
        taken.stdout,
    )
    assert theirs['begin_wal'] in taken.stdout and theirs['end_wal'] in taken.stdout, taken.stdout
    psql('pg1', 'INSERT INTO interop SELECT generate_series(16, 20)')
    switch_wal('pg1')
    out, summary = drills.recover(
        'from-barman', 'SELECT count(*) FROM interop', backup_id=theirs['backup_id'], target_immediate=True
    )
    assert out == ['15'], summary
