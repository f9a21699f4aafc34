# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Chains of block-level incremental backups: ancestry, retention, delete, the choice of a parent, and
pg_basebackup's command line (real catalog files in a temporary directory, no PostgreSQL)."""

import datetime
import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    chain,
    infofile,
    recovery,
    retention,
    server_catalog,
    stream_backup,
    wal,
)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SEG = wal.DEFAULT_SEGMENT_SIZE
FULL, INC1, INC2 = '20261127T000000', '20261128T000000', '20261129T000000'


def backup(layout, backup_id, begin, parent=None, status='DONE', days_ago=0, mode='postgres', manifest=True):
    end_time = NOW - datetime.timedelta(days=days_ago)
    info = dict(
        status=status,
        mode=mode,
        version=180006,
        begin_wal=wal.segment_name(1, begin, SEG),
        end_wal=wal.segment_name(1, begin, SEG),
        begin_time=end_time - datetime.timedelta(minutes=5),
        end_time=end_time,
        size=1000,
        deduplicated_size=100 if parent else 1000,
        timeline=1,
        xlog_segment_size=SEG,
        parent_backup_id=parent,
    )
    infofile.write_backup_info(layout.backup_info_path(backup_id), info)
    os.makedirs(layout.backup_data_dir(backup_id))
    if manifest:
        with open(layout.manifest_path(backup_id), 'w') as handle:
            handle.write('{}')


