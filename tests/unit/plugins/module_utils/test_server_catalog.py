# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The catalog actions on a catalog built in a temporary directory (real files, no PostgreSQL)."""

import datetime
import json
import os
import threading

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    health,
    infofile,
    mirror,
    remote,
    lockfile,
    recovery,
    recovery_hold,
    retention,
    server_catalog,
    verifyfile,
    wal,
    wal_store,
    xlogdb,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SEG = wal.DEFAULT_SEGMENT_SIZE


def seg(n, tli=1):
    return wal.segment_name(tli, n, SEG)


class Lab:
    """A server catalog on disk: backups (info + a data file) and WAL files indexed in xlog.db."""

    def __init__(self, home, server='pg1'):
        self.layout = catalog.ServerLayout(str(home), server)
        catalog.ensure_directories(self.layout)

    def backup(self, backup_id, begin, end=None, status='DONE', hours_ago=1):
        end_time = NOW - datetime.timedelta(hours=hours_ago)
        info = dict(
            status=status,
            begin_wal=seg(begin),
            end_wal=seg(end or begin),
            begin_time=end_time - datetime.timedelta(minutes=5),
            end_time=end_time,
            size=1000,
            deduplicated_size=100,
            timeline=1,
            xlog_segment_size=SEG,
        )
        if status == 'FAILED':
            info['error'] = 'rsync died'
        infofile.write_backup_info(self.layout.backup_info_path(backup_id), info)
        os.makedirs(self.layout.backup_data_dir(backup_id))
        with open(os.path.join(self.layout.backup_data_dir(backup_id), 'PG_VERSION'), 'w') as handle:
            handle.write('15\n')
        return backup_id

    def wals(self, *numbers, **kw):
        entries = []
        for n in numbers:
            name = seg(n, kw.get('tli', 1)) if isinstance(n, int) else n
            path = self.layout.wal_path(name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, 'wb') as handle:
                handle.write(b'x' * 10)
            entries.append(
                (name, 10, (NOW - datetime.timedelta(minutes=60 - n if isinstance(n, int) else 0)).timestamp(), 'gzip')
            )
        xlogdb.append_xlog_db(self.layout.xlog_db, entries)

    def delivered(self, *numbers):
        """WAL files the receiver put in incoming/, not yet compressed into wals/ nor indexed."""
        for n in numbers:
            with open(os.path.join(self.layout.incoming_dir, seg(n)), 'wb') as handle:
                handle.write(b'y' * 10)

    def files(self):
        result = []
        for directory, _dirs, names in os.walk(self.layout.root):
            result += [os.path.relpath(os.path.join(directory, n), self.layout.root) for n in names]
        return sorted(result)


@pytest.fixture
def lab(tmp_path):
    return Lab(tmp_path)


