# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup_catalog's actions, as the module runs them, on catalogs built in a temporary directory."""

import datetime
import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    catalog_actions,
    infofile,
    manifest,
    recovery_hold,
    retention,
    verifyfile,
    wal,
    xlogdb,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
SEG = wal.DEFAULT_SEGMENT_SIZE
FIRST, SECOND, THIRD = '20261120T010000', '20261121T010000', '20261122T010000'


def seg(n):
    return wal.segment_name(1, n, SEG)


def add_backup(layout, backup_id, begin, hours_ago, status='DONE'):
    end_time = NOW - datetime.timedelta(hours=hours_ago)
    info = dict(
        status=status,
        begin_wal=seg(begin),
        end_wal=seg(begin),
        begin_time=end_time - datetime.timedelta(minutes=5),
        end_time=end_time,
        size=1000,
        deduplicated_size=100,
        timeline=1,
        xlog_segment_size=SEG,
    )
    infofile.write_backup_info(layout.backup_info_path(backup_id), info)
    os.makedirs(layout.backup_data_dir(backup_id))
    with open(os.path.join(layout.backup_data_dir(backup_id), 'PG_VERSION'), 'w') as handle:
        handle.write('15\n')


def add_wals(layout, *numbers):
    for n in numbers:
        path = layout.wal_path(seg(n))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as handle:
            handle.write(b'x' * 10)
    mtime = (NOW - datetime.timedelta(minutes=10)).timestamp()
    xlogdb.append_xlog_db(layout.xlog_db, [(seg(n), 10, mtime, 'gzip') for n in numbers])


def make_server(home, server='pg1'):
    """Three backups (the middle one FAILED) and the WAL from the first on."""
    layout = catalog.ServerLayout(str(home), server)
    catalog.ensure_directories(layout)
    add_backup(layout, FIRST, 2, hours_ago=30)
    add_backup(layout, SECOND, 4, hours_ago=20, status='FAILED')
    add_backup(layout, THIRD, 6, hours_ago=2)
    add_wals(layout, 2, 3, 4, 5, 6, 7)
    return layout


def files(home, server='pg1'):
    """The server's files (the lock files Barman leaves beside the servers are no change to the catalog)."""
    root = os.path.join(str(home), server)
    found = []
    for directory, _dirs, names in os.walk(root):
        found += [os.path.relpath(os.path.join(directory, n), root) for n in names]
    return sorted(found)


def params(home, **given):
    """The parameters AnsibleModule hands the module: the spec's defaults, then what the task gives."""
    spec = catalog_actions.module_spec()['argument_spec']
    values = dict((name, option.get('default')) for name, option in spec.items())
    values.update(barman_home=str(home), **given)
    return values


def run(home, check_mode=False, **given):
    return catalog_actions.run_action(params(home, **given), check_mode=check_mode, now=NOW)


@pytest.fixture
def home(tmp_path):
    make_server(tmp_path)
    return tmp_path


def test_list_covers_every_server_without_one_named(home):
    make_server(home, 'pg2')
    result = run(home)
    assert result['changed'] is False
    assert [s['server'] for s in result['servers']] == ['pg1', 'pg2']
    backups = result['servers'][0]['backups']
    assert [(b['backup_id'], b['status']) for b in backups] == [(FIRST, 'DONE'), (SECOND, 'FAILED'), (THIRD, 'DONE')]
    assert 'diff' not in result


def test_list_of_one_server_with_the_retention_status_of_each_backup(home):
    make_server(home, 'pg2')
    result = run(home, server='pg2', retention_policy='REDUNDANCY 1')
    assert [s['server'] for s in result['servers']] == ['pg2']
    statuses = [b['retention_status'] for b in result['servers'][0]['backups'] if b['status'] == 'DONE']
    assert statuses == [retention.OBSOLETE, retention.VALID]


