"""The archive cannot be poisoned by its own key, islands are not gaps, leftovers go: on the lab.

(a) A segment named far beyond the archive, and one of a timeline nothing announced, each with a header
    that agrees with its name and pg1's own system identifier, delivered through pg1's restricted key:
    refused, nothing stored; and the check answers at once even when such a name is already there.
(b) A backup kept standalone, two more, retention removing the WAL between: the check (as setup.yml's
    proof runs it) passes and reports the standalone backup's WAL as an island.
(c) A half-deleted backup and stale temporary files are swept by the check and by processing; young
    ones stay.
"""

import os
import shutil
import struct
import time

import pytest
from labhosts import (
    BARMAN_HOME,
    CLUSTERS,
    as_postgres,
    catalog,
    module,
    playbook,
    psql,
    run,
    sender_argv,
    switch_wal,
)

from ansible_collections.barman.postgresql.plugins.module_utils import wal, wal_store

SEGMENT = wal.DEFAULT_SEGMENT_SIZE
WORKDIR = '/srv/barman-lab/trust-archive'
FAR_LOG_SEG = '0000FFFF000000FF'  # 256 TiB of WAL past 0/0, on pg1's timeline: 000000010000FFFF000000FF
PG1 = os.path.join(BARMAN_HOME, 'pg1')


@pytest.fixture(scope='module')
def workdir(configured):
    os.makedirs(WORKDIR, exist_ok=True)
    run(['chown', 'postgres:postgres', WORKDIR])
    os.chmod(WORKDIR, 0o700)
    yield WORKDIR
    shutil.rmtree(WORKDIR, ignore_errors=True)


def pg1_archive():
    return wal_store.WalArchive(BARMAN_HOME, 'pg1')


def newest_segment():
    return [n for n in pg1_archive().archived_names() if wal.is_segment_name(n)][-1]


def archived_now():
    """What the archive of pg1 holds: a new segment may arrive meanwhile, nothing else may change."""
    return set(pg1_archive().archived_names()), sorted(os.listdir(os.path.join(PG1, 'errors')))


def crafted_segment(directory, name):
    """A real segment of pg1 renamed ``name``, its first page header saying so (timeline and page
    address), pg1's system identifier kept: everything the receiver checks in a header agrees."""
    source = newest_segment()
    path = os.path.join(directory, name)
    as_postgres(*sender_argv('pg1', 'get', source, path))
    with open(path, 'r+b') as handle:
        handle.seek(4)
        handle.write(struct.pack('<IQ', wal.timeline_of(name), wal.segment_start_lsn(name, SEGMENT)))
    with open(path, 'rb') as handle:
        header = wal.parse_segment_header(handle.read(wal.LONG_PAGE_HEADER_SIZE))
    assert header.page_address == wal.segment_start_lsn(name, SEGMENT) and header.segment_size == SEGMENT
    return path


def purge(name):
    """Remove a file the receiver should never have taken (the unfixed code takes it), from incoming/
    and wals/, and the index, so that later tests see a clean archive."""
    places = [os.path.join(PG1, 'incoming', name), pg1_archive().layout.wal_path(name)]
    if not any(os.path.exists(p) for p in places):
        return
    for _attempt in range(5):  # the background processing may be moving it
        for path in places:
            if os.path.exists(path):
                os.unlink(path)
        time.sleep(1)
    module('pg_wal_archive', dict(server='pg1', action='rebuild'))


def wal_check(**params):
    cluster = CLUSTERS['pg1']
    options = dict(server='pg1', pg_host=cluster['host'], pg_port=cluster['port'])
    options.update(params)
    started = time.time()
    succeeded, result = module('pg_wal_archive', options)
    return succeeded, result, time.time() - started


# -- (a) implausible names ------------------------------------------------------------------------------