def test_list_describes_backups_with_wal_between_them(lab):
    lab.backup('20261120T010000', 2, 3)
    lab.backup('20261121T010000', 5, 6, status='FAILED')
    lab.backup('20261122T010000', 7, 8)
    lab.wals(1, 2, 3, 4, 5, 6, 7, 8, 9)
    summary = server_catalog.ServerCatalog(lab.layout).summary(retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    first, failed, last = summary['backups']
    assert (first['backup_id'], first['status'], first['retention_status']) == ('20261120T010000', 'DONE', 'OBSOLETE')
    assert (first['wal_count'], first['wal_size']) == (5, 50)  # segments 2..6, up to the next DONE begin
    assert failed['status'] == 'FAILED' and failed['wal_size'] is None and failed['error'] == 'rsync died'
    assert (last['wal_count'], last['retention_status']) == (3, 'VALID')
    assert last['end_time'] == (NOW - datetime.timedelta(hours=1)).isoformat()
    assert (summary['wal_count'], summary['wal_size']) == (9, 90)


@pytest.mark.parametrize(
    'shortcut, expected',
    [
        ('latest', '20261122T010000'),
        ('last', '20261122T010000'),
        ('oldest', '20261120T010000'),
        ('first', '20261120T010000'),
        ('last-failed', '20261121T010000'),
        ('20261121T010000', '20261121T010000'),
    ],
)
def test_resolve_shortcuts(lab, shortcut, expected):
    lab.backup('20261120T010000', 2)
    lab.backup('20261121T010000', 5, status='FAILED')
    lab.backup('20261122T010000', 7)
    assert server_catalog.ServerCatalog(lab.layout).resolve(shortcut) == expected


@pytest.mark.parametrize('text', ['20261123T010000', 'newest', '../x', ''])
def test_resolve_refuses_unknown_ids(lab, text):
    lab.backup('20261120T010000', 2)
    with pytest.raises((server_catalog.CatalogRefusal, catalog.InvalidName)) as caught:
        server_catalog.ServerCatalog(lab.layout).resolve(text)
    assert caught.value.hint


def test_unknown_server_is_refused_naming_the_known_ones(lab):
    with pytest.raises(server_catalog.CatalogRefusal) as caught:
        server_catalog.server_layout(lab.layout.barman_home, 'pg9')
    assert 'pg1' in str(caught.value)


def test_keep_and_release_write_barmans_annotation(lab):
    lab.backup('20261120T010000', 2)
    server = server_catalog.ServerCatalog(lab.layout)
    assert server.keep('20261120T010000', 'standalone', dry_run=True)
    assert not os.path.exists(lab.layout.keep_path('20261120T010000'))
    server = server_catalog.ServerCatalog(lab.layout)
    assert server.keep('20261120T010000', 'standalone')
    assert open(lab.layout.keep_path('20261120T010000')).read() == 'standalone'
    assert oct(os.stat(lab.layout.keep_path('20261120T010000')).st_mode & 0o777) == '0o600'
    assert not server_catalog.ServerCatalog(lab.layout).keep('20261120T010000', 'standalone')
    assert server_catalog.ServerCatalog(lab.layout).keeps == {'20261120T010000': 'standalone'}
    assert server_catalog.ServerCatalog(lab.layout).release('20261120T010000')
    assert not os.path.exists(lab.layout.keep_path('20261120T010000'))
    assert not server_catalog.ServerCatalog(lab.layout).release('20261120T010000')


def test_the_old_keep_location_is_read(lab):
    lab.backup('20261120T010000', 2)
    os.makedirs(os.path.dirname(lab.layout.old_keep_path('20261120T010000')))
    with open(lab.layout.old_keep_path('20261120T010000'), 'w') as handle:
        handle.write('full')
    assert server_catalog.ServerCatalog(lab.layout).keeps == {'20261120T010000': 'full'}


def test_only_done_backups_are_kept(lab):
    lab.backup('20261120T010000', 2, status='FAILED')
    with pytest.raises(server_catalog.CatalogRefusal, match='only a DONE backup'):
        server_catalog.ServerCatalog(lab.layout).keep('20261120T010000', 'full')


def test_delete_removes_the_backup_and_only_the_wal_it_alone_needed(lab):
    lab.backup('20261120T010000', 2)
    lab.backup('20261122T010000', 5)
    lab.wals(1, 2, 3, 4, 5, 6, '00000001.history')
    before = lab.files()
    dry = server_catalog.delete_backup(lab.layout, 'oldest', 1, dry_run=True)
    assert lab.files() == before
    assert dry['removed_backups'] == ['20261120T010000'] and dry['removed_wals'] == 4
    result = server_catalog.delete_backup(lab.layout, 'oldest', 1)
    assert result == dict(dry, backup_id='20261120T010000')
    assert not os.path.exists(lab.layout.backup_dir('20261120T010000'))
    assert not os.path.exists(lab.layout.backup_info_path('20261120T010000'))
    assert [e.name for e in xlogdb.read_xlog_db(lab.layout.xlog_db)] == [seg(5), seg(6), '00000001.history']
    assert os.path.exists(lab.layout.wal_path('00000001.history'))
    assert not os.path.exists(lab.layout.wal_path(seg(4)))
    assert not [f for f in os.listdir(lab.layout.base_dir) if f.startswith('.')]


def test_delete_refuses_what_must_stay(lab):
    lab.backup('20261120T010000', 2)
    lab.backup('20261121T010000', 4)
    lab.backup('20261122T010000', 6, status='STARTED')
    lab.wals(1, 2, 3, 4, 5, 6)
    server_catalog.ServerCatalog(lab.layout).keep('20261120T010000', 'full')
    before = lab.files()
    with pytest.raises(server_catalog.CatalogRefusal, match='is kept') as kept:
        server_catalog.delete_backup(lab.layout, '20261120T010000', 1)
    with pytest.raises(server_catalog.CatalogRefusal, match='still being taken') as taken:
        server_catalog.delete_backup(lab.layout, '20261122T010000', 1)
    with pytest.raises(server_catalog.CatalogRefusal, match='below the minimum of 2') as minimum:
        server_catalog.delete_backup(lab.layout, '20261121T010000', 2)
    assert [kept.value.code, taken.value.code, minimum.value.code] == [
        'BACKUP_KEPT',
        'BACKUP_IN_PROGRESS',
        'MINIMUM_REDUNDANCY',
    ]
    assert lab.files() == before


def test_the_last_done_backup_is_never_deleted_even_with_minimum_zero(lab):
    lab.backup('20261120T010000', 2)
    with pytest.raises(server_catalog.CatalogRefusal, match='never deleted'):
        server_catalog.delete_backup(lab.layout, 'latest', 0)
    assert os.path.exists(lab.layout.backup_data_dir('20261120T010000'))


def test_a_failed_backup_can_be_deleted(lab):
    lab.backup('20261120T010000', 2)
    lab.backup('20261121T010000', 4, status='FAILED')
    lab.wals(2, 3, 4)
    result = server_catalog.delete_backup(lab.layout, 'last-failed', 1)
    assert result['removed_backups'] == ['20261121T010000'] and result['removed_wals'] == 0


def test_a_running_backup_blocks_changes(lab):
    lab.backup('20261120T010000', 2)
    lab.backup('20261121T010000', 4)
    with lockfile.ServerLock(lab.layout, 'backup'):
        with pytest.raises(lockfile.LockBusy):
            server_catalog.delete_backup(lab.layout, 'oldest', 1)
    assert os.path.exists(lab.layout.backup_info_path('20261120T010000'))


def test_retention_removes_obsolete_and_old_failed_backups_and_their_wal(lab):
    lab.backup('20261118T010000', 1, hours_ago=100)
    lab.backup('20261119T010000', 3, status='FAILED', hours_ago=90)
    lab.backup('20261120T010000', 4, hours_ago=80)
    lab.backup('20261121T010000', 6, hours_ago=2)
    lab.backup('20261122T010000', 8, status='FAILED', hours_ago=1)
    lab.wals(1, 2, 3, 4, 5, 6, 7, 8, 9)
    policy = retention.parse_policy('REDUNDANCY 2')
    before = lab.files()
    dry = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    assert lab.files() == before
    assert dry['removed_backups'] == ['20261118T010000', '20261119T010000']
    assert (dry['removed_wals'], dry['first_removed_wal'], dry['last_removed_wal']) == (3, seg(1), seg(3))
    result = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert result == dry
    assert sorted(server_catalog.ServerCatalog(lab.layout).infos) == [
        '20261120T010000',
        '20261121T010000',
        '20261122T010000',
    ]
    again = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert again['removed_backups'] == [] and again['removed_wals'] == 0


def test_retention_refuses_on_a_malformed_backup_info_and_changes_nothing(lab):
    lab.backup('20261118T010000', 1, hours_ago=100)
    lab.backup('20261121T010000', 6, hours_ago=2)
    with open(lab.layout.backup_info_path('20261119T010000'), 'w') as handle:
        handle.write('status=DONE\nthis line is broken\n')
    lab.wals(1, 2, 6)
    before = lab.files()
    with pytest.raises(server_catalog.CatalogRefusal) as caught:
        server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert '20261119T010000-backup.info' in str(caught.value) and 'line 2' in str(caught.value)
    assert lab.files() == before
    summary = server_catalog.ServerCatalog(lab.layout).summary()
    assert [m['path'] for m in summary['malformed']] == [lab.layout.backup_info_path('20261119T010000')]


def check(lab, **options):
    defaults = dict(
        minimum_redundancy=1,
        last_backup_maximum_age=None,
        wal_maximum_age=None,
        disk_warning_percent=0,
        disk_critical_percent=0,
    )
    defaults.update(options)
    return health.check_server(lab.layout, defaults, None, NOW)


def by_name(result):
    return dict((c['name'], c['status']) for c in result['checks'])


def test_check_is_ok_on_a_healthy_catalog(lab):
    lab.backup('20261120T010000', 2, hours_ago=3)
    lab.wals(2, 3, 4)
    result = check(lab, last_backup_maximum_age=4 * 3600)
    assert result['status'] == 'ok', result['checks']
    assert result['nagios'].startswith('BARMAN OK - pg1: ')
    assert result['window']['first_recoverable_time'] == (NOW - datetime.timedelta(hours=3)).isoformat()
    assert result['window']['last_wal'] == seg(4)


def test_check_is_critical_for_a_gap_an_old_backup_and_no_backup(lab):
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.wals(2, 3, 5, 6)
    result = check(lab, last_backup_maximum_age=26 * 3600)
    statuses = by_name(result)
    assert statuses['wal_archive'] == 'critical' and statuses['last_backup_age'] == 'critical'
    assert result['status'] == 'critical'
    assert seg(4) in result['nagios'] and 'BARMAN CRITICAL' in result['nagios']
    (gap,) = result['window']['gaps']
    assert (gap['first'], gap['last']) == (seg(4), seg(4))
    assert gap['after_time'] < gap['before_time']
    empty = Lab(lab.layout.barman_home, 'pg2')
    assert by_name(check(empty))['backups'] == 'critical'


def test_check_warns_about_a_failure_since_the_last_good_backup_and_reports_malformed_files(lab):
    lab.backup('20261120T010000', 2, hours_ago=3)
    lab.backup('20261121T010000', 4, status='FAILED', hours_ago=1)
    lab.wals(2, 3, 4)
    assert by_name(check(lab))['failed_backups'] == 'warning'
    with open(lab.layout.backup_info_path('20261119T010000'), 'w') as handle:
        handle.write('garbage\n')
    result = check(lab)
    assert by_name(result)['catalog'] == 'critical'
    assert '20261119T010000-backup.info' in result['nagios']
    assert os.path.exists(lab.layout.backup_info_path('20261119T010000'))


def test_check_disk_thresholds(lab):
    lab.backup('20261120T010000', 2)
    lab.wals(2)
    assert by_name(check(lab, disk_warning_percent=101, disk_critical_percent=0))['disk_space'] == 'warning'
    assert by_name(check(lab, disk_warning_percent=101, disk_critical_percent=101))['disk_space'] == 'critical'


def test_server_names_lists_only_server_directories(lab, tmp_path):
    os.mkdir(str(tmp_path / '.hidden'))
    os.mkdir(str(tmp_path / 'not-a-server'))
    Lab(tmp_path, 'pg2')
    assert server_catalog.server_names(str(tmp_path)) == ['pg1', 'pg2']


def test_a_standalone_backup_recovers_to_its_end_past_a_gap_that_retention_left(lab):
    lab.backup('20261120T010000', 2, 3)
    lab.wals(2, 3, 7, 8)
    info = server_catalog.ServerCatalog(lab.layout).infos['20261120T010000']
    wal_archive = wal_store.WalArchive(lab.layout.barman_home, 'pg1')
    continuity, _needed_until = recovery.wal_needed_for_target(wal_archive, info, 'target_immediate', True)
    assert continuity['missing'] == [[seg(4), seg(6)]]
    with pytest.raises(recovery.RecoveryError, match='missing from the archive') as excinfo:
        recovery.wal_needed_for_target(wal_archive, info, None, None)
    assert excinfo.value.code == 'ARCHIVE_GAP'


def test_an_archive_begun_on_a_later_timeline_needs_no_history_file_until_it_crosses_one(lab):
    lab.wals(*[seg(n, 2) for n in (5, 6, 7)])
    wal_archive = wal_store.WalArchive(lab.layout.barman_home, 'pg1')
    continuity = wal_archive.continuity(SEG)
    assert (continuity['ok'], continuity['first'], continuity['last']) == (True, seg(5, 2), seg(7, 2))
    lab.wals(seg(4, 1))
    with pytest.raises(wal_store.ArchiveError, match='00000002.history'):
        wal_archive.continuity(SEG)


# -- one plan for check mode and the real run ---------------------------------------------------------


def removed_files(before, after):
    """The WAL names and backup ids whose files went, from two listings of the server directory."""
    gone = set(before) - set(after)
    wals = sorted(set(os.path.basename(f) for f in gone if wal.is_wal_name(os.path.basename(f))))
    backups = sorted(set(f.split(os.sep)[1] for f in gone if f.startswith('base' + os.sep)))
    return backups, wals


def test_the_dry_run_plans_the_wal_still_in_incoming_that_the_real_run_removes(lab):
    # Seen after the demo: WAL delivered to incoming/ was compressed and indexed between the check run
    # and the real one, which then removed 36 files where the check run had promised 32.
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.backup('20261121T010000', 5, hours_ago=20)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(1, 2, 3, 8)
    lab.delivered(4, 6, 9)
    policy = retention.parse_policy('REDUNDANCY 1')
    before = lab.files()
    dry = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    assert lab.files() == before
    assert dry['removed_wal_names'] == [seg(1), seg(2), seg(3), seg(4), seg(6)]
    assert (dry['removed_wals'], dry['removed_wal_size']) == (5, 50)
    # The background compression runs between the two runs, as it does on a live server.
    processed = wal_store.WalArchive(lab.layout.barman_home, 'pg1').process_incoming('gzip')
    assert processed['archived'] == [seg(4), seg(6), seg(9)]
    before = lab.files()
    real = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert real['removed_wal_names'] == dry['removed_wal_names'] and real['removed_backups'] == dry['removed_backups']
    assert removed_files(before, lab.files()) == (real['removed_backups'], real['removed_wal_names'])
    assert [e.name for e in xlogdb.read_xlog_db(lab.layout.xlog_db)] == [seg(8), seg(9)]


def test_wal_left_in_incoming_is_removed_from_there_and_counted(lab):
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(2, 8)
    lab.delivered(3, 9)
    before = lab.files()
    dry = server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW, dry_run=True)
    real = server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert real == dry and real['removed_wal_names'] == [seg(2), seg(3)] and real['removed_wal_size'] == 20
    assert removed_files(before, lab.files()) == (['20261120T010000'], [seg(2), seg(3)])
    assert os.listdir(lab.layout.incoming_dir) == [seg(9)]


