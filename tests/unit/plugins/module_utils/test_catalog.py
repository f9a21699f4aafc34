# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

import datetime
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, identityfile, infofile, lockfile, xlogdb
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

UTC = datetime.timezone.utc

# Made with Barman 3.19.1's own classes (pip install barman==3.19.1 in a throwaway venv):
#   import barman.output; from barman.infofile import BackupInfo, Tablespace
#   b = BackupInfo('20240102T030405', server_name='pg1', mode='postgres', status='DONE',
#       version=160002, pgdata='/var/lib/postgresql/16/main',
#       tablespaces=[Tablespace('tbs1', 16387, '/srv/tbs1'), Tablespace('tbs2', 16388, '/srv/tbs2')],
#       timeline=1, begin_time=datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=utc), ...,
#       included_files=[...], backup_label='START WAL LOCATION: ...\n', copy_stats={...},
#       backup_name='nightly', ...)
#   f = io.BytesIO(); b.save(file_object=f); print(f.getvalue().decode())
BARMAN_SAMPLE = """\
backup_label='START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\\nLABEL: nightly\\n'
backup_name=nightly
begin_offset=40
begin_time=2024-01-02 03:04:05.123456+00:00
begin_wal=000000010000000000000002
begin_xlog=0/2000028
children_backup_ids=None
cluster_size=31457280
compression=None
config_file=/etc/postgresql/16/main/postgresql.conf
copy_stats={'total_time': 4.5, 'copy_time': 4.0}
data_checksums=on
deduplicated_size=31457280
encryption=None
end_offset=256
end_time=2024-01-02 03:04:09.654321+00:00
end_wal=000000010000000000000002
end_xlog=0/2000100
error=None
hba_file=/etc/postgresql/16/main/pg_hba.conf
ident_file=/etc/postgresql/16/main/pg_ident.conf
included_files=['/etc/postgresql/16/main/conf.d/extra.conf']
mode=postgres
parent_backup_id=None
pgdata=/var/lib/postgresql/16/main
server_name=pg1
size=31457280
status=DONE
summarize_wal=off
systemid=7319180283384717360
tablespaces=[('tbs1', 16387, '/srv/tbs1'), ('tbs2', 16388, '/srv/tbs2')]
timeline=1
version=160002
xlog_segment_size=16777216
"""

# BackupInfo('20240102T030405', status='STARTED') saved the same way: every field, None as "None",
# backup_name and snapshots_info left out when None.
BARMAN_MINIMAL = """\
backup_label=None
begin_offset=None
begin_time=None
begin_wal=None
begin_xlog=None
children_backup_ids=None
cluster_size=None
compression=None
config_file=None
copy_stats=None
data_checksums=None
deduplicated_size=None
encryption=None
end_offset=None
end_time=None
end_wal=None
end_xlog=None
error=None
hba_file=None
ident_file=None
included_files=None
mode=None
parent_backup_id=None
pgdata=None
server_name=None
size=None
status=STARTED
summarize_wal=None
systemid=None
tablespaces=None
timeline=None
version=None
xlog_segment_size=16777216
"""

# WalFileInfo(...).to_xlogdb_line() from Barman 3.19.1.
BARMAN_XLOG_LINES = [
    '000000010000000000000002\t16777216\t1704164645.123\tNone\tNone\n',
    '00000002.history\t42\t1704164645.0\tgzip\tNone\n',
]


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize('name', ['pg', 'pg-main', 'pg_main.2', '9x', 'A' * 64, 'all2', 'my.barman'])
def test_server_name_ok(name):
    assert catalog.validate_server_name(name) == name


@pytest.mark.parametrize(
    'name, words',
    [
        (None, 'must be a string'),
        (42, 'must be a string'),
        ('', 'empty'),
        ('../x', 'slash'),
        ('a/b', 'slash'),
        ('a\\b', 'slash'),
        ('a..b', '".."'),
        ('..', '".."'),
        ('.hidden', 'start with a letter or digit'),
        ('-x', 'start with a letter or digit'),
        ('_x', 'start with a letter or digit'),
        ('a' * 65, '65 characters'),
        ('a b', "' '"),
        ('pg\n', "'\\n'"),
        ('pgé', "'é'"),
        ('all', 'reserved'),
        ('ALL', 'reserved'),
        ('barman', 'reserved'),
    ],
)
def test_server_name_bad(name, words):
    with pytest.raises(catalog.InvalidName) as info:
        catalog.validate_server_name(name)
    assert words in str(info.value)
    assert 'letters, digits' in str(info.value)  # the hint says what is allowed
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, BarmanError)


def test_backup_id_round_trip():
    dt = datetime.datetime(2024, 1, 2, 3, 4, 5, 999)
    backup_id = catalog.new_backup_id(dt)
    assert backup_id == '20240102T030405'
    assert catalog.validate_backup_id(backup_id) == backup_id
    assert catalog.backup_id_time(backup_id) == dt.replace(microsecond=0)
    assert catalog.backup_id_time(backup_id).tzinfo is None


def test_new_backup_id_aware_is_local_time():
    aware = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    expected = aware.astimezone().strftime('%Y%m%dT%H%M%S')
    assert catalog.new_backup_id(aware) == expected