def test_names_far_ahead_or_on_an_unannounced_timeline_are_refused_and_the_check_stays_fast(workdir):
    switch_wal('pg1')
    newest = newest_segment()
    far = newest[:8] + FAR_LOG_SEG
    # A timeline above any the lab reached (recovery drills promote copies), right after the newest segment.
    unannounced = max(wal.timeline_of(n) for n in pg1_archive().archived_names()) + 7
    other_timeline = wal.segment_name(unannounced, wal.segment_number(newest, SEGMENT) + 1, SEGMENT)
    before = archived_now()
    try:
        for name, reason in (
            (far, 'past the newest file in the archive of pg1'),
            (other_timeline, 'no history file %s' % wal.history_file_name(unannounced)),
        ):
            path = crafted_segment(workdir, name)
            refused = as_postgres(*sender_argv('pg1', 'put', path), check=False)
            assert refused.returncode == 2, (name, refused.returncode, refused.stderr)
            assert 'refused %s' % name in refused.stderr and reason in refused.stderr, refused.stderr
            time.sleep(1)  # what the background processing would do with it, it has done
            assert pg1_archive().locate(name) is None, '%s was stored' % name
            names, errors = archived_now()
            assert names >= before[0] and errors == before[1], 'a refusal changed the archive'
    finally:
        purge(far)
        purge(other_timeline)

    succeeded, result, _seconds = wal_check()
    assert succeeded and result['continuity']['ok'], result.get('msg', result)

    # A name far ahead already in the archive (stored before this fix): one range, answered at once.
    real = newest_segment()
    planted = pg1_archive().layout.wal_path(far)
    os.makedirs(os.path.dirname(planted))
    shutil.copy(os.path.join(workdir, far), planted)
    run(['chown', '-R', 'barman:barman', os.path.dirname(planted)])
    try:
        # Answered as one missing range (a list of its names would be millions long): speed is bench/'s.
        succeeded, result, _seconds = wal_check(switch_wal=False, fail_on_problem=False)
        assert succeeded, result
        continuity = result['continuity']
        ((first_missing, last_missing),) = continuity['missing']
        assert continuity['last'] == far and last_missing == wal.wal_segment_before(far, SEGMENT), continuity
        assert wal.segment_number(first_missing, SEGMENT) > wal.segment_number(real, SEGMENT), continuity
        assert pg1_archive().locate(wal.wal_segment_before(first_missing, SEGMENT)), continuity
    finally:
        shutil.rmtree(os.path.dirname(planted))
    assert pg1_archive().locate(far) is None


# -- (b) islands ----------------------------------------------------------------------------------------


def backups():
    return catalog(dict(server='pg1'))['servers'][0]['backups']


def new_backup(stage):
    psql('pg1', 'INSERT INTO trust_islands VALUES (%d)' % stage)
    switch_wal('pg1')  # each backup starts in a segment of its own
    playbook('backup.yml', '--limit', 'pg1', '-e', 'barman_retention_policy=')
    done = [b for b in backups() if b['status'] == 'DONE']
    return done[-1]


