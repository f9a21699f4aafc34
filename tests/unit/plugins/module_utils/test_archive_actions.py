# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Islands, the one origin of continuity and the sweeping of leftovers, on a catalog in tmp_path
(real files; no PostgreSQL, so the check runs without switching WAL)."""

import datetime
import os
import time

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import (
    archive_actions,
    catalog,
    health,
    infofile,
    lockfile,
    wal,
    wal_store,
    xlogdb,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SEG = wal.DEFAULT_SEGMENT_SIZE


def seg(n, tli=1):
    return wal.segment_name(tli, n, SEG)


class Catalog:
    """One server's catalog: backups with begin and end WAL, keep annotations, WAL files in wals/."""

    def __init__(self, home):
        self.layout = catalog.ServerLayout(str(home), 'pg1')
        catalog.ensure_directories(self.layout)
        self.archive = wal_store.WalArchive(str(home), 'pg1')

    def backup(self, backup_id, begin, end, hours_ago, keep=None, status='DONE', old_keep=False):
        end_time = NOW - datetime.timedelta(hours=hours_ago)
        info = dict(
            status=status,
            begin_wal=seg(begin),
            end_wal=seg(end),
            begin_time=end_time - datetime.timedelta(minutes=5),
            end_time=end_time,
            timeline=1,
            xlog_segment_size=SEG,
        )
        infofile.write_backup_info(self.layout.backup_info_path(backup_id), info)
        os.makedirs(self.layout.backup_data_dir(backup_id))
        if keep:
            path = self.layout.old_keep_path(backup_id) if old_keep else self.layout.keep_path(backup_id)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'w') as handle:
                handle.write(keep)
        return backup_id

    def wals(self, *numbers):
        entries = []
        for n in numbers:
            path = self.layout.wal_path(seg(n))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as handle:
                handle.write(b'x' * 10)
            entries.append((seg(n), 10, (NOW - datetime.timedelta(minutes=60 - n)).timestamp(), 'gzip'))
        xlogdb.append_xlog_db(self.layout.xlog_db, entries)

    def check(self, **params):
        return archive_actions.check_archive(self.archive, dict(dict(segment_size=SEG, timeout=1), **params), False)


@pytest.fixture
def cat(tmp_path):
    return Catalog(tmp_path)


def after_retention(cat, old_keep=False):
    """What REDUNDANCY 2 leaves of four backups, the first kept standalone: its own WAL 2..3, then all
    WAL from the third backup's begin (9) on; 4..8 are gone, rightly."""
    cat.backup('20261120T010000', 2, 3, hours_ago=70, keep='standalone', old_keep=old_keep)
    cat.backup('20261122T010000', 9, 10, hours_ago=30)
    cat.backup('20261123T010000', 12, 13, hours_ago=3)
    cat.wals(2, 3, 9, 10, 11, 12, 13, 14)


# -- islands --------------------------------------------------------------------------------------


@pytest.mark.parametrize('old_keep', [False, True])
def test_the_wal_retention_removed_after_a_standalone_backup_is_an_island_not_a_gap(cat, old_keep):
    after_retention(cat, old_keep)
    result = cat.check()
    assert result['problems'] == []
    assert result['continuity']['first'] == seg(9) and result['continuity']['ok'] is True
    assert result['islands'] == [
        dict(backup_id='20261120T010000', begin_wal=seg(2), end_wal=seg(3), segments=2, missing=[], ok=True)
    ]


def test_a_standalone_backup_missing_its_own_wal_is_a_problem(cat):
    after_retention(cat)
    os.unlink(cat.layout.wal_path(seg(3)))
    result = cat.check()
    (problem,) = result['problems']
    assert '20261120T010000' in problem and seg(3) in problem and 'cannot be restored' in problem
    assert result['islands'][0]['missing'] == [[seg(3), seg(3)]] and result['islands'][0]['ok'] is False
    assert result['continuity']['ok'] is True


def test_without_the_keep_the_same_archive_has_a_gap(cat):
    after_retention(cat)
    os.unlink(cat.layout.keep_path('20261120T010000'))
    result = cat.check()
    assert result['islands'] == [] and result['continuity']['missing'] == [[seg(4), seg(8)]]
    assert 'recovery cannot pass it' in result['problems'][0]