def test_new_backup_id_needs_datetime():
    with pytest.raises(catalog.InvalidName):
        catalog.new_backup_id('2024-01-02')


@pytest.mark.parametrize(
    'text',
    [
        None,
        '',
        '20240102',
        '20240102T0304',
        '20240102t030405',
        '20240102T030405 ',
        ' 20240102T030405',
        '20240102T030405\n',
        '20241302T030405',
        '20240230T030405',
        '20240102T250405',
        '../20240102T030405',
        '20240102T030405/..',
        'x/20240102T030405',
        '２０２４0102T030405',
        20240102,
    ],
)
def test_backup_id_bad(text):
    with pytest.raises(catalog.InvalidName) as info:
        catalog.validate_backup_id(text)
    assert 'YYYYMMDDTHHMMSS' in str(info.value)
    with pytest.raises(ValueError):
        catalog.backup_id_time(text)


# --- layout ----------------------------------------------------------------------------------


def test_layout_paths():
    layout = catalog.ServerLayout('/var/lib/barman/', 'pg')
    assert layout.root == '/var/lib/barman/pg'
    assert layout.meta_dir == '/var/lib/barman/pg/meta'
    assert layout.base_dir == '/var/lib/barman/pg/base'
    assert layout.wals_dir == '/var/lib/barman/pg/wals'
    assert layout.incoming_dir == '/var/lib/barman/pg/incoming'
    assert layout.errors_dir == '/var/lib/barman/pg/errors'
    assert layout.streaming_dir == '/var/lib/barman/pg/streaming'
    assert layout.xlog_db == '/var/lib/barman/pg/wals/pg-xlog.db'
    assert layout.identity_file == '/var/lib/barman/pg/identity.json'
    assert layout.backup_info_path('20240102T030405') == '/var/lib/barman/pg/meta/20240102T030405-backup.info'
    assert layout.backup_dir('20240102T030405') == '/var/lib/barman/pg/base/20240102T030405'
    assert layout.backup_data_dir('20240102T030405') == '/var/lib/barman/pg/base/20240102T030405/data'
    assert layout.backup_tablespace_dir('20240102T030405', 16387) == ('/var/lib/barman/pg/base/20240102T030405/16387')
    assert layout.lock_path('backup') == '/var/lib/barman/.pg-backup.lock'
    assert layout.lock_path('archive-wal') == '/var/lib/barman/.pg-archive-wal.lock'
    assert layout.directories()[0] == layout.root
    assert set(layout.directories()) == {
        layout.root,
        layout.meta_dir,
        layout.base_dir,
        layout.wals_dir,
        layout.incoming_dir,
        layout.errors_dir,
        layout.streaming_dir,
    }


@pytest.mark.parametrize(
    'name, relative',
    [
        ('000000010000000000000002', '0000000100000000/000000010000000000000002'),
        ('0000000A00000003000000FF', '0000000A00000003/0000000A00000003000000FF'),
        ('000000010000000000000002.partial', '0000000100000000/000000010000000000000002.partial'),
        (
            '000000010000000000000002.00000028.backup',
            '0000000100000000/000000010000000000000002.00000028.backup',
        ),
        ('00000002.history', '00000002.history'),
    ],
)
def test_wal_path(name, relative):
    layout = catalog.ServerLayout('/b', 'pg')
    assert layout.wal_path(name) == '/b/pg/wals/' + relative


@pytest.mark.parametrize('name', ['', '../000000010000000000000002', '00000001000000000000002', 'x.history'])
def test_wal_path_bad(name):
    with pytest.raises(ValueError):
        catalog.ServerLayout('/b', 'pg').wal_path(name)


@pytest.mark.parametrize('backup_id', ['../x', '20240102T030405/../..', ''])
def test_layout_refuses_bad_backup_id(backup_id):
    layout = catalog.ServerLayout('/b', 'pg')
    for method in (layout.backup_info_path, layout.backup_dir, layout.backup_data_dir):
        with pytest.raises(catalog.InvalidName):
            method(backup_id)


def test_layout_bad_inputs():
    with pytest.raises(catalog.InvalidName):
        catalog.ServerLayout('relative/home', 'pg')
    with pytest.raises(catalog.InvalidName):
        catalog.ServerLayout('/b', '../pg')
    with pytest.raises(catalog.InvalidName):
        catalog.ServerLayout('/b', 'pg').lock_path('../x')
    with pytest.raises(catalog.InvalidName):
        catalog.ServerLayout('/b', 'pg').backup_tablespace_dir('20240102T030405', '16387')