@pytest.fixture
def layout(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg3')
    catalog.ensure_directories(layout)
    backup(layout, FULL, 2, days_ago=3)
    backup(layout, INC1, 4, parent=FULL, days_ago=2)
    backup(layout, INC2, 6, parent=INC1, days_ago=1)
    return layout


def test_ancestry_lists_the_chain_oldest_first(layout):
    infos = infofile.backup_infos(layout)
    assert chain.ancestry(infos, INC2) == [FULL, INC1, INC2]
    assert chain.ancestry(infos, FULL) == [FULL]
    assert chain.descendants(infos, FULL) == [INC1, INC2]
    assert chain.children(infos, INC1) == [INC2]


def test_a_chain_with_a_parent_missing_or_failed_is_refused(layout):
    infos = infofile.backup_infos(layout)
    infos[INC1]['status'] = 'FAILED'
    with pytest.raises(chain.ChainError) as refused:
        chain.ancestry(infos, INC2)
    assert refused.value.code == 'BROKEN_CHAIN' and 'parent %s is FAILED' % INC1 in str(refused.value)
    del infos[INC1]
    with pytest.raises(chain.ChainError, match='not in the catalog'):
        chain.ancestry(infos, INC2)


def test_retention_counts_full_backups_and_incrementals_take_their_full_backups_status(layout):
    backup(layout, '20261130T000000', 8)
    server = server_catalog.ServerCatalog(layout)
    statuses = server.statuses(retention.parse_policy('REDUNDANCY 2'), 1, NOW)
    assert set(statuses.values()) == {retention.VALID}  # two full backups: the older one's chain with it
    statuses = server.statuses(retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert [statuses[b] for b in (FULL, INC1, INC2)] == [retention.OBSOLETE] * 3


def test_the_ancestors_of_a_kept_incremental_stay_with_their_wal(layout):
    backup(layout, '20261130T000000', 8)
    server = server_catalog.ServerCatalog(layout)
    server.keep(INC1, 'full')
    server = server_catalog.ServerCatalog(layout)
    statuses = server.statuses(retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert statuses == {
        FULL: retention.NEEDED_BY_CHILD,
        INC1: retention.KEEP_FULL,
        INC2: retention.OBSOLETE,
        '20261130T000000': retention.VALID,
    }
    names = [wal.segment_name(1, n, SEG) for n in range(1, 9)]
    # The archive stays continuous from the oldest backup left (its health and window start there).
    assert retention.removable_wals(names, server.infos, statuses, SEG) == names[:1]


def test_retention_lets_a_whole_chain_go_once_a_newer_full_is_kept(layout):
    backup(layout, '20261130T000000', 8)
    server = server_catalog.ServerCatalog(layout)
    _statuses, plan = server_catalog.plan_retention(server, retention.parse_policy('REDUNDANCY 1'), 1, NOW)
    assert plan.backups == [FULL, INC1, INC2]


def test_delete_of_a_parent_is_refused_unless_forced_then_takes_its_descendants(layout):
    with pytest.raises(server_catalog.CatalogRefusal) as refused:
        server_catalog.delete_backup(layout, INC1, 0, now=NOW)
    assert refused.value.code == 'BACKUP_HAS_CHILDREN' and INC2 in str(refused.value)
    assert os.path.exists(layout.backup_info_path(INC1))
    result = server_catalog.delete_backup(layout, INC1, 0, now=NOW, force=True)
    assert result['removed_backups'] == [INC1, INC2]
    assert sorted(infofile.backup_infos(layout)) == [FULL]


def test_deleting_the_newest_incremental_updates_its_parents_children(layout):
    chain.set_children(layout, INC1, infofile.backup_infos(layout))
    assert infofile.read_backup_info(layout.backup_info_path(INC1))['children_backup_ids'] == [INC2]
    server_catalog.delete_backup(layout, INC2, 0, now=NOW)
    assert infofile.read_backup_info(layout.backup_info_path(INC1))['children_backup_ids'] is None


def test_a_forced_delete_still_respects_a_kept_child(layout):
    backup(layout, '20261130T000000', 8)
    server_catalog.ServerCatalog(layout).keep(INC2, 'full')
    with pytest.raises(server_catalog.CatalogRefusal) as refused:
        server_catalog.delete_backup(layout, FULL, 0, now=NOW, force=True)
    assert refused.value.code == 'BACKUP_KEPT'
    assert sorted(infofile.backup_infos(layout)) == [FULL, INC1, INC2, '20261130T000000']


@pytest.mark.parametrize(
    'newest_mode, manifest, chain_max, expected',
    [
        ('postgres', True, 6, (INC2, 'incremental on %s (chain of 4)' % INC2)),
        ('postgres', True, 2, (None, 'full: the chain of %s already has 2 incrementals (incremental_chain 2)' % INC2)),
        (
            'rsync-concurrent',
            True,
            6,
            (None, 'full: the newest backup %s was taken by rsync, not pg_basebackup' % INC2),
        ),
        ('postgres', False, 6, (None, 'full: the newest backup %s has no backup_manifest' % INC2)),
    ],
)
def test_an_incremental_builds_on_the_newest_backup_within_the_chain_limit(
    layout, newest_mode, manifest, chain_max, expected
):
    infos = infofile.backup_infos(layout)
    infos[INC2]['mode'] = newest_mode
    if not manifest:
        os.unlink(layout.manifest_path(INC2))
    assert stream_backup.choose_parent(infos, layout, True, chain_max) == expected
    assert stream_backup.choose_parent(infos, layout, False, chain_max) == (None, 'full backup asked for')


def test_pg_basebackup_argv_streams_into_the_catalog_without_wal_or_password(layout):
    params = dict(
        pg_host='10.0.0.13',
        pg_port=5443,
        streaming_user='streaming_barman',
        pg_connect_timeout=10,
        immediate_checkpoint=True,
        label=None,
        bandwidth_limit=None,
        streaming_password='secret',
    )
    argv = stream_backup.argv(
        '/opt/pg18/bin/pg_basebackup', params, layout, '20261130T010000', [('lab_tbs', 16390, '/srv/tbs')], INC2
    )
    assert argv[0] == '/opt/pg18/bin/pg_basebackup'
    assert "--dbname=host='10.0.0.13' port='5443' user='streaming_barman'" in ' '.join(argv)
    assert '--pgdata=%s' % layout.backup_data_dir('20261130T010000') in argv
    assert {'--wal-method=none', '--no-slot', '--checkpoint=fast', '--no-password'} <= set(argv)
    assert '--tablespace-mapping=/srv/tbs=%s' % layout.backup_tablespace_dir('20261130T010000', 16390) in argv
    assert argv[-1] == '--incremental=%s' % layout.manifest_path(INC2)
    assert not any('secret' in a for a in argv)
    assert stream_backup.environment(params)['PGPASSWORD'] == 'secret'


def test_recovery_plans_the_combine_of_a_chain_only(layout):
    info = infofile.read_backup_info(layout.backup_info_path(INC2))
    assert recovery.combine_plan([INC2], info) is None
    assert 'pg_combinebackup --link of 3 backups' in recovery.combine_plan([FULL, INC1, INC2], info)
    info['version'] = 170002
    assert '--link' not in recovery.combine_plan([FULL, INC1, INC2], info)
