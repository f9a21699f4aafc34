# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/mirror.py: what a mirror copies, its mark, and the check of a copy before it appears."""

import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, manifest, mirror, xlogdb

PRIMARY = dict(
    mirror_of='backup1',
    ssh='barman@127.0.0.21',
    port=22,
    identity_file='/var/lib/barman-dr/.ssh/barman_mirror',
    known_hosts='/var/lib/barman-dr/.ssh/known_hosts',
    barman_home='/var/lib/barman',
)


def listed(*ids, **statuses):
    return [dict(id=i, status=statuses.get('s' + i[-2:], 'DONE'), info='') for i in ids]


def test_an_empty_mirror_copies_every_done_backup_oldest_first():
    backups = listed('20261101T000001', '20261102T000002', '20261103T000003', s02='FAILED')
    assert [b['id'] for b in mirror.to_copy(backups, set())] == ['20261101T000001', '20261103T000003']


def test_a_mirror_copies_only_what_is_newer_than_its_newest_copy():
    backups = listed('20261101T000001', '20261102T000002', '20261103T000003', '20261104T000004')
    # The first was retired by the mirror's own retention: copying it again would undo that.
    assert [b['id'] for b in mirror.to_copy(backups, {'20261102T000002'})] == ['20261103T000003', '20261104T000004']
    assert mirror.to_copy(backups, {'20261104T000004'}) == []


@pytest.fixture
def layout(tmp_path):
    return catalog.ServerLayout(str(tmp_path), 'pg1')


def test_claim_marks_a_new_catalog_and_refuses_one_written_as_a_primary(layout):
    assert mirror.claim(layout, PRIMARY) is True
    assert mirror.mirror_of(layout) == 'backup1'
    assert mirror.claim(layout, PRIMARY) is False, 'claimed already: no change'
    assert mirror.claim(layout, dict(PRIMARY, mirror_of='backup9', ssh='barman@127.0.0.29')) is True
    assert mirror.mirror_of(layout) == 'backup9'
    assert mirror.promote(layout) == 'backup9'
    assert mirror.mirror_of(layout) is None and mirror.promote(layout) is None
    # Now a primary's catalog with WAL of its own: a mirror never takes it over.
    xlogdb.append_xlog_db(layout.xlog_db, [('000000010000000000000001', 10, 1.0, 'gzip')])
    with pytest.raises(mirror.MirrorRefusal, match='written as its primary backup server') as refused:
        mirror.claim(layout, PRIMARY)
    assert 'move %s aside' % layout.root in refused.value.hint
    assert mirror.mirror_of(layout) is None


def test_a_copy_that_differs_from_its_manifest_is_refused_and_stays_hidden(layout):
    catalog.ensure_directories(layout)
    backup_id = '20261130T010101'
    partial = mirror.partial_dir(layout, backup_id)
    data = os.path.join(partial, 'data')
    os.makedirs(data)
    with open(os.path.join(data, 'PG_VERSION'), 'w') as handle:
        handle.write('15\n')
    files = [{'Path': 'PG_VERSION', 'Size': 3, 'Last-Modified': '2026-11-30 01:01:01 GMT', 'Checksum': '0' * 64}]
    with open(os.path.join(data, manifest.MANIFEST), 'wb') as handle:
        handle.write(manifest.render(1, None, files, []))
    problems = mirror._check_copy(layout, backup_id, dict(tablespaces=None))
    assert problems == [dict(file='PG_VERSION', problem='checksum mismatch (the content changed)')]
    os.unlink(os.path.join(data, manifest.MANIFEST))
    assert mirror._check_copy(layout, backup_id, dict(tablespaces=None)) is None, 'compared by content instead'
    assert backup_id not in infofile.backup_infos(layout), 'a partial copy never appears in the catalog'
    assert mirror.sweep_partials(layout, [backup_id]) == []
    assert mirror.sweep_partials(layout, []) == [backup_id] and not os.path.exists(partial)