def test_ensure_directories(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg')
    old = os.umask(0o022)
    try:
        created = catalog.ensure_directories(layout)
    finally:
        os.umask(old)
    assert created == layout.directories()
    for path in layout.directories():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert catalog.ensure_directories(layout) == []


def test_ensure_directories_file_in_the_way(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg')
    os.mkdir(layout.root)
    open(layout.meta_dir, 'w').close()
    with pytest.raises(catalog.CatalogError, match='not a directory'):
        catalog.ensure_directories(layout)


# --- atomic_write ----------------------------------------------------------------------------


def test_atomic_write_str_and_bytes(tmp_path):
    path = str(tmp_path / 'f')
    catalog.atomic_write(path, 'héllo\n')
    assert open(path, 'rb').read() == 'héllo\n'.encode('utf-8')
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    catalog.atomic_write(path, b'\x00\x01', mode=0o640)
    assert open(path, 'rb').read() == b'\x00\x01'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert os.listdir(str(tmp_path)) == ['f']


def test_atomic_write_mode_ignores_umask(tmp_path):
    path = str(tmp_path / 'f')
    old = os.umask(0o077)
    try:
        catalog.atomic_write(path, 'x', mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644


def test_atomic_write_failure_keeps_old_and_leaves_no_temp(tmp_path, monkeypatch):
    path = str(tmp_path / 'f')
    catalog.atomic_write(path, 'old')

    def broken_fsync(fd):
        raise OSError(5, 'Input/output error')

    monkeypatch.setattr(catalog.os, 'fsync', broken_fsync)
    with pytest.raises(OSError):
        catalog.atomic_write(path, 'new')
    monkeypatch.undo()
    assert open(path).read() == 'old'
    assert os.listdir(str(tmp_path)) == ['f']


def test_atomic_write_rename_failure_leaves_no_temp(tmp_path):
    target = tmp_path / 'dir'
    target.mkdir()  # renaming a file over a directory fails
    with pytest.raises(OSError):
        catalog.atomic_write(str(target), 'x')
    assert sorted(os.listdir(str(tmp_path))) == ['dir']


def test_atomic_write_refuses_other_types(tmp_path):
    with pytest.raises(TypeError):
        catalog.atomic_write(str(tmp_path / 'f'), 42)
    assert os.listdir(str(tmp_path)) == []


# --- backup.info -----------------------------------------------------------------------------


def test_parse_barman_sample():
    info = infofile.parse_backup_info(BARMAN_SAMPLE)
    assert info['status'] == 'DONE'
    assert info['backup_name'] == 'nightly'
    assert info['begin_time'] == datetime.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert info['end_time'] == datetime.datetime(2024, 1, 2, 3, 4, 9, 654321, tzinfo=UTC)
    assert info['begin_offset'] == 40
    assert info['version'] == 160002
    assert info['timeline'] == 1
    assert info['xlog_segment_size'] == 16777216
    assert info['systemid'] == '7319180283384717360'
    assert info['tablespaces'] == [('tbs1', 16387, '/srv/tbs1'), ('tbs2', 16388, '/srv/tbs2')]
    assert info['tablespaces'][0].location == '/srv/tbs1'
    assert info['included_files'] == ['/etc/postgresql/16/main/conf.d/extra.conf']
    assert info['backup_label'].startswith('START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n')
    assert info['copy_stats'] == {'total_time': 4.5, 'copy_time': 4.0}
    assert info['children_backup_ids'] is None
    assert info['error'] is None
    assert info['snapshots_info'] is None


def test_format_reproduces_barman_sample_byte_for_byte():
    assert infofile.format_backup_info(infofile.parse_backup_info(BARMAN_SAMPLE)) == BARMAN_SAMPLE


def test_format_minimal_matches_barman():
    assert infofile.format_backup_info({'status': 'STARTED'}) == BARMAN_MINIMAL
    info = infofile.parse_backup_info(BARMAN_MINIMAL)
    assert info['status'] == 'STARTED'
    assert infofile.format_backup_info(info) == BARMAN_MINIMAL


def test_field_table_is_sorted_and_complete():
    names = [field.name for field in infofile.BACKUP_INFO_FIELDS]
    assert names == sorted(names)
    assert len(set(names)) == len(names)
    # Every line Barman writes for a minimal backup is a declared field.
    assert {line.split('=')[0] for line in BARMAN_MINIMAL.splitlines()} <= set(names)


def test_round_trip_file(tmp_path):
    info = {
        'status': infofile.WAITING_FOR_WALS,
        'begin_time': datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        'end_time': datetime.datetime(2024, 5, 6, 7, 9, 0, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2))),
        'begin_wal': '000000010000000000000004',
        'timeline': 1,
        'size': 0,
        'tablespaces': [infofile.Tablespace('ts', 1, "/a path/with 'quote'")],
        'included_files': ['/x "y"'],
        'backup_label': "LABEL: it's\n",
        'copy_stats': {'copy_time': 1.5, 'serial_copy_time': 2},
        'children_backup_ids': ['20240506T070809', '20240507T070809'],
        'snapshots_info': {'provider': 'gcp', 'snapshots': []},
        'systemid': '123',
        'mode': 'rsync-concurrent',
        'error': None,
    }
    path = str(tmp_path / '20240506T070809-backup.info')
    infofile.write_backup_info(path, info)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    back = infofile.read_backup_info(path)
    for key, value in info.items():
        assert back[key] == value, key
    assert back['xlog_segment_size'] == infofile.DEFAULT_XLOG_SEGMENT_SIZE
    text = open(path).read()
    assert "tablespaces=[('ts', 1, \"/a path/with 'quote'\")]\n" in text
    assert 'children_backup_ids=20240506T070809,20240507T070809\n' in text
    assert 'end_time=2024-05-06 07:09:00.000005+02:00\n' in text
    assert infofile.format_backup_info(back) == text


def test_empty_collections_are_written_as_none():
    text = infofile.format_backup_info(
        {'tablespaces': [], 'included_files': [], 'copy_stats': {}, 'children_backup_ids': []}
    )
    for key in ('tablespaces', 'included_files', 'copy_stats', 'children_backup_ids'):
        assert '%s=None\n' % key in text


def test_tablespaces_from_dicts():
    text = infofile.format_backup_info({'tablespaces': [{'name': 't', 'oid': 5, 'location': '/t'}]})
    assert "tablespaces=[('t', 5, '/t')]\n" in text


def test_naive_times_are_local():
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5)
    info = infofile.parse_backup_info(infofile.format_backup_info({'begin_time': naive}))
    assert info['begin_time'].tzinfo is not None
    assert info['begin_time'] == naive.astimezone()
    assert infofile.parse_backup_info('begin_time=2024-01-02 03:04:05\n')['begin_time'] == naive.astimezone()