@pytest.mark.parametrize('shortcut, expected', [('latest', THIRD), ('oldest', FIRST), ('last-failed', SECOND)])
def test_show_resolves_a_shortcut(home, shortcut, expected):
    result = run(home, server='pg1', action='show', backup_id=shortcut)
    assert result['changed'] is False
    assert result['backup_id'] == expected
    assert result['backup']['backup_id'] == expected
    assert result['backup']['begin_wal'] == {FIRST: seg(2), SECOND: seg(4), THIRD: seg(6)}[expected]


def test_keep_then_release_report_the_annotation_before_and_after(home):
    kept = run(home, server='pg1', action='keep', backup_id='oldest', target='standalone')
    assert kept['changed'] is True and (kept['backup_id'], kept['keep']) == (FIRST, 'standalone')
    assert kept['diff'] == dict(before='%s keep=None\n' % FIRST, after='%s keep=standalone\n' % FIRST)
    again = run(home, server='pg1', action='keep', backup_id=FIRST, target='standalone')
    assert again['changed'] is False and again['diff']['before'] == again['diff']['after']
    released = run(home, server='pg1', action='release', backup_id=FIRST)
    assert released['changed'] is True and released['keep'] is None
    assert released['diff'] == dict(before='%s keep=standalone\n' % FIRST, after='%s keep=None\n' % FIRST)


def test_keep_in_check_mode_predicts_the_change_and_writes_nothing(home):
    before = files(home)
    result = run(home, check_mode=True, server='pg1', action='keep', backup_id='latest')
    assert result['changed'] is True
    assert result['diff'] == dict(before='%s keep=None\n' % THIRD, after='%s keep=full\n' % THIRD)
    assert files(home) == before


def test_delete_in_check_mode_returns_the_plan_and_changes_nothing_on_disk(home):
    before = files(home)
    dry = run(home, check_mode=True, server='pg1', action='delete', backup_id='oldest')
    assert files(home) == before
    assert dry['changed'] is True and dry['removed_backups'] == [FIRST]
    assert dry['removed_wal_names'] == [seg(2), seg(3), seg(4), seg(5)]
    assert dry['diff'] == dict(before='\n'.join([FIRST, SECOND, THIRD]) + '\n', after='\n'.join([SECOND, THIRD]) + '\n')
    done = run(home, server='pg1', action='delete', backup_id='oldest')
    assert (done['removed_backups'], done['removed_wal_names'], done['diff']) == (
        dry['removed_backups'],
        dry['removed_wal_names'],
        dry['diff'],
    )
    assert not os.path.exists(os.path.join(str(home), 'pg1', 'meta', FIRST + '-backup.info'))


def test_retention_diff_lists_the_backups_before_and_after(home):
    dry = run(home, check_mode=True, server='pg1', action='retention', retention_policy='REDUNDANCY 1')
    # The oldest DONE backup is obsolete, and the FAILED one older than the oldest kept goes with it.
    assert dry['removed_backups'] == [FIRST, SECOND] and dry['changed'] is True
    assert dry['diff'] == dict(before='\n'.join([FIRST, SECOND, THIRD]) + '\n', after=THIRD + '\n')
    done = run(home, server='pg1', action='retention', retention_policy='REDUNDANCY 1')
    assert done['diff'] == dry['diff'] and done['removed_wal_names'] == dry['removed_wal_names']
    nothing = run(home, server='pg1', action='retention', retention_policy='REDUNDANCY 1')
    assert nothing['changed'] is False and nothing['diff'] == dict(before=THIRD + '\n', after=THIRD + '\n')


def test_retention_without_a_policy_is_refused_before_reading_anything(home):
    before = files(home)
    with pytest.raises(retention.InvalidPolicy, match='needs retention_policy'):
        run(home, server='pg1', action='retention')
    assert files(home) == before


def test_release_hold_diff_shows_the_hold_going(home):
    layout = catalog.ServerLayout(str(home), 'pg1')
    token = recovery_hold.take(layout, FIRST, seg(2), 'pg1:/srv/copy', now=NOW)
    dry = run(home, check_mode=True, server='pg1', action='release-hold', hold=token)
    assert (dry['changed'], dry['released']) == (True, True)
    assert dry['diff'] == dict(before='hold %s\n' % token, after='')
    assert os.path.exists(recovery_hold.hold_path(layout, token))
    assert run(home, server='pg1', action='release-hold', hold=token)['changed'] is True
    gone = run(home, server='pg1', action='release-hold', hold=token)
    assert (gone['changed'], gone['released'], gone['diff']) == (False, False, dict(before='', after=''))


