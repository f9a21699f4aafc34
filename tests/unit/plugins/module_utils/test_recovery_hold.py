# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery holds on a catalog built in a temporary directory (real files and locks)."""

import datetime
import json
import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, lockfile, recovery_hold, wal

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SEG = wal.DEFAULT_SEGMENT_SIZE
BACKUP = '20261120T010000'
BEGIN = wal.segment_name(1, 2, SEG)


@pytest.fixture
def layout(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg1')
    catalog.ensure_directories(layout)
    infofile.write_backup_info(
        layout.backup_info_path(BACKUP), dict(status='DONE', begin_wal=BEGIN, end_wal=BEGIN, xlog_segment_size=SEG)
    )
    return layout


def test_take_writes_a_private_json_hold_that_active_lists_until_released(layout):
    token = recovery_hold.take(layout, BACKUP, BEGIN, 'pg9:/srv/copy', 3600, now=NOW)
    assert token.startswith(BACKUP + '-')
    path = recovery_hold.hold_path(layout, token)
    assert path == os.path.join(layout.root, 'recovery-holds', token + '.json')
    assert oct(os.stat(path).st_mode & 0o777) == '0o600'
    assert oct(os.stat(os.path.dirname(path)).st_mode & 0o777) == '0o700'
    with open(path) as handle:
        written = json.load(handle)
    assert written == dict(
        token=token,
        server='pg1',
        backup_id=BACKUP,
        begin_wal=BEGIN,
        destination='pg9:/srv/copy',
        started='2026-11-26T12:00:00+00:00',
        expires='2026-11-26T13:00:00+00:00',
    )
    assert [h['token'] for h in recovery_hold.active(layout, NOW)] == [token]
    assert recovery_hold.release(layout, token)
    assert not os.path.exists(path) and recovery_hold.active(layout, NOW) == []
    assert not recovery_hold.release(layout, token)


def test_two_recoveries_of_one_backup_take_two_holds(layout):
    first = recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', now=NOW)
    second = recovery_hold.take(layout, BACKUP, BEGIN, 'pg2:/b', now=NOW)
    assert first != second
    recovery_hold.release(layout, first)
    assert [h['destination'] for h in recovery_hold.active(layout, NOW)] == ['pg2:/b']


def test_a_hold_expires_after_its_time_to_live(layout):
    token = recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', 60, now=NOW)
    assert recovery_hold.active(layout, NOW + datetime.timedelta(seconds=59))
    later = NOW + datetime.timedelta(seconds=60)
    survey = recovery_hold.survey(layout, later)
    assert survey['active'] == [] and [h['token'] for h in survey['stale']] == [token]


@pytest.mark.parametrize(
    'backup_id, begin_wal, status, message',
    [
        ('20261121T010000', BEGIN, 'DONE', 'no longer in the catalog'),
        (BACKUP, BEGIN, 'FAILED', 'is FAILED'),
        (BACKUP, wal.segment_name(1, 3, SEG), 'DONE', 'not a DONE backup beginning at'),
    ],
)
def test_take_refuses_a_backup_that_is_not_there_to_hold(layout, backup_id, begin_wal, status, message):
    if status != 'DONE':
        infofile.write_backup_info(layout.backup_info_path(BACKUP), dict(status=status, begin_wal=BEGIN))
    with pytest.raises(recovery_hold.HoldError, match=message) as caught:
        recovery_hold.take(layout, backup_id, begin_wal, 'pg1:/a', now=NOW)
    assert caught.value.hint
    assert not os.path.exists(recovery_hold.holds_dir(layout))


@pytest.mark.parametrize('ttl', [0, -5, 1.5, True, '60'])
def test_take_refuses_a_time_to_live_that_is_not_seconds(layout, ttl):
    with pytest.raises(recovery_hold.HoldError, match='not a duration'):
        recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', ttl)


@pytest.mark.parametrize('token', ['', '../20261120T010000-0123456789abcdef', 'x', '20261120T010000-XYZ', None])
def test_a_token_that_could_name_another_file_is_refused(layout, token):
    with pytest.raises(recovery_hold.HoldError, match='not one pg_recover gives'):
        recovery_hold.release(layout, token)


def test_take_waits_for_a_change_in_progress_not_for_a_backup(layout):
    with lockfile.ServerLock(layout, 'backup'):  # a backup running for an hour does not delay a recovery
        assert recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', now=NOW)
    with lockfile.ServerLock(layout, recovery_hold.LOCK):  # retention or delete planning and removing
        with pytest.raises(lockfile.LockBusy, match='recovery-hold'):
            recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', now=NOW, wait_seconds=0)


def test_unreadable_holds_are_reported_never_skipped(layout):
    token = recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', now=NOW)
    directory = recovery_hold.holds_dir(layout)
    broken = os.path.join(directory, '20261120T010000-0000000000000000.json')
    with open(broken, 'w') as handle:
        handle.write('{"backup_id": "20261120T010000", "begin_wal": "nonsense"}')
    with open(os.path.join(directory, 'stray.json'), 'w') as handle:
        handle.write('{}')
    with open(os.path.join(directory, '.leftover.json.tmp'), 'w') as handle:
        handle.write('')  # a temporary file of an interrupted atomic write
    holds, damaged = recovery_hold.read_all(layout)
    assert [h['token'] for h in holds] == [token]
    assert sorted(d['path'] for d in damaged) == sorted([broken, os.path.join(directory, 'stray.json')])


def test_a_hold_can_be_taken_under_a_token_made_before_it(layout):
    token = recovery_hold.new_token(BACKUP)
    assert recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', now=NOW, token=token) == token
    assert os.path.exists(recovery_hold.hold_path(layout, token))
    with pytest.raises(recovery_hold.HoldError, match='not one of backup'):
        recovery_hold.take(layout, BACKUP, BEGIN, 'pg1:/a', now=NOW, token=recovery_hold.new_token('20261121T010000'))