def test_the_real_run_removes_its_plan_and_nothing_that_arrived_after_it(lab):
    lab.backup('20261120T010000', 3, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(3, 4, 8)
    server = server_catalog.ServerCatalog(lab.layout)
    _statuses, plan = server_catalog.plan_retention(server, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert plan.backups == ['20261120T010000'] and plan.wals == [seg(3), seg(4)]
    lab.delivered(1, 5)  # old names arriving after the plan was made: not in it, so they stay
    before = lab.files()
    server.remove(plan)
    assert removed_files(before, lab.files()) == (plan.backups, plan.wals)
    assert sorted(os.listdir(lab.layout.incoming_dir)) == [seg(1), seg(5)]


def test_delete_plans_wal_in_incoming_too_and_check_mode_returns_that_plan(lab):
    lab.backup('20261120T010000', 2)
    lab.backup('20261122T010000', 5)
    lab.wals(2, 5)
    lab.delivered(3, 4)
    before = lab.files()
    dry = server_catalog.delete_backup(lab.layout, 'oldest', 1, dry_run=True)
    assert lab.files() == before
    real = server_catalog.delete_backup(lab.layout, 'oldest', 1)
    assert real == dry and real['removed_wal_names'] == [seg(2), seg(3), seg(4)]
    assert removed_files(before, lab.files()) == (['20261120T010000'], real['removed_wal_names'])


# -- recovery holds -----------------------------------------------------------------------------------------


def hold_on(lab, backup_id, begin, **kw):
    return recovery_hold.take(lab.layout, backup_id, seg(begin), 'pg1:/srv/copy', now=kw.pop('now', NOW), **kw)


def test_retention_keeps_a_held_backup_and_its_wal_then_removes_them_once_released(lab):
    lab.backup('20261120T010000', 2, 3, hours_ago=30)
    lab.backup('20261121T010000', 5, hours_ago=20)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(1, 2, 3, 4, 5, 6, 7, 8, 9)
    token = hold_on(lab, '20261120T010000', 2)
    policy = retention.parse_policy('REDUNDANCY 1')
    listed = server_catalog.ServerCatalog(lab.layout).summary(policy, 1, NOW)
    assert listed['backups'][0]['holds'] == [token] and listed['backups'][0]['retention_status'] == 'HELD'
    assert [(h['token'], h['stale']) for h in listed['holds']] == [(token, False)]
    before = lab.files()
    dry = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    result = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert result == dry
    assert result['retention_status']['20261120T010000'] == 'HELD' and result['removed_backups'] == ['20261121T010000']
    assert result['removed_wal_names'] == [seg(1)] and [h['token'] for h in result['holds']] == [token]
    assert removed_files(before, lab.files()) == (['20261121T010000'], [seg(1)])
    assert recovery_hold.release(lab.layout, token)
    result = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert result['removed_backups'] == ['20261120T010000']
    assert result['removed_wal_names'] == [seg(n) for n in range(2, 8)]
    assert sorted(server_catalog.ServerCatalog(lab.layout).infos) == ['20261122T010000']


def test_delete_refuses_a_held_backup_saying_what_holds_it_and_how_to_release(lab):
    lab.backup('20261120T010000', 2)
    lab.backup('20261122T010000', 5)
    lab.wals(2, 3, 4, 5)
    token = hold_on(lab, '20261120T010000', 2)
    before = lab.files()
    with pytest.raises(server_catalog.CatalogRefusal) as caught:
        server_catalog.delete_backup(lab.layout, '20261120T010000', 1, now=NOW)
    text = str(caught.value)
    for part in ('held by a recovery to pg1:/srv/copy', 'since ' + NOW.isoformat(), token, 'action=release-hold'):
        assert part in text, text
    assert lab.files() == before
    # Deleting another backup keeps the WAL the held one's recovery still fetches.
    lab.backup('20261123T010000', 7)
    result = server_catalog.delete_backup(lab.layout, '20261122T010000', 1, now=NOW)
    assert result['removed_wal_names'] == []


def test_a_held_backup_keeps_its_wal_even_when_kept_standalone(lab):
    lab.backup('20261120T010000', 2, 3, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(1, 2, 3, 4, 5, 8)
    server_catalog.ServerCatalog(lab.layout).keep('20261120T010000', 'standalone')
    hold_on(lab, '20261120T010000', 2)
    result = server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert result['removed_wal_names'] == [seg(1)]


def test_an_expired_hold_protects_nothing_is_reported_and_retention_removes_it(lab):
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(2, 3, 8)
    token = hold_on(lab, '20261120T010000', 2, now=NOW - datetime.timedelta(hours=25))
    assert recovery_hold.active(lab.layout, NOW) == []
    assert [h['token'] for h in recovery_hold.survey(lab.layout, NOW)['stale']] == [token]
    listed = server_catalog.ServerCatalog(lab.layout).summary(None, 1, NOW)
    assert [(h['token'], h['stale']) for h in listed['holds']] == [(token, True)]
    policy = retention.parse_policy('REDUNDANCY 1')
    dry = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    assert dry['removed_stale_holds'] == [token] and os.path.exists(recovery_hold.hold_path(lab.layout, token))
    result = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert result == dry and result['removed_backups'] == ['20261120T010000']
    assert not os.path.exists(recovery_hold.hold_path(lab.layout, token))


def test_a_damaged_hold_stops_retention_and_delete_and_is_reported(lab):
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(2, 8)
    os.mkdir(recovery_hold.holds_dir(lab.layout))
    bad = recovery_hold.hold_path(lab.layout, '20261120T010000-0123456789abcdef')
    with open(bad, 'w') as handle:
        handle.write('{"backup_id": "20261120T010000"')
    before = lab.files()
    with pytest.raises(server_catalog.CatalogRefusal, match='recovery hold .* cannot be read'):
        server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    with pytest.raises(server_catalog.CatalogRefusal, match=bad):
        server_catalog.delete_backup(lab.layout, 'oldest', 1)
    assert lab.files() == before
    assert [m['path'] for m in server_catalog.ServerCatalog(lab.layout).summary()['malformed']] == [bad]


def test_release_hold_in_check_mode_changes_nothing(lab):
    lab.backup('20261120T010000', 2)
    token = hold_on(lab, '20261120T010000', 2)
    assert server_catalog.release_hold(lab.layout, token, dry_run=True) == dict(hold=token, released=True)
    assert os.path.exists(recovery_hold.hold_path(lab.layout, token))
    assert server_catalog.release_hold(lab.layout, token) == dict(hold=token, released=True)
    assert server_catalog.release_hold(lab.layout, token) == dict(hold=token, released=False)


def test_a_change_holds_the_hold_lock_so_a_recovery_taking_a_hold_meanwhile_waits_and_sees_the_outcome(lab):
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(2, 8)
    locked, outcome = threading.Event(), {}

    def recovery():
        locked.wait()
        try:
            outcome['token'] = hold_on(lab, '20261120T010000', 2, wait_seconds=30)
        except recovery_hold.HoldError as error:
            outcome['error'] = str(error)

    thread = threading.Thread(target=recovery)
    thread.start()
    backup_lock, hold_lock = server_catalog._changing(lab.layout)
    with backup_lock, hold_lock:
        locked.set()
        server = server_catalog.ServerCatalog(lab.layout)
        _statuses, plan = server_catalog.plan_retention(server, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
        thread.join(0.5)
        assert thread.is_alive(), 'the hold was taken while retention was between its plan and its removal'
        server.remove(plan)
    thread.join(30)
    assert 'no longer in the catalog' in outcome['error'], outcome
    assert not os.path.exists(recovery_hold.holds_dir(lab.layout)) or not os.listdir(
        recovery_hold.holds_dir(lab.layout)
    )


def test_a_hold_taken_first_is_seen_by_the_retention_that_waited_for_it(lab, monkeypatch):
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(2, 8)
    with lockfile.ServerLock(lab.layout, recovery_hold.LOCK):
        monkeypatch.setattr(server_catalog, 'HOLD_LOCK_WAIT_SECONDS', 0)
        with pytest.raises(lockfile.LockBusy):
            server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    hold_on(lab, '20261120T010000', 2)
    result = server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert result['removed_backups'] == [] and os.path.isdir(lab.layout.backup_dir('20261120T010000'))


def test_a_busy_archive_process_refuses_the_whole_plan_before_anything_is_removed(lab, monkeypatch):
    lab.backup('20261120T010000', 2, hours_ago=30)
    lab.backup('20261122T010000', 8, hours_ago=1)
    lab.wals(2, 8)
    policy = retention.parse_policy('REDUNDANCY 1')
    planned = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    assert planned['removed_backups'] == ['20261120T010000'] and planned['removed_wals'] > 0
    wals_before = sorted(os.listdir(lab.layout.wals_dir))
    monkeypatch.setattr(server_catalog, 'ARCHIVE_PROCESS_WAIT_SECONDS', 0)
    with lockfile.ServerLock(lab.layout, 'archive-process'):  # a background compression runs
        with pytest.raises(lockfile.LockBusy):
            server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    # Nothing removed: not the backup (catalog entry and files), not a WAL.
    assert os.path.exists(lab.layout.backup_info_path('20261120T010000'))
    assert os.path.isdir(lab.layout.backup_dir('20261120T010000'))
    assert sorted(os.listdir(lab.layout.wals_dir)) == wals_before
    result = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert result['removed_backups'] == planned['removed_backups']
    assert result['removed_wals'] == planned['removed_wals']


# -- verification records (meta/<backup_id>-verification.json, written by verify.yml) ------------------

DAY = 24


def verified(lab, backup_id, result='PASSED', hours_ago=1, failures=()):
    """Write a verification record as verify.yml does."""
    record = dict(
        result=result,
        verified_at=verifyfile.format_time(NOW - datetime.timedelta(hours=hours_ago)),
        duration=42.5,
        replay='immediate',
        host='backup2',
        steps=[dict(name='manifest', result=result, detail='1204 files')],
        failures=list(failures),
    )
    verifyfile.write_verification(lab.layout, backup_id, record)


FAILURE = dict(step='amcheck', message='index pgbench_accounts_pkey is corrupt', relation='pgbench_accounts_pkey')


def test_list_and_show_report_each_backups_last_verification_and_the_last_verified_one(lab):
    lab.backup('20261120T010000', 2, hours_ago=50)
    lab.backup('20261121T010000', 4, hours_ago=30)
    lab.backup('20261122T010000', 6, hours_ago=2)
    lab.wals(2, 3, 4, 5, 6)
    verified(lab, '20261120T010000', hours_ago=40)
    verified(lab, '20261121T010000', 'FAILED', hours_ago=20, failures=[FAILURE, dict(step='queries', message='x')])
    server = server_catalog.ServerCatalog(lab.layout)
    summary = server.summary(now=NOW)
    first, second, third = (b['verification'] for b in summary['backups'])
    assert first == dict(
        result='PASSED', verified_at='2026-11-24T20:00:00Z', duration=42.5, failure_count=0, first_failure=None
    )
    assert (second['result'], second['failure_count']) == ('FAILED', 2)
    assert second['first_failure'] == 'amcheck: index pgbench_accounts_pkey is corrupt'
    assert third is None
    assert summary['last_verified'] == dict(backup_id='20261120T010000', verified_at='2026-11-24T20:00:00Z')
    assert summary['latest_verification'] == dict(
        backup_id='20261122T010000', result=None, verified_at=None, first_failure=None
    )
    shown = server.details('20261121T010000')['verification']
    assert shown['failures'][0] == FAILURE and shown['steps'][0]['name'] == 'manifest' and shown['host'] == 'backup2'
    assert summary['malformed'] == []


def test_a_server_never_verified_has_no_last_verified(lab):
    lab.backup('20261120T010000', 2)
    summary = server_catalog.ServerCatalog(lab.layout).summary(now=NOW)
    assert summary['last_verified'] is None and summary['backups'][0]['verification'] is None
    assert summary['latest_verification']['result'] is None
    empty = server_catalog.ServerCatalog(Lab(lab.layout.barman_home, 'pg2').layout).summary(now=NOW)
    assert (empty['last_verified'], empty['latest_verification']) == (None, None)


@pytest.mark.parametrize('text', ['{"result": "MAYBE", "verified_at": "2026-11-25T00:00:00Z"}', 'not json', '[]'])
def test_a_malformed_verification_record_is_reported_not_a_crash_and_stops_retention(lab, text):
    lab.backup('20261120T010000', 2, hours_ago=50)
    lab.backup('20261122T010000', 6, hours_ago=2)
    lab.wals(2, 3, 4, 5, 6)
    path = lab.layout.verification_path('20261120T010000')
    with open(path, 'w') as handle:
        handle.write(text)
    summary = server_catalog.ServerCatalog(lab.layout).summary(now=NOW)
    assert [m['path'] for m in summary['malformed']] == [path]
    assert summary['backups'][0]['verification'] is None
    result = check(lab)
    assert by_name(result)['catalog'] == 'critical' and path in result['nagios']
    before = lab.files()
    with pytest.raises(server_catalog.CatalogRefusal) as caught:
        server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert caught.value.code == 'CATALOG_DAMAGED' and path in str(caught.value)
    assert lab.files() == before


def verification_check(result):
    return next(c for c in result['checks'] if c['name'] == 'verification')


def test_check_is_critical_when_the_newest_backup_failed_its_verification(lab):
    lab.backup('20261120T010000', 2, hours_ago=50)
    lab.backup('20261122T010000', 6, hours_ago=2)
    lab.wals(2, 3, 4, 5, 6)
    verified(lab, '20261120T010000', hours_ago=40)
    verified(lab, '20261122T010000', 'FAILED', hours_ago=1, failures=[FAILURE])
    result = check(lab, verify_max_age=8 * DAY * 3600)
    found = verification_check(result)
    assert found['status'] == 'critical' and result['status'] == 'critical'
    assert '20261122T010000' in found['message'] and 'index pgbench_accounts_pkey is corrupt' in found['message']
    assert 'verification: newest backup 20261122T010000 FAILED' in result['nagios']


def test_an_older_failed_verification_is_no_alarm_once_a_newer_backup_passed(lab):
    lab.backup('20261120T010000', 2, hours_ago=50)
    lab.backup('20261122T010000', 6, hours_ago=2)
    lab.wals(2, 3, 4, 5, 6)
    verified(lab, '20261120T010000', 'FAILED', hours_ago=40, failures=[FAILURE])
    verified(lab, '20261122T010000', hours_ago=1)
    assert verification_check(check(lab, verify_max_age=8 * DAY * 3600))['status'] == 'ok'


@pytest.mark.parametrize(
    'verified_hours_ago, limit_days, expected',
    [(9 * DAY, 8, 'warning'), (7 * DAY, 8, 'ok'), (9 * DAY, None, 'ok')],
)
def test_check_warns_when_the_newest_passed_verification_is_older_than_the_maximum(
    lab, verified_hours_ago, limit_days, expected
):
    lab.backup('20261110T010000', 2, hours_ago=16 * DAY)
    lab.backup('20261122T010000', 6, hours_ago=2)  # newer, not verified yet: not an alarm by itself
    lab.wals(2, 3, 4, 5, 6)
    verified(lab, '20261110T010000', hours_ago=verified_hours_ago)
    result = check(lab, verify_max_age=limit_days * DAY * 3600 if limit_days else None)
    found = verification_check(result)
    assert found['status'] == expected, found
    assert '20261110T010000 PASSED' in found['message']
    if expected == 'warning':
        assert result['status'] == 'warning'
        assert 'verification: backup 20261110T010000 PASSED its verification 9.0 days ago' in result['nagios']
        assert 'more than the maximum of 8.0 days' in result['nagios']


@pytest.mark.parametrize('oldest_hours_ago, expected', [(10 * DAY, 'warning'), (2, 'ok')])
def test_a_server_never_verified_counts_from_its_oldest_backup(lab, oldest_hours_ago, expected):
    lab.backup('20261110T010000', 2, hours_ago=oldest_hours_ago)
    lab.backup('20261126T100000', 6, hours_ago=1)
    lab.backup('20261126T103000', 7, status='FAILED', hours_ago=0.5)  # not DONE: not the oldest backup
    lab.wals(2, 3, 4, 5, 6, 7)
    found = verification_check(check(lab, verify_max_age=8 * DAY * 3600))
    assert found['status'] == expected, found
    assert found['message'].startswith('no backup has PASSED a verification')


def test_no_verification_check_without_a_done_backup(lab):
    lab.backup('20261120T010000', 2, status='FAILED')
    result = check(lab, verify_max_age=3600)
    assert 'verification' not in by_name(result) and by_name(result)['backups'] == 'critical'


def test_retention_keeps_the_last_verified_backup_while_the_newer_ones_are_not_verified(lab):
    lab.backup('20261119T010000', 1, hours_ago=60)
    lab.backup('20261120T010000', 3, hours_ago=50)
    lab.backup('20261121T010000', 5, hours_ago=30)
    lab.backup('20261122T010000', 7, hours_ago=2)
    lab.wals(1, 2, 3, 4, 5, 6, 7, 8)
    verified(lab, '20261119T010000', hours_ago=55)
    verified(lab, '20261120T010000', hours_ago=45)
    verified(lab, '20261122T010000', 'FAILED', hours_ago=1, failures=[FAILURE])
    policy = retention.parse_policy('REDUNDANCY 1')
    listed = server_catalog.ServerCatalog(lab.layout).summary(policy, 1, NOW)
    assert [b['retention_status'] for b in listed['backups']] == ['OBSOLETE', 'LAST_VERIFIED', 'OBSOLETE', 'VALID']
    before = lab.files()
    dry = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    assert lab.files() == before
    result = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert result == dry
    assert result['retention_status']['20261120T010000'] == retention.LAST_VERIFIED
    assert result['removed_backups'] == ['20261119T010000', '20261121T010000']
    # The WAL from the verified backup's begin on stays: it recovers to now, and the archive stays continuous.
    assert result['removed_wal_names'] == [seg(1), seg(2)]
    assert [c for c in check(lab)['checks'] if c['name'] == 'wal_archive'][0]['status'] == 'ok'
    # A removed backup's verification record goes with it.
    assert not os.path.exists(lab.layout.verification_path('20261119T010000'))
    assert os.path.exists(lab.layout.verification_path('20261120T010000'))
    # Once a newer backup passes, the older verified one is an ordinary obsolete backup.
    verified(lab, '20261122T010000', hours_ago=0.5)
    again = server_catalog.apply_retention(lab.layout, policy, 1, NOW)
    assert again['removed_backups'] == ['20261120T010000']
    assert sorted(server_catalog.ServerCatalog(lab.layout).infos) == ['20261122T010000']
    assert sorted(n for n in os.listdir(lab.layout.meta_dir) if n.endswith('.json')) == [
        '20261122T010000-verification.json'
    ]


def test_without_verifications_retention_is_as_before(lab):
    lab.backup('20261120T010000', 3, hours_ago=50)
    lab.backup('20261122T010000', 7, hours_ago=2)
    lab.wals(3, 4, 5, 6, 7)
    result = server_catalog.apply_retention(lab.layout, retention.parse_policy('REDUNDANCY 1'), 1, NOW, dry_run=True)
    assert result['removed_backups'] == ['20261120T010000']


def test_retention_waits_for_what_a_mirror_has_not_copied_yet(lab):
    lab.backup('20261118T010000', 1, hours_ago=100)
    lab.backup('20261119T010000', 3, hours_ago=90)
    lab.backup('20261120T010000', 5, hours_ago=80)
    lab.backup('20261121T010000', 7, hours_ago=2)
    lab.wals(1, 2, 3, 4, 5, 6, 7, 8)
    policy = retention.parse_policy('REDUNDANCY 1')
    # The mirror copied the first backup only (its own retention may have retired older ones): what is newer
    # than its newest copy waits for it, with its WAL; the first one itself is the mirror's already.
    waiting = server_catalog.apply_retention(
        lab.layout, policy, 1, NOW, dry_run=True, mirrored={'backup-dr': ['20261118T010000']}
    )
    assert waiting['removed_backups'] == ['20261118T010000']
    assert waiting['retention_status']['20261119T010000'] == retention.WAITING_FOR_MIRROR
    assert waiting['retention_status']['20261120T010000'] == retention.WAITING_FOR_MIRROR
    assert waiting['last_removed_wal'] == seg(2)
    # A mirror that copied the third (and retired the second) lets both older ones go.
    caught_up = server_catalog.apply_retention(
        lab.layout, policy, 1, NOW, dry_run=True, mirrored={'backup-dr': ['20261120T010000']}
    )
    assert caught_up['removed_backups'] == ['20261118T010000', '20261119T010000', '20261120T010000']
    # A mirror that could not be read (nothing listed) holds nothing back... by holding everything.
    unknown = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True, mirrored={'backup-dr': []})
    assert unknown['removed_backups'] == [] and unknown['removed_wals'] == 0
    # Without mirrors (or barman_mirror_wait false) the policy alone decides.
    alone = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    assert alone['removed_backups'] == ['20261118T010000', '20261119T010000', '20261120T010000']


def test_retention_waiting_for_a_mirror_keeps_the_wal_it_was_not_forwarded(lab):
    lab.backup('20261118T010000', 1, hours_ago=100)
    lab.backup('20261119T010000', 3, hours_ago=90)
    lab.backup('20261120T010000', 5, hours_ago=2)
    lab.wals(1, 2, 3, 4, 5, 6)
    policy = retention.parse_policy('REDUNDANCY 1')
    mirrors = os.path.join(lab.layout.root, 'mirrors')
    os.makedirs(mirrors)
    with open(os.path.join(mirrors, 'backup-dr.json'), 'w') as handle:
        handle.write('{}')
    copied = {'backup-dr': ['20261120T010000']}  # it holds the newest backup...
    # ...but its WAL stopped at segment 1 (a refused file, a one-way firewall): 2 on stay for it.
    with open(os.path.join(mirrors, 'backup-dr.forwarded'), 'w') as handle:
        json.dump(dict(last=seg(1), acknowledged=[seg(1)]), handle)
    waiting = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True, mirrored=copied)
    assert waiting['removed_backups'] == ['20261118T010000', '20261119T010000']
    assert (waiting['removed_wals'], waiting['last_removed_wal']) == (1, seg(1))
    with open(os.path.join(mirrors, 'backup-dr.forwarded'), 'w') as handle:
        json.dump(dict(last=seg(6), acknowledged=[seg(n) for n in range(1, 7)]), handle)
    caught_up = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True, mirrored=copied)
    assert caught_up['last_removed_wal'] == seg(4)
    # Not waiting for mirrors (barman_mirror_wait false): the forwarding state does not count.
    os.unlink(os.path.join(mirrors, 'backup-dr.forwarded'))
    alone = server_catalog.apply_retention(lab.layout, policy, 1, NOW, dry_run=True)
    assert alone['last_removed_wal'] == seg(4)


@pytest.mark.parametrize(
    'behind_seconds, status',
    [(0, 'ok'), (299, 'ok'), (300, 'warning'), (3599, 'warning'), (3600, 'critical')],
)
def test_a_mirrors_lag_turns_its_health_warning_then_critical(lab, monkeypatch, behind_seconds, status):
    lab.backup('20261121T010000', 2, hours_ago=2)
    lab.wals(1, 2, 3)
    catalog.atomic_write(os.path.join(lab.layout.root, mirror.MARKER), json.dumps(dict(mirror_of='backup1')))
    lag = dict(mirror_of='backup1', newest=seg(3), primary_newest=seg(9), behind_segments=6, behind_seconds=None)
    lag['behind_seconds'] = behind_seconds
    # What the primary's catalog reader would answer (over SSH): the input of the threshold rule under test.
    monkeypatch.setattr(mirror, 'lag', lambda layout, now=None: lag)
    result = check(lab, mirror_lag_warning=300, mirror_lag_critical=3600)
    checked = dict((c['name'], c) for c in result['checks'])['mirror']
    assert checked['status'] == status and result['mirror'] == lag
    assert 'WAL 6 segment(s)' in checked['message'] and 'behind backup1' in checked['message']


def test_a_mirror_whose_primary_cannot_be_read_warns_and_says_why(lab, monkeypatch):
    catalog.atomic_write(os.path.join(lab.layout.root, mirror.MARKER), json.dumps(dict(mirror_of='backup1')))

    def unreachable(layout, now=None):
        raise remote.CommandFailed('cannot reach barman@127.0.0.21 over SSH: Connection refused', code='SSH_FAILED')

    monkeypatch.setattr(mirror, 'lag', unreachable)
    checked = dict((c['name'], c) for c in check(lab)['checks'])['mirror']
    assert checked['status'] == 'warning' and 'cannot be read' in checked['message'], checked