def test_error_is_folded_onto_one_line():
    text = infofile.format_backup_info({'status': 'FAILED', 'error': 'failure\n  copying  files\n'})
    assert 'error=failure copying files\n' in text


def test_unknown_keys_kept_as_strings():
    info = infofile.parse_backup_info(BARMAN_MINIMAL + 'future_field= 12 \nfuture_none=None\n')
    assert info['future_field'] == '12'
    assert info['future_none'] is None
    text = infofile.format_backup_info(info)
    assert 'future_field=12\nfuture_none=None\n' in text
    assert text.index('future_field') < text.index('hba_file')  # sorted with the others


def test_comments_and_blank_lines_skipped():
    info = infofile.parse_backup_info('# comment\n\n  \nstatus = DONE \r\n')
    assert info['status'] == 'DONE'


def test_value_may_contain_equal_sign():
    assert infofile.parse_backup_info('error=a=b\n')['error'] == 'a=b'


@pytest.mark.parametrize(
    'text, line, words',
    [
        ('status=DONE\nno equal sign here\n', 2, 'no "="'),
        ('status=DONE\nversion=16.2\n', 2, 'not an integer'),
        ('size=12 MB\n', 1, 'not an integer'),
        ('begin_offset=1.0\n', 1, 'not an integer'),
        ('status=BOGUS\n', 1, 'unknown status'),
        ('status=done\n', 1, 'unknown status'),
        ('begin_time=yesterday\n', 1, 'not a timestamp'),
        ("tablespaces=[('a', 'x', '/a')]\n", 1, 'tablespaces'),
        ('tablespaces=__import__("os")\n', 1, 'not a Python literal'),
        ("included_files='/a'\n", 1, 'not a list of strings'),
        ('copy_stats=[1]\n', 1, 'not a dict'),
        ('backup_label=START WAL\n', 1, 'not a Python literal'),
        ('=DONE\n', 1, 'not a key name'),
        ('status=DONE\nstatus=FAILED\n', 2, 'twice'),
    ],
)
def test_malformed_backup_info(tmp_path, text, line, words):
    path = str(tmp_path / '20240102T030405-backup.info')
    with open(path, 'w') as handle:
        handle.write(text)
    with pytest.raises(infofile.MalformedBackupInfo) as info:
        infofile.read_backup_info(path)
    message = str(info.value)
    assert path in message
    assert 'line %d' % line in message
    assert words in message
    assert info.value.data == {'path': path, 'line': line}
    assert isinstance(info.value, ValueError)


def test_malformed_backup_info_not_utf8(tmp_path):
    path = str(tmp_path / 'x-backup.info')
    with open(path, 'wb') as handle:
        handle.write(b'status=DONE\npgdata=/\xff\n')
    with pytest.raises(infofile.MalformedBackupInfo, match='line 2'):
        infofile.read_backup_info(path)


def test_parse_names_source():
    with pytest.raises(infofile.MalformedBackupInfo, match='<text>'):
        infofile.parse_backup_info('nope\n')


@pytest.mark.parametrize(
    'info',
    [
        {'status': 'BOGUS'},
        {'version': '16'},
        {'version': True},
        {'begin_time': '2024-01-02'},
        {'pgdata': '/a\nstatus=DONE'},
        {'pgdata': ' /a'},
        {'tablespaces': [('a', '1', '/a')]},
        {'tablespaces': 'a'},
        {'included_files': '/a'},
        {'children_backup_ids': ['a,b']},
        {'copy_stats': [1]},
        {'backup_id': '20240102T030405'},
        {'bad key': 'x'},
        {'future': 3},
    ],
)
def test_format_refuses_bad_values(info):
    with pytest.raises(infofile.InvalidBackupInfo) as error:
        infofile.format_backup_info(info)
    assert isinstance(error.value, ValueError)
    assert error.value.hint


def test_write_backup_info_refusal_leaves_nothing(tmp_path):
    path = str(tmp_path / 'x-backup.info')
    with pytest.raises(infofile.InvalidBackupInfo):
        infofile.write_backup_info(path, {'status': 'nope'})
    assert os.listdir(str(tmp_path)) == []