def test_the_wal_of_a_standalone_backup_is_an_island_and_retention_leaves_the_check_passing(workdir):
    psql('pg1', 'DROP TABLE IF EXISTS trust_islands; CREATE TABLE trust_islands (stage int)')
    kept = new_backup(1)
    assert catalog(dict(server='pg1', action='keep', backup_id=kept['backup_id'], target='standalone'))['changed']
    try:
        between = new_backup(2)
        last = new_backup(3)
        switch_wal('pg1')
        removed = catalog(dict(server='pg1', action='retention', retention_policy='REDUNDANCY 1', minimum_redundancy=1))
        assert between['backup_id'] in removed['removed_backups'], removed
        assert kept['backup_id'] not in removed['removed_backups'], removed
        names = set(pg1_archive().archived_names())
        own = wal.segments_between(kept['begin_wal'], kept['end_wal'], SEGMENT)
        assert set(own) <= names, 'retention removed WAL the standalone backup needs'
        gone = wal.segments_between(
            wal.wal_segment_after(kept['end_wal'], SEGMENT), wal.wal_segment_before(last['begin_wal'], SEGMENT), SEGMENT
        )
        assert gone and not set(gone) & names, 'retention left the WAL between: nothing is tested'

        # The proof setup.yml runs: switch, wait, continuity from the oldest backup kept for recovery.
        succeeded, result, _seconds = wal_check()
        assert succeeded, result.get('msg', result)
        pitr = [b for b in backups() if b['status'] == 'DONE' and b['keep'] != 'standalone']
        origin = min(pitr, key=lambda b: b['begin_time'])['begin_wal']
        assert wal.segment_number(origin, SEGMENT) > wal.segment_number(kept['end_wal'], SEGMENT), origin
        assert result['continuity']['ok'] and result['continuity']['first'] == origin, result['continuity']
        island = [i for i in result['islands'] if i['backup_id'] == kept['backup_id']]
        assert island == [
            dict(
                backup_id=kept['backup_id'],
                begin_wal=kept['begin_wal'],
                end_wal=kept['end_wal'],
                segments=len(own),
                missing=[],
                ok=True,
            )
        ], result['islands']
        health = catalog(dict(server='pg1', action='check', disk_warning_percent=0, disk_critical_percent=0))
        checks = dict((c['name'], c) for c in health['servers'][0]['checks'])
        assert checks['wal_archive']['status'] == 'ok', checks['wal_archive']
        setup = playbook('setup.yml', check=False)
        assert setup.returncode == 0, setup.stdout[-3000:]
    finally:
        # Released, its WAL would be a gap for the tests after this one: it goes.
        module('pg_backup_catalog', dict(server='pg1', action='release', backup_id=kept['backup_id']))
        module('pg_backup_catalog', dict(server='pg1', action='delete', backup_id=kept['backup_id']))


# -- (c) leftovers of killed processes -------------------------------------------------------------------


def plant(path, age_seconds, directory=False):
    if directory:
        os.makedirs(os.path.join(path, 'data', 'base', '5'))
        with open(os.path.join(path, 'data', 'PG_VERSION'), 'w') as handle:
            handle.write('15\n')
    else:
        with open(path, 'wb') as handle:
            handle.write(b'half a segment')
    run(['chown', '-R', 'barman:barman', path])
    stamp = time.time() - age_seconds
    os.utime(path, (stamp, stamp))
    return path


def test_leftovers_of_killed_processes_are_swept_and_young_files_stay(workdir):
    newest = newest_segment()
    hash_dir = os.path.dirname(pg1_archive().layout.wal_path(newest))
    stale_deleting = plant(os.path.join(PG1, 'base', '.20200101T000000.deleting'), 2 * 3600, directory=True)
    young_deleting = plant(os.path.join(PG1, 'base', '.20200102T000000.deleting'), 60, directory=True)
    stale_temp = plant(os.path.join(hash_dir, '.%s.k3j_x9ab' % newest), 2 * 3600)
    young_temp = plant(os.path.join(hash_dir, '.%s.youngone' % newest), 60)
    stale_incoming = plant(os.path.join(PG1, 'incoming', '.%s.abcdefgh.tmp' % newest), 2 * 3600)
    try:
        succeeded, result, _seconds = wal_check(switch_wal=False)
        assert succeeded, result.get('msg', result)
        # A delivery meanwhile may sweep the temporary files first (its processing does too).
        assert stale_deleting in result['swept'] and result['changed'], result['swept']
        assert set(result['swept']) <= {stale_deleting, stale_temp, stale_incoming}, result['swept']
        assert not os.path.exists(stale_deleting) and not os.path.exists(stale_temp)
        assert not os.path.exists(stale_incoming)
        assert os.path.isdir(young_deleting) and os.path.exists(young_temp)

        again = plant(os.path.join(PG1, 'incoming', '.%s.ijklmnop.tmp' % newest), 2 * 3600)
        processed = module('pg_wal_archive', dict(server='pg1', action='process'))
        assert processed[0], processed[1]
        assert not os.path.exists(again) and os.path.exists(young_temp)
    finally:
        for path in (young_deleting, stale_deleting):
            shutil.rmtree(path, ignore_errors=True)
        for path in (young_temp, stale_temp, stale_incoming):
            if os.path.exists(path):
                os.unlink(path)
