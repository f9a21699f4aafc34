# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/pgdata_layout.py: the probe runs in a real sh, files land on a real disk."""

import json
import os
import stat
import subprocess

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, pgdata_layout

BACKUP_ID = '20261124T031200'


def probe(pgdata):
    """What the backup sees over SSH: the probe's argv run by a real shell, its stdout."""
    proc = subprocess.run(
        pgdata_layout.probe_argv(str(pgdata)), stdout=subprocess.PIPE, universal_newlines=True, check=True
    )
    return pgdata_layout.parse_probe(proc.stdout.strip('\n'), str(pgdata))


def test_a_plain_pg_wal_is_a_directory(tmp_path):
    (tmp_path / 'data' / 'pg_wal').mkdir(parents=True)
    assert probe(tmp_path / 'data') == {'pg_wal': {'kind': 'directory'}}


def test_a_waldir_pg_wal_is_a_symlink_with_where_it_leads(tmp_path):
    (tmp_path / 'disk2' / 'wal').mkdir(parents=True)
    (tmp_path / 'data').mkdir()
    os.symlink(str(tmp_path / 'disk2' / 'wal'), str(tmp_path / 'data' / 'pg_wal'))
    assert probe(tmp_path / 'data') == {
        'pg_wal': {
            'kind': 'symlink',
            'link': str(tmp_path / 'disk2' / 'wal'),
            'target': str(tmp_path / 'disk2' / 'wal'),
        }
    }


def test_a_relative_link_resolves_from_pgdata(tmp_path):
    (tmp_path / 'wal').mkdir()
    (tmp_path / 'data').mkdir()
    os.symlink('../wal', str(tmp_path / 'data' / 'pg_wal'))
    layout = probe(tmp_path / 'data')['pg_wal']
    assert layout['link'] == '../wal' and layout['target'] == os.path.realpath(str(tmp_path / 'wal'))


@pytest.mark.parametrize('make', ['missing', 'file', 'dangling'])
def test_a_pg_wal_that_is_neither_is_refused(tmp_path, make):
    data = tmp_path / 'data'
    data.mkdir()
    if make == 'file':
        (data / 'pg_wal').write_text('')
    elif make == 'dangling':
        os.symlink(str(tmp_path / 'gone' / 'wal'), str(data / 'pg_wal'))
    with pytest.raises(pgdata_layout.PgdataLayoutError, match='neither a directory nor a symlink'):
        probe(data)


def test_a_path_with_spaces_and_quotes_is_probed_as_it_is(tmp_path):
    data = tmp_path / "it's data $(touch pwned)"
    (data / 'pg_wal').mkdir(parents=True)
    assert probe(data)['pg_wal']['kind'] == 'directory'
    assert not (tmp_path / 'pwned').exists()


def test_the_layout_is_written_beside_data_and_read_back(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg1')
    os.makedirs(layout.backup_data_dir(BACKUP_ID))
    assert pgdata_layout.read_layout(layout, BACKUP_ID) is None, 'an older backup has no record: unknown'
    recorded = {'pg_wal': {'kind': 'symlink', 'link': '/srv/wal', 'target': '/srv/wal'}}
    pgdata_layout.write_layout(layout, BACKUP_ID, recorded)
    path = os.path.join(layout.backup_dir(BACKUP_ID), 'pgdata_layout.json')
    with open(path) as handle:
        assert json.load(handle) == recorded
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert pgdata_layout.read_layout(layout, BACKUP_ID) == recorded
    assert pgdata_layout.describe(recorded) == 'pg_wal is a symlink to /srv/wal'


@pytest.mark.parametrize('text', ['{', '[]', '{"pg_wal": {"kind": "socket"}}'])
def test_a_damaged_record_is_refused(tmp_path, text):
    layout = catalog.ServerLayout(str(tmp_path), 'pg1')
    os.makedirs(layout.backup_dir(BACKUP_ID))
    with open(pgdata_layout.layout_path(layout, BACKUP_ID), 'w') as handle:
        handle.write(text)
    with pytest.raises(pgdata_layout.PgdataLayoutError):
        pgdata_layout.read_layout(layout, BACKUP_ID)


def test_the_copy_gets_a_real_empty_pg_wal_with_archive_status(tmp_path):
    data = tmp_path / 'data'
    data.mkdir()
    old_umask = os.umask(0o022)
    try:
        pgdata_layout.make_empty_pg_wal(str(data))
    finally:
        os.umask(old_umask)
    for relative in ('pg_wal', 'pg_wal/archive_status'):
        info = os.lstat(str(data / relative))
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700, relative
    assert os.listdir(str(data / 'pg_wal')) == ['archive_status']
    assert os.listdir(str(data / 'pg_wal' / 'archive_status')) == []


def test_a_pg_wal_already_in_the_copy_is_refused(tmp_path):
    # A link that came along would be followed into the original's WAL: never write through it.
    (tmp_path / 'original-wal').mkdir()
    (tmp_path / 'data').mkdir()
    os.symlink(str(tmp_path / 'original-wal'), str(tmp_path / 'data' / 'pg_wal'))
    with pytest.raises(pgdata_layout.PgdataLayoutError, match='already exists'):
        pgdata_layout.make_empty_pg_wal(str(tmp_path / 'data'))
    assert os.listdir(str(tmp_path / 'original-wal')) == []