# --- xlog.db ---------------------------------------------------------------------------------


def test_xlog_db_lines_match_barman():
    assert (
        xlogdb.format_xlog_db_line('000000010000000000000002', 16777216, 1704164645.123, None) == (BARMAN_XLOG_LINES[0])
    )
    assert xlogdb.format_xlog_db_line('00000002.history', 42, 1704164645, 'gzip') == BARMAN_XLOG_LINES[1]
    assert xlogdb.parse_xlog_db_line(BARMAN_XLOG_LINES[0]) == (
        '000000010000000000000002',
        16777216,
        1704164645.123,
        None,
        None,
    )
    entry = xlogdb.parse_xlog_db_line(BARMAN_XLOG_LINES[1])
    assert entry.compression == 'gzip' and entry.encryption is None and entry.time == 1704164645.0


def test_xlog_db_old_formats_and_encryption():
    assert xlogdb.parse_xlog_db_line('000000010000000000000002 10 1.5\n') == (
        '000000010000000000000002',
        10,
        1.5,
        None,
        None,
    )
    assert xlogdb.parse_xlog_db_line('000000010000000000000002\t10\t1.5\tzstd').compression == 'zstd'
    line = xlogdb.format_xlog_db_line('000000010000000000000002', 10, 1.5, 'zstd', 'gpg')
    assert line == '000000010000000000000002\t10\t1.5\tzstd\tgpg\n'
    assert xlogdb.parse_xlog_db_line(line).encryption == 'gpg'


@pytest.mark.parametrize(
    'line',
    [
        '',
        '000000010000000000000002 10',
        '000000010000000000000002 10 1.5 gzip None extra',
        'nonsense 10 1.5',
        '000000010000000000000002 ten 1.5',
        '000000010000000000000002 10 soon',
    ],
)
def test_parse_xlog_db_line_bad(line):
    with pytest.raises(xlogdb.MalformedXlogDb):
        xlogdb.parse_xlog_db_line(line)


@pytest.mark.parametrize(
    'args',
    [
        ('../000000010000000000000002', 1, 1.0, None),
        ('000000010000000000000002', -1, 1.0, None),
        ('000000010000000000000002', 1.5, 1.0, None),
        ('000000010000000000000002', 1, 'now', None),
        ('000000010000000000000002', 1, float('nan'), None),
        ('000000010000000000000002', 1, 1.0, 'two words'),
        ('000000010000000000000002', 1, 1.0, 'None'),
        ('000000010000000000000002', 1, 1.0, 'gzip\n'),
    ],
)
def test_format_xlog_db_line_bad(args):
    with pytest.raises(ValueError):
        xlogdb.format_xlog_db_line(*args)


def test_append_and_read_xlog_db(tmp_path):
    path = str(tmp_path / 'pg-xlog.db')
    assert xlogdb.read_xlog_db(path) == []
    xlogdb.append_xlog_db(path, [xlogdb.XlogEntry('000000010000000000000001', 16777216, 10.0, 'gzip')])
    xlogdb.append_xlog_db(
        path,
        [
            ('000000010000000000000002', 16777216, 11.25, None),
            {'name': '00000002.history', 'size': 42, 'time': 12, 'compression': None},
        ],
    )
    xlogdb.append_xlog_db(path, [])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert open(path).read() == (
        '000000010000000000000001\t16777216\t10.0\tgzip\tNone\n'
        '000000010000000000000002\t16777216\t11.25\tNone\tNone\n'
        '00000002.history\t42\t12.0\tNone\tNone\n'
    )
    assert [entry.name for entry in xlogdb.read_xlog_db(path)] == [
        '000000010000000000000001',
        '000000010000000000000002',
        '00000002.history',
    ]


def test_append_xlog_db_bad_entry_writes_nothing(tmp_path):
    path = str(tmp_path / 'pg-xlog.db')
    xlogdb.append_xlog_db(path, [('000000010000000000000001', 1, 1.0, None)])
    with pytest.raises(ValueError):
        xlogdb.append_xlog_db(path, [('000000010000000000000002', 1, 1.0, None), ('bad', 1, 1.0, None)])
    assert len(xlogdb.read_xlog_db(path)) == 1


def test_append_xlog_db_refuses_torn_line(tmp_path):
    path = str(tmp_path / 'pg-xlog.db')
    with open(path, 'w') as handle:
        handle.write('000000010000000000000001\t16777216\t10.0\tNone\tNone\n000000010000')
    with pytest.raises(xlogdb.MalformedXlogDb, match='rebuild-xlogdb'):
        xlogdb.append_xlog_db(path, [('000000010000000000000002', 1, 1.0, None)])


def test_read_xlog_db_names_file_and_line(tmp_path):
    path = str(tmp_path / 'pg-xlog.db')
    with open(path, 'w') as handle:
        handle.write(BARMAN_XLOG_LINES[0] + 'garbage\n')
    with pytest.raises(xlogdb.MalformedXlogDb) as info:
        xlogdb.read_xlog_db(path)
    assert path in str(info.value) and 'line 2' in str(info.value)
    assert info.value.data == {'path': path, 'line': 2}