def test_a_gap_after_the_origin_is_still_a_gap(cat):
    after_retention(cat)
    os.unlink(cat.layout.wal_path(seg(11)))
    assert cat.check()['continuity']['missing'] == [[seg(11), seg(11)]]


def test_health_reports_islands_inside_the_wal_archive_check(cat):
    after_retention(cat)
    options = dict(minimum_redundancy=1, disk_warning_percent=0, disk_critical_percent=0)
    result = health.check_server(cat.layout, options, None, NOW)
    checks = dict((c['name'], c) for c in result['checks'])
    assert checks['wal_archive']['status'] == 'ok', checks['wal_archive']
    assert (
        'from %s' % seg(9) in checks['wal_archive']['message'] and '1 older backup' in checks['wal_archive']['message']
    )
    os.unlink(cat.layout.wal_path(seg(2)))
    checks = dict((c['name'], c) for c in health.check_server(cat.layout, options, None, NOW)['checks'])
    assert checks['wal_archive']['status'] == 'critical'
    assert seg(2) in checks['wal_archive']['message'] and '20261120T010000' in checks['wal_archive']['message']


def test_health_takes_the_newest_backup_by_begin_time(cat):
    # Daylight saving time ended while these ran: each began after the one before, with a smaller id.
    cat.backup('20261025T023000', 2, 3, hours_ago=5)
    cat.backup('20261025T021500', 5, 6, hours_ago=2)
    cat.backup('20261025T020000', 8, 8, hours_ago=1, status=infofile.FAILED)
    cat.wals(2, 3, 4, 5, 6, 7, 8)
    options = dict(minimum_redundancy=1, disk_warning_percent=0, disk_critical_percent=0)
    checks = dict((c['name'], c) for c in health.check_server(cat.layout, options, None, NOW)['checks'])
    assert checks['last_backup_age']['message'].startswith('last backup 20261025T021500 ended 2.0 h ago')
    assert checks['failed_backups']['status'] == 'warning', checks['failed_backups']
    assert '20261025T020000' in checks['failed_backups']['message']


# -- leftovers of a killed delete ---------------------------------------------------------------------


def deleting(cat, backup_id, age):
    path = os.path.join(cat.layout.base_dir, '.%s.deleting' % backup_id)
    os.makedirs(os.path.join(path, 'data', 'base'))
    with open(os.path.join(path, 'data', 'PG_VERSION'), 'w') as handle:
        handle.write('15\n')
    os.utime(path, (time.time() - age,) * 2)
    return path


def test_the_check_sweeps_a_stale_half_deleted_backup_and_nothing_else(cat):
    after_retention(cat)
    stale = deleting(cat, '20261121T010000', wal_store.STALE_SECONDS + 60)
    young = deleting(cat, '20261119T010000', 10)
    result = cat.check()
    assert result['swept'] == [stale]
    assert not os.path.exists(stale) and os.path.isdir(young)
    assert sorted(os.listdir(cat.layout.base_dir)) == [
        '.20261119T010000.deleting',
        '20261120T010000',
        '20261122T010000',
        '20261123T010000',
    ]


def test_a_delete_in_progress_holds_the_backup_lock_and_is_left_alone(cat):
    stale = deleting(cat, '20261121T010000', wal_store.STALE_SECONDS + 60)
    with lockfile.ServerLock(cat.layout, 'backup'):
        assert archive_actions.sweep_deleted_backups(cat.layout) == []
    assert os.path.isdir(stale)
    assert archive_actions.sweep_deleted_backups(cat.layout) == [stale]


def test_the_check_in_check_mode_sweeps_nothing(cat):
    stale = deleting(cat, '20261121T010000', wal_store.STALE_SECONDS + 60)
    temp = os.path.join(cat.layout.incoming_dir, '.%s.abcdefgh.tmp' % seg(5))
    with open(temp, 'wb') as handle:
        handle.write(b'half')
    os.utime(temp, (time.time() - wal_store.STALE_SECONDS - 60,) * 2)
    result = archive_actions.check_archive(cat.archive, dict(segment_size=SEG, timeout=1), False, sweep=False)
    assert result['swept'] == [] and os.path.isdir(stale) and os.path.exists(temp)
    assert sorted(cat.check()['swept']) == sorted([temp, stale])
