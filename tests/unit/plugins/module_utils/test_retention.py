# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

import datetime

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import retention, wal

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SEG = wal.DEFAULT_SEGMENT_SIZE


def seg(n, tli=1):
    return wal.segment_name(tli, n, SEG)


def info(status='DONE', days_ago=0, begin=1, end=None, tli=1):
    return dict(
        status=status,
        end_time=NOW - datetime.timedelta(days=days_ago) if status == 'DONE' else None,
        begin_wal=seg(begin, tli) if begin is not None else None,
        end_wal=seg(end if end is not None else begin, tli) if begin is not None else None,
    )


def backups(*days_and_begins, **statuses):
    """Backups ids 20261101T000000, ...02, ... in order, each (days_ago, begin segment)."""
    result = {}
    for number, (days_ago, begin) in enumerate(days_and_begins, 1):
        backup_id = '202611%02dT000000' % number
        result[backup_id] = info(statuses.get('b%d' % number, 'DONE'), days_ago, begin)
    return result


@pytest.mark.parametrize(
    'text, expected',
    [
        ('REDUNDANCY 3', ('redundancy', 3, None)),
        ('  redundancy 1 ', ('redundancy', 1, None)),
        ('RECOVERY WINDOW OF 7 DAYS', ('window', 7, 'DAYS')),
        ('recovery window of 2 week', ('window', 2, 'WEEKS')),
        ('RECOVERY WINDOW OF 1 MONTHS', ('window', 1, 'MONTHS')),
    ],
)
def test_parse_policy(text, expected):
    policy = retention.parse_policy(text)
    assert tuple(policy) == expected
    assert retention.parse_policy(retention.format_policy(policy)) == policy


@pytest.mark.parametrize(
    'text',
    [
        '',
        'REDUNDANCY',
        'REDUNDANCY 0',
        'REDUNDANCY -1',
        'REDUNDANCY 2 DAYS',
        'RECOVERY WINDOW 7 DAYS',
        'RECOVERY WINDOW OF 0 DAYS',
        'RECOVERY WINDOW OF 7 YEARS',
        'KEEP 3',
        None,
        3,
    ],
)
def test_parse_policy_refuses_with_a_hint(text):
    with pytest.raises(retention.InvalidPolicy) as caught:
        retention.parse_policy(text)
    assert 'REDUNDANCY' in str(caught.value)


@pytest.mark.parametrize(
    'text, seconds',
    [
        ('26 HOURS', 26 * 3600),
        ('1 day', 86400),
        ('2 WEEKS', 14 * 86400),
        ('30 minutes', 1800),
        ('1 MONTHS', 31 * 86400),
    ],
)
def test_parse_period(text, seconds):
    assert retention.parse_period(text) == seconds


@pytest.mark.parametrize('text', ['', 'HOURS', '1 YEAR', '-1 DAYS', None, '1.5 DAYS'])
def test_parse_period_refuses(text):
    with pytest.raises(retention.InvalidPolicy):
        retention.parse_period(text)


@pytest.mark.parametrize('value', [-1, True, '1', None, 1.0])
def test_minimum_redundancy_must_be_a_count(value):
    with pytest.raises(retention.InvalidPolicy):
        retention.validate_minimum_redundancy(value)


def test_redundancy_keeps_the_newest_n_done_backups():
    infos = backups((5, 1), (4, 3), (3, 5), (2, 7), (1, 9), b3='FAILED')
    statuses = retention.classify(infos, {}, retention.parse_policy('REDUNDANCY 2'), 0, NOW)
    assert statuses == {
        '20261101T000000': 'OBSOLETE',
        '20261102T000000': 'OBSOLETE',
        '20261103T000000': 'NONE',
        '20261104T000000': 'VALID',
        '20261105T000000': 'VALID',
    }


def test_minimum_redundancy_raises_redundancy_and_kept_backups_are_never_obsolete():
    infos = backups((5, 1), (4, 3), (3, 5), (2, 7))
    statuses = retention.classify(
        infos, {'20261101T000000': 'standalone'}, retention.parse_policy('REDUNDANCY 1'), 2, NOW
    )
    assert statuses == {
        '20261101T000000': 'KEEP_STANDALONE',
        '20261102T000000': 'OBSOLETE',
        '20261103T000000': 'VALID',
        '20261104T000000': 'VALID',
    }