def test_check_sums_up_every_server(home):
    make_server(home, 'pg2')
    result = run(
        home, action='check', disk_warning_percent=0, disk_critical_percent=0, last_backup_maximum_age='1 HOURS'
    )
    assert result['changed'] is False
    assert [s['server'] for s in result['servers']] == ['pg1', 'pg2']
    assert result['status'] == 'critical'  # the newest backups ended two hours ago
    assert len(result['nagios'].splitlines()) == 2


def test_an_unknown_action_is_a_programming_error(home):
    with pytest.raises(ValueError, match='unknown'):
        run(home, server='pg1', action='prune')


def verification_status(result):
    return dict((c['name'], c['status']) for c in result['servers'][0]['checks'])['verification']


def test_check_warns_about_verification_after_verify_max_age_and_an_empty_one_skips_the_age(home):
    quiet = dict(action='check', server='pg1', disk_warning_percent=0, disk_critical_percent=0)
    # The default is 8 DAYS: the oldest backup ended 30 hours ago, time enough for a first verification.
    assert catalog_actions.module_spec()['argument_spec']['verify_max_age']['default'] == '8 DAYS'
    assert verification_status(run(home, **quiet)) == 'ok'
    late = run(home, verify_max_age='1 days', **quiet)
    assert verification_status(late) == 'warning' and 'verification: no backup has PASSED' in late['nagios']
    assert verification_status(run(home, verify_max_age='', **quiet)) == 'ok'
    with pytest.raises(retention.InvalidPolicy, match='soon'):
        run(home, verify_max_age='soon', **quiet)


def test_list_and_show_carry_the_verification(home):
    layout = catalog.ServerLayout(str(home), 'pg1')
    record = dict(result='PASSED', verified_at='2026-11-26T11:00:00Z', duration=3, steps=[], failures=[])
    verifyfile.write_verification(layout, THIRD, record)
    (server,) = run(home, server='pg1')['servers']
    assert server['last_verified'] == dict(backup_id=THIRD, verified_at='2026-11-26T11:00:00Z')
    assert [b['verification'] and b['verification']['result'] for b in server['backups']] == [None, None, 'PASSED']
    shown = run(home, server='pg1', action='show', backup_id='latest')['backup']
    assert shown['verification']['result'] == 'PASSED' and shown['verification']['steps'] == []


def test_manifest_writes_one_for_each_done_backup_without_one_and_is_idempotent(home):
    layout = catalog.ServerLayout(str(home), 'pg1')
    for backup_id in (FIRST, SECOND, THIRD):
        info = infofile.read_backup_info(layout.backup_info_path(backup_id))
        info.update(version=150004, systemid='7300000000000000001', begin_xlog='0/2000028', end_xlog='0/2000100')
        infofile.write_backup_info(layout.backup_info_path(backup_id), info)
    planned = run(home, check_mode=True, action='manifest', server='pg1')
    assert planned['manifests_written'] == [FIRST, THIRD] and planned['changed']
    assert not os.path.exists(layout.manifest_path(FIRST))
    done = run(home, action='manifest', server='pg1')
    assert done['manifests_written'] == [FIRST, THIRD]
    assert done['diff'] == dict(before='%s no backup_manifest\n%s no backup_manifest\n' % (FIRST, THIRD), after='')
    assert manifest.check_files(layout, THIRD, []) == []
    assert [f['path'] for f in manifest.read(layout.manifest_path(THIRD))['files']] == ['PG_VERSION']
    again = run(home, action='manifest', server='pg1')
    assert (again['changed'], again['manifests_written']) == (False, [])
    with pytest.raises(BarmanError) as refused:
        run(home, action='manifest', server='pg1', backup_id=SECOND)
    assert refused.value.code == 'BACKUP_NOT_DONE'