# --- identity.json ---------------------------------------------------------------------------


def test_identity_written_like_barman(tmp_path):
    path = str(tmp_path / 'identity.json')
    assert identityfile.read_identity(path) is None
    recorded = identityfile.check_identity(path, 7319180283384717360, 160002)
    assert recorded == {'systemid': '7319180283384717360', 'version': '16'}
    # Barman: json.dump(..., indent=4, sort_keys=True) followed by a newline.
    assert open(path).read() == '{\n    "systemid": "7319180283384717360",\n    "version": "16"\n}\n'
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert identityfile.read_identity(path) == recorded
    assert identityfile.check_identity(path, '7319180283384717360', '16.4') == recorded


@pytest.mark.parametrize(
    'version, major', [(160002, '16'), (90624, '9.6'), ('9.6.24', '9.6'), ('17', '17'), (15, '15')]
)
def test_identity_version(tmp_path, version, major):
    path = str(tmp_path / 'identity.json')
    assert identityfile.check_identity(path, '1', version)['version'] == major


def test_identity_mismatch(tmp_path):
    path = str(tmp_path / 'identity.json')
    identityfile.check_identity(path, '111', '16')
    with pytest.raises(identityfile.IdentityMismatch) as info:
        identityfile.check_identity(path, '222', '16')
    assert '222' in str(info.value) and '111' in str(info.value) and path in str(info.value)
    assert 'new server name' in str(info.value)
    assert info.value.data['recorded_systemid'] == '111'
    assert info.value.code == 'IDENTITY_MISMATCH'
    assert json.load(open(path))['systemid'] == '111'


@pytest.mark.parametrize('content', ['', '{', '[]', '{"version": "16"}'])
def test_identity_malformed(tmp_path, content):
    path = str(tmp_path / 'identity.json')
    with open(path, 'w') as handle:
        handle.write(content)
    with pytest.raises(identityfile.MalformedIdentity, match='systemid'):
        identityfile.check_identity(path, '1', '16')


def test_identity_bad_systemid(tmp_path):
    with pytest.raises(catalog.InvalidName):
        identityfile.check_identity(str(tmp_path / 'identity.json'), 'abc', '16')
    assert os.listdir(str(tmp_path)) == []