def test_recovery_window_keeps_the_backup_that_recovers_to_its_start():
    # Window of 7 days: 10 and 8 days old ones are outside, but the 8-day one recovers to day -7.
    infos = backups((20, 1), (10, 3), (8, 5), (6, 7), (1, 9))
    statuses = retention.classify(infos, {}, retention.parse_policy('RECOVERY WINDOW OF 7 DAYS'), 0, NOW)
    assert statuses == {
        '20261101T000000': 'OBSOLETE',
        '20261102T000000': 'OBSOLETE',
        '20261103T000000': 'VALID',
        '20261104T000000': 'VALID',
        '20261105T000000': 'VALID',
    }


def test_recovery_window_honours_minimum_redundancy_and_keeps():
    infos = backups((30, 1), (20, 3), (10, 5), (9, 7))
    statuses = retention.classify(
        infos, {'20261101T000000': 'full'}, retention.parse_policy('RECOVERY WINDOW OF 1 DAYS'), 3, NOW
    )
    assert statuses == {
        '20261101T000000': 'KEEP_FULL',
        '20261102T000000': 'POTENTIALLY_OBSOLETE',
        '20261103T000000': 'POTENTIALLY_OBSOLETE',
        '20261104T000000': 'VALID',
    }


def test_the_newest_done_backup_always_stays_even_with_minimum_zero():
    infos = backups((400, 1))
    for policy in ('REDUNDANCY 1', 'RECOVERY WINDOW OF 1 DAYS'):
        assert retention.classify(infos, {}, retention.parse_policy(policy), 0, NOW) == {'20261101T000000': 'VALID'}


def test_obsolete_failures_are_the_failed_backups_older_than_the_oldest_kept_one():
    infos = backups((5, 1), (4, 3), (3, 5), (2, 7), (1, 9), b1='FAILED', b3='FAILED', b5='FAILED')
    statuses = retention.classify(infos, {}, retention.parse_policy('REDUNDANCY 1'), 0, NOW)
    assert statuses['20261102T000000'] == 'OBSOLETE' and statuses['20261104T000000'] == 'VALID'
    assert retention.obsolete_failures(infos, statuses) == ['20261101T000000', '20261103T000000']
    statuses = retention.classify(infos, {}, retention.parse_policy('REDUNDANCY 2'), 0, NOW)
    assert retention.obsolete_failures(infos, statuses) == ['20261101T000000']
    only_failed = backups((1, 1), b1='FAILED')
    assert retention.obsolete_failures(only_failed, {'20261101T000000': 'NONE'}) == []


def names(*numbers, **kw):
    return [seg(n, kw.get('tli', 1)) for n in numbers]


def test_removable_wals_are_those_before_the_oldest_remaining_backup():
    infos = backups((3, 3), (2, 6))
    archived = names(1, 2, 3, 4, 5, 6, 7) + ['00000001.history', seg(2) + '.00000028.backup']
    statuses = {'20261101T000000': 'OBSOLETE', '20261102T000000': 'VALID'}
    removable = retention.removable_wals(archived, infos, statuses, SEG)
    assert removable == names(1, 2, 3, 4, 5) + [seg(2) + '.00000028.backup']


def test_history_files_and_other_timelines_after_the_start_stay():
    infos = backups((2, 6))
    archived = names(1, 7, tli=1) + names(5, 6, 7, tli=2) + ['00000002.history']
    removable = retention.removable_wals(archived, infos, {'20261101T000000': 'VALID'}, SEG)
    assert removable == [seg(1), seg(5, 2)]


def test_standalone_keeps_only_its_own_range():
    infos = backups((5, 2), (1, 8))
    infos['20261101T000000']['end_wal'] = seg(3)
    statuses = {'20261101T000000': 'KEEP_STANDALONE', '20261102T000000': 'VALID'}
    removable = retention.removable_wals(names(*range(1, 10)), infos, statuses, SEG)
    assert removable == names(1, 4, 5, 6, 7)


def test_full_keep_keeps_everything_after_it():
    infos = backups((5, 2), (1, 8))
    statuses = {'20261101T000000': 'KEEP_FULL', '20261102T000000': 'VALID'}
    assert retention.removable_wals(names(*range(1, 10)), infos, statuses, SEG) == names(1)


