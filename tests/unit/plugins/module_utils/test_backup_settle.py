"""Unfinished backups found by a later run: settled for real, or only reported in check mode."""

import datetime
import os

from ansible_collections.barman.postgresql.plugins.module_utils import backup, catalog, infofile, wal
from ansible_collections.barman.postgresql.plugins.module_utils.wal_store import WalArchive

SEG = wal.DEFAULT_SEGMENT_SIZE


def _catalog(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg1')
    catalog.ensure_directories(layout)
    begin = datetime.datetime(2026, 11, 20, 1, 0, tzinfo=datetime.timezone.utc)
    for backup_id, status in (('20261120T010000', infofile.STARTED), ('20261121T010000', infofile.WAITING_FOR_WALS)):
        info = dict(
            status=status,
            begin_wal=wal.segment_name(1, 2, SEG),
            end_wal=wal.segment_name(1, 3, SEG),
            begin_time=begin,
            xlog_segment_size=SEG,
        )
        infofile.write_backup_info(layout.backup_info_path(backup_id), info)
    return layout, WalArchive(str(tmp_path), 'pg1')


def _files(layout):
    return {name: open(os.path.join(layout.meta_dir, name)).read() for name in sorted(os.listdir(layout.meta_dir))}


def test_check_mode_reports_what_it_would_settle_and_writes_nothing(tmp_path):
    layout, archive = _catalog(tmp_path)
    before = _files(layout)
    settled = backup.settle_unfinished_backups(layout, archive, dry_run=True)
    assert settled == [dict(backup_id='20261120T010000', status=infofile.FAILED)]
    assert _files(layout) == before


def test_a_real_run_fails_the_orphaned_backup_and_leaves_the_one_still_waiting_for_wal(tmp_path):
    layout, archive = _catalog(tmp_path)
    settled = backup.settle_unfinished_backups(layout, archive)
    assert settled == [dict(backup_id='20261120T010000', status=infofile.FAILED)]
    infos = infofile.backup_infos(layout)
    assert infos['20261120T010000']['status'] == infofile.FAILED
    assert 'died' in infos['20261120T010000']['error']
    assert infos['20261121T010000']['status'] == infofile.WAITING_FOR_WALS  # its WAL is not archived