# --- locks -----------------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys, time
    sys.path[:0] = %r
    from ansible_collections.barman.postgresql.plugins.module_utils import lockfile
    lock = lockfile.ServerLock(sys.argv[1], 'backup')
    lock.acquire()
    print('locked', flush=True)
    time.sleep(60)
    """
)


@pytest.fixture
def holder(tmp_path):
    """Start another process that holds the backup lock of tmp_path/pg; yield (process, lock path)."""
    layout = catalog.ServerLayout(str(tmp_path), 'pg')
    path = layout.lock_path('backup')
    proc = subprocess.Popen(
        [sys.executable, '-c', HOLDER % (sys.path,), path], stdout=subprocess.PIPE, universal_newlines=True
    )
    try:
        assert proc.stdout.readline().strip() == 'locked'
        yield proc, layout
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_lock_writes_holder_and_releases(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg')
    with lockfile.ServerLock(layout, 'backup') as lock:
        assert lock.path == str(tmp_path / '.pg-backup.lock')
        holder = lockfile.read_lock_holder(lock.path)
        assert holder['pid'] == os.getpid()
        assert holder['operation'] == 'backup'
        assert holder['started']
        # Barman reads the first line as the pid.
        assert open(lock.path).readline().strip() == str(os.getpid())
        assert stat.S_IMODE(os.stat(lock.path).st_mode) == 0o600
    with lockfile.ServerLock(layout, 'backup'):
        pass


def test_lock_busy_in_same_process(tmp_path):
    layout = catalog.ServerLayout(str(tmp_path), 'pg')
    with lockfile.ServerLock(layout, 'backup'):
        with pytest.raises(lockfile.LockBusy):
            lockfile.ServerLock(layout, 'backup').acquire()
        with lockfile.ServerLock(layout, 'xlogdb'):  # other operations are independent
            pass


def test_lock_busy_from_other_process_then_free_after_sigkill(holder):
    proc, layout = holder
    with pytest.raises(lockfile.LockBusy) as info:
        lockfile.ServerLock(layout, 'backup').acquire()
    message = str(info.value)
    assert 'pid %d' % proc.pid in message or 'process %d' % proc.pid in message
    assert 'Wait' in message and 'ps -p %d' % proc.pid in message
    assert info.value.data['holder_pid'] == proc.pid
    assert info.value.data['holder_operation'] == 'backup'
    assert isinstance(info.value.data['holder_age_seconds'], int)  # known: the holder wrote when it started
    assert isinstance(info.value, BarmanError)
    assert info.value.fail_json_kwargs()['error_code'] == 'LOCK_BUSY'

    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with lockfile.ServerLock(layout, 'backup') as lock:
        assert lockfile.read_lock_holder(lock.path)['pid'] == os.getpid()


def test_lock_wait_seconds_gives_up(holder):
    proc, layout = holder
    start = time.monotonic()
    with pytest.raises(lockfile.LockBusy, match='after waiting'):
        lockfile.ServerLock(layout, 'backup', wait_seconds=0.3).acquire()
    assert time.monotonic() - start >= 0.3


def test_lock_wait_seconds_gets_it_when_holder_dies(holder):
    proc, layout = holder
    lock = lockfile.ServerLock(layout, 'backup', wait_seconds=10, poll_seconds=0.05)
    killer = subprocess.Popen(
        [sys.executable, '-c', 'import os, sys, time; time.sleep(0.3); os.kill(%d, 9)' % proc.pid]
    )
    try:
        with lock:
            assert lock.fd is not None
    finally:
        killer.wait()


def test_lock_with_plain_path_and_errors(tmp_path):
    path = str(tmp_path / 'my.lock')
    with lockfile.ServerLock(path, 'restore') as lock:
        assert lock.path == path
        assert lockfile.read_lock_holder(path)['operation'] == 'restore'
    with pytest.raises(lockfile.LockError, match='Cannot open lock file'):
        lockfile.ServerLock(str(tmp_path / 'missing' / 'x.lock'), 'backup').acquire()
    with pytest.raises(catalog.InvalidName):
        lockfile.ServerLock(path, '../x')


def test_read_lock_holder_barman_style(tmp_path):
    path = str(tmp_path / '.pg-backup.lock')
    with open(path, 'w') as handle:
        handle.write('4242\n')
    assert lockfile.read_lock_holder(path) == {'pid': 4242, 'operation': None, 'started': None}
    assert lockfile.read_lock_holder(str(tmp_path / 'none'))['pid'] is None


# ---------------------------------------------------------------------------------------------
# The order of backups, and where the WAL archive must be continuous from

CET = datetime.timezone(datetime.timedelta(hours=1))
CEST = datetime.timezone(datetime.timedelta(hours=2))


def _write_backups(layout, backups):
    catalog.ensure_directories(layout)
    for backup_id, info in backups.items():
        infofile.write_backup_info(layout.backup_info_path(backup_id), info)


def test_backups_are_ordered_by_begin_time_when_daylight_saving_time_ends(tmp_path):
    # 2026-10-25, Europe: at 03:00 CEST the clocks go back to 02:00 CET. A backup begun at 02:30 CEST
    # gets the id ...T023000; one begun 45 minutes later, at 02:15 CET, gets ...T021500: ids go back.
    layout = catalog.ServerLayout(str(tmp_path), 'pg1')
    first = dict(status='DONE', begin_time=datetime.datetime(2026, 10, 25, 2, 30, tzinfo=CEST))
    second = dict(status='DONE', begin_time=datetime.datetime(2026, 10, 25, 2, 15, tzinfo=CET))
    earlier = dict(status='DONE', begin_time=datetime.datetime(2026, 10, 24, 2, 0, tzinfo=CEST))
    _write_backups(layout, {'20261025T023000': first, '20261025T021500': second, '20261024T020000': earlier})
    infos = infofile.backup_infos(layout)
    assert list(infos) == ['20261024T020000', '20261025T023000', '20261025T021500']
    assert sorted(infos) != list(infos), 'the pair must go backwards by id, or this tests nothing'
    assert infos['20261025T021500']['begin_time'] == second['begin_time']


def test_a_backup_without_begin_time_is_placed_by_its_id_and_a_bad_id_first():
    infos = {
        '20261120T010000': dict(begin_time=datetime.datetime(2026, 11, 20, 0, 0, tzinfo=UTC)),
        '20261121T010000': dict(begin_time=None),  # STARTED: pg_backup_start has not answered yet
        '20261119T010000': dict(begin_time=datetime.datetime(2026, 11, 19, 0, 0, tzinfo=UTC)),
        'not-an-id': dict(begin_time=None),
    }
    assert infofile.ordered_backup_ids(infos) == ['not-an-id', '20261119T010000', '20261120T010000', '20261121T010000']


def test_backup_infos_of_a_server_without_meta(tmp_path):
    assert infofile.backup_infos(catalog.ServerLayout(str(tmp_path), 'pg1')) == {}


def _backup(day, begin, end, status='DONE'):
    return dict(
        status=status,
        begin_wal='0000000100000000%08X' % begin,
        end_wal='0000000100000000%08X' % end,
        begin_time=datetime.datetime(2026, 11, day, 1, 0, tzinfo=UTC),
    )


def _wal(n):
    return '0000000100000000%08X' % n


def test_archive_origin_is_the_oldest_backup_kept_for_point_in_time_recovery():
    infos = {
        '20261118T010000': _backup(18, 2, 3),
        '20261119T010000': _backup(19, 5, 6),
        '20261120T010000': _backup(20, 9, 10),
        '20261121T010000': _backup(21, 12, 13),
    }
    keeps = {'20261118T010000': 'standalone', '20261119T010000': 'standalone', '20261121T010000': 'standalone'}
    assert infofile.archive_origin(infos, keeps) == dict(
        backup_id='20261120T010000',
        begin_wal=_wal(9),
        islands=[
            dict(backup_id='20261118T010000', begin_wal=_wal(2), end_wal=_wal(3)),
            dict(backup_id='20261119T010000', begin_wal=_wal(5), end_wal=_wal(6)),
        ],
    )
    # Kept full, a backup needs all WAL after it: no island.
    keeps['20261118T010000'] = 'full'
    assert infofile.archive_origin(infos, keeps)['begin_wal'] == _wal(2)
    assert infofile.archive_origin(infos, keeps)['islands'] == []


def test_archive_origin_when_every_backup_is_standalone_or_none_is_done():
    infos = {'20261118T010000': _backup(18, 2, 3), '20261119T010000': _backup(19, 5, 6)}
    keeps = dict((b, 'standalone') for b in infos)
    # Retention keeps all WAL from the newest DONE backup on, kept or not.
    origin = infofile.archive_origin(infos, keeps)
    assert (origin['backup_id'], origin['begin_wal']) == ('20261119T010000', _wal(5))
    assert [i['backup_id'] for i in origin['islands']] == ['20261118T010000']
    failed = dict((b, dict(info, status='FAILED')) for b, info in infos.items())
    assert infofile.archive_origin(failed, {}) == dict(backup_id=None, begin_wal=None, islands=[])
    assert infofile.archive_origin({}, {}) == dict(backup_id=None, begin_wal=None, islands=[])


def test_archive_origin_ignores_backups_that_are_not_done_and_follows_begin_time():
    infos = {
        '20261118T010000': _backup(18, 2, 3, status='FAILED'),
        # Began after the next one (daylight saving time ended between them), though its id is smaller.
        '20261119T010000': dict(_backup(19, 9, 10), begin_time=datetime.datetime(2026, 11, 19, 3, 0, tzinfo=UTC)),
        '20261119T013000': dict(_backup(19, 5, 6), begin_time=datetime.datetime(2026, 11, 19, 2, 0, tzinfo=UTC)),
    }
    keeps = {'20261119T013000': 'standalone'}
    origin = infofile.archive_origin(infos, keeps)
    assert origin['backup_id'] == '20261119T010000'
    assert origin['islands'] == [dict(backup_id='20261119T013000', begin_wal=_wal(5), end_wal=_wal(6))]


# --- the DONE backups and the id shortcuts, answered in one place ----------------------------


def _by_status(**statuses):
    """{backup_id: info} with begin times in the order of the ids."""
    return {
        backup_id: dict(
            status=status, begin_time=datetime.datetime(2026, 1, int(backup_id[6:8]), tzinfo=datetime.timezone.utc)
        )
        for backup_id, status in statuses.items()
    }


INFOS = _by_status(
    **{
        '20260103T000000': infofile.DONE,
        '20260101T000000': infofile.FAILED,
        '20260102T000000': infofile.DONE,
        '20260104T000000': infofile.WAITING_FOR_WALS,
        '20260105T000000': infofile.FAILED,
    }
)


def test_done_backup_ids_are_the_done_ones_oldest_first():
    assert infofile.done_backup_ids(INFOS) == ['20260102T000000', '20260103T000000']
    assert infofile.done_backup_ids({}) == []


@pytest.mark.parametrize(
    'shortcut, statuses, expected',
    [
        ('latest', infofile.SHORTCUT_STATUSES, '20260104T000000'),
        ('last', infofile.SHORTCUT_STATUSES, '20260104T000000'),
        ('oldest', infofile.SHORTCUT_STATUSES, '20260102T000000'),
        ('first', infofile.SHORTCUT_STATUSES, '20260102T000000'),
        ('last-failed', infofile.SHORTCUT_STATUSES, '20260105T000000'),
        ('latest', (infofile.DONE,), '20260103T000000'),
        ('oldest', (infofile.DONE,), '20260102T000000'),
    ],
)
def test_a_shortcut_names_one_backup(shortcut, statuses, expected):
    assert infofile.shortcut_backup_id(INFOS, shortcut, statuses) == expected


def test_a_shortcut_with_no_such_backup_names_none():
    assert infofile.shortcut_backup_id(_by_status(**{'20260101T000000': infofile.DONE}), 'last-failed') is None
    assert infofile.shortcut_backup_id({}, 'latest') is None


def test_a_lock_held_for_long_says_since_when_and_an_unreadable_start_says_nothing(tmp_path, monkeypatch):
    layout = catalog.ServerLayout(str(tmp_path), 'pg')
    now = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.timezone.utc)
    monkeypatch.setattr(lockfile, 'now_utc', lambda: now)  # the clock is the input here, not a duration measured
    with lockfile.ServerLock(layout, 'backup') as lock:
        with open(lock.path, 'w') as handle:  # what a holder stuck since a day ago wrote
            handle.write('%d\nbackup\n%s\n' % (os.getpid(), (now - datetime.timedelta(days=1)).isoformat()))
        with pytest.raises(lockfile.LockBusy) as info:
            lockfile.ServerLock(layout, 'backup').acquire()
        assert info.value.data['holder_age_seconds'] == 86400
        with open(lock.path, 'w') as handle:
            handle.write('%d\nbackup\nyesterday\n' % os.getpid())
        with pytest.raises(lockfile.LockBusy) as info:
            lockfile.ServerLock(layout, 'backup').acquire()
        assert info.value.data['holder_age_seconds'] is None