def test_a_backup_in_progress_keeps_its_wal_and_no_done_backup_removes_nothing():
    infos = backups((5, 2), (0, 6), b2='STARTED')
    assert retention.removable_wals(names(*range(1, 8)), infos, {'20261101T000000': 'VALID'}, SEG) == names(1)
    only_failed = backups((5, 2), b1='FAILED')
    assert retention.removable_wals(names(*range(1, 8)), only_failed, {'20261101T000000': 'NONE'}, SEG) == []


def test_a_backup_without_begin_wal_keeps_everything():
    infos = backups((5, 2), (1, None))
    infos['20261102T000000']['begin_wal'] = None
    statuses = {'20261101T000000': 'VALID', '20261102T000000': 'VALID'}
    assert retention.removable_wals(names(1, 2), infos, statuses, SEG) == []


def test_a_held_backup_is_held_not_obsolete_and_changes_no_other_status():
    infos = backups((5, 1), (4, 3), (3, 5), (2, 7))
    policy = retention.parse_policy('REDUNDANCY 1')
    plain = retention.classify(infos, {}, policy, 0, NOW)
    held = retention.classify(infos, {}, policy, 0, NOW, held=['20261101T000000', '20261104T000000'])
    assert held == dict(plain, **{'20261101T000000': 'HELD'})
    assert plain['20261101T000000'] == 'OBSOLETE' and held['20261104T000000'] == 'VALID'
    kept = retention.classify(infos, {'20261101T000000': 'standalone'}, policy, 0, NOW, held=['20261101T000000'])
    assert kept['20261101T000000'] == 'KEEP_STANDALONE'


def test_wal_from_a_held_begin_wal_on_is_needed_even_of_a_backup_gone_or_kept_standalone():
    infos = backups((5, 2), (1, 8))
    infos['20261101T000000']['end_wal'] = seg(3)
    statuses = {'20261101T000000': 'KEEP_STANDALONE', '20261102T000000': 'VALID'}
    archived = names(*range(1, 10))
    assert retention.removable_wals(archived, infos, statuses, SEG, needed_from=[seg(2)]) == names(1)
    gone = {'20261102T000000': infos['20261102T000000']}
    assert retention.removable_wals(archived, gone, {'20261102T000000': 'VALID'}, SEG, needed_from=[seg(5)]) == (
        names(1, 2, 3, 4)
    )


def test_the_last_verified_backup_is_kept_instead_of_obsolete_and_changes_no_other_status():
    infos = backups((5, 1), (4, 3), (3, 5), (2, 7))
    policy = retention.parse_policy('REDUNDANCY 1')
    plain = retention.classify(infos, {}, policy, 0, NOW)
    kept = retention.classify(infos, {}, policy, 0, NOW, last_verified='20261102T000000')
    assert kept == dict(plain, **{'20261102T000000': 'LAST_VERIFIED'})
    # The newest one, or one a policy keeps anyway, needs nothing more.
    assert retention.classify(infos, {}, policy, 0, NOW, last_verified='20261104T000000') == plain
    window = retention.parse_policy('RECOVERY WINDOW OF 1 DAYS')
    assert retention.classify(infos, {}, window, 0, NOW, last_verified='20261101T000000')['20261101T000000'] == (
        'LAST_VERIFIED'
    )
    # A hold says more (a recovery reads it now); a keep annotation is the user's word.
    both = retention.classify(infos, {}, policy, 0, NOW, held=['20261102T000000'], last_verified='20261102T000000')
    assert both['20261102T000000'] == 'HELD'
    annotated = retention.classify(infos, {'20261102T000000': 'full'}, policy, 0, NOW, last_verified='20261102T000000')
    assert annotated['20261102T000000'] == 'KEEP_FULL'


def test_the_last_verified_backup_keeps_its_wal_and_older_failures_go():
    infos = backups((5, 1), (4, 3), (3, 5), (2, 7), b1='FAILED', b3='FAILED')
    statuses = retention.classify(
        infos, {}, retention.parse_policy('REDUNDANCY 1'), 0, NOW, last_verified='20261102T000000'
    )
    assert statuses['20261102T000000'] == 'LAST_VERIFIED'
    assert retention.obsolete_failures(infos, statuses) == ['20261101T000000']
    # It keeps the WAL from its begin on: a start for point-in-time recovery, as the archive's health expects.
    assert retention.removable_wals(names(*range(1, 9)), infos, statuses, SEG) == names(1, 2)
