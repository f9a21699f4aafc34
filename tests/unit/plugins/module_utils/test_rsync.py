# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/rsync.py."""

import os
import subprocess

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import rsync, ssh
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


# Real output of `rsync --archive --protect-args --numeric-ids --stats -- a/ b/` (rsync 3.5.0,
# protocol 32, LC_ALL unset) copying a 12-byte and a 5000-byte file into an empty directory.
RSYNC_STATS_OUTPUT = """
Number of files: 4 (reg: 2, dir: 2)
Number of created files: 3 (reg: 2, dir: 1)
Number of deleted files: 0
Number of regular files transferred: 2
Total file size: 5,012 bytes
Total transferred file size: 5,012 bytes
Literal data: 5,012 bytes
Matched data: 0 bytes
File list size: 0
File list generation time: 0.001 seconds
File list transfer time: 0.000 seconds
Total bytes sent: 5,221
Total bytes received: 66

sent 5,221 bytes  received 66 bytes  10,574.00 bytes/sec
total size is 5,012  speedup is 0.95
"""

# Shape of rsync 3.0.x --stats output (before "regular" files were counted apart).
RSYNC_30_STATS_OUTPUT = """
Number of files: 1234567
Number of files transferred: 1000
Total file size: 1234567890 bytes
Total transferred file size: 98765 bytes
Literal data: 98000 bytes
Matched data: 765 bytes
File list size: 32
Total bytes sent: 99000
Total bytes received: 1500
"""

BASE = ['rsync', '--archive', '--protect-args', '--numeric-ids', '--stats']

# From the PostgreSQL 15 documentation, "Backing Up the Data Directory", and basebackup.c.
PG_DOC_DIRECTORIES_WHOSE_CONTENTS_ARE_SKIPPED = [
    'pg_stat_tmp',
    'pg_replslot',
    'pg_dynshmem',
    'pg_notify',
    'pg_serial',
    'pg_snapshots',
    'pg_subtrans',
]
PG_DOC_FILES_SKIPPED = [
    'postgresql.auto.conf.tmp',
    'current_logfiles.tmp',
    'pg_internal.init',
    'backup_label',
    'tablespace_map',
    'backup_manifest',
    'postmaster.pid',
    'postmaster.opts',
    'pgsql_tmp',
]


# --------------------------------------------------------------------------- constants


def test_excludes_contain_every_pg_doc_item():
    for directory in PG_DOC_DIRECTORIES_WHOSE_CONTENTS_ARE_SKIPPED:
        assert '/%s/*' % directory in rsync.PGDATA_EXCLUDES
    # pg_wal's contents too, and pg_wal itself: the backup makes it again (a symlink must not travel).
    assert '/pg_wal' in rsync.PGDATA_EXCLUDES and '/pg_wal/*' not in rsync.PGDATA_EXCLUDES
    for name in PG_DOC_FILES_SKIPPED:
        assert name in rsync.PGDATA_EXCLUDES or name + '*' in rsync.PGDATA_EXCLUDES
    assert 'pg_internal.init*' in rsync.PGDATA_EXCLUDES
    assert 'pgsql_tmp*' in rsync.PGDATA_EXCLUDES
    assert '/recovery.signal' in rsync.PGDATA_EXCLUDES
    assert '/standby.signal' in rsync.PGDATA_EXCLUDES
    assert '/barman_wal_spool' in rsync.PGDATA_EXCLUDES  # a recovered copy's look-ahead spool


def test_excludes_are_immutable_and_unique():
    assert isinstance(rsync.PGDATA_EXCLUDES, tuple)
    assert len(set(rsync.PGDATA_EXCLUDES)) == len(rsync.PGDATA_EXCLUDES)


def test_pg_control_is_separate():
    assert rsync.PG_CONTROL == 'global/pg_control'
    assert rsync.PG_CONTROL_EXCLUDE == '/global/pg_control'
    assert rsync.PG_CONTROL_EXCLUDE not in rsync.PGDATA_EXCLUDES


# --------------------------------------------------------------------------- rsync_argv


def test_rsync_argv_minimal():
    assert rsync.rsync_argv('/src/', '/dst/') == BASE + ['--', '/src/', '/dst/']


def test_rsync_argv_everything():
    target = ssh.validate_ssh_target('postgres', 'db1.example.com', 2222)
    rsh = ssh.rsync_rsh(known_hosts_file='/etc/barman/known_hosts', port=target.port)
    argv = rsync.rsync_argv(
        ssh.remote_path(target, '/var/lib/postgresql/15/main/'),
        '/srv/barman/db1/base/20240101T000000/data/',
        rsh=rsh,
        excludes=['/pg_wal/*', 'pgsql_tmp*'],
        link_dest='/srv/barman/db1/base/20231231T000000/data',
        checksum=True,
        files_from='/tmp/list',
        bandwidth_limit_kbps=10240,
        compress=True,
        delete=True,
        dry_run=True,
        extra=['--partial', '--timeout=600'],
    )
    assert argv == BASE + [
        '--checksum',
        '--compress',
        '--delete',
        '--dry-run',
        '--bwlimit=10240',
        (
            "--rsh=ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o '%s'"
            ' -o UserKnownHostsFile=/etc/barman/known_hosts'
            ' -o ConnectTimeout=10 -o ServerAliveInterval=15 -p 2222'
        )
        % ssh.BULK_CIPHERS,
        '--link-dest=/srv/barman/db1/base/20231231T000000/data',
        '--files-from=/tmp/list',
        '--exclude=/pg_wal/*',
        '--exclude=pgsql_tmp*',
        '--partial',
        '--timeout=600',
        '--',
        'postgres@db1.example.com:/var/lib/postgresql/15/main/',
        '/srv/barman/db1/base/20240101T000000/data/',
    ]


def test_rsync_argv_without_protect_args():
    assert rsync.rsync_argv('/a/', '/b/', protect_args=False) == [
        'rsync',
        '--archive',
        '--numeric-ids',
        '--stats',
        '--',
        '/a/',
        '/b/',
    ]


@pytest.mark.parametrize(
    'args, kwargs',
    [
        (('-e', '/b/'), {}),
        (('/a/', '--rsh=sh'), {}),
        (('', '/b/'), {}),
        (('/a/\n', '/b/'), {}),
        ((None, '/b/'), {}),
        (('/a/', '/b/'), dict(link_dest='relative/prev')),
        (('/a/', '/b/'), dict(link_dest='')),
        (('/a/', '/b/'), dict(bandwidth_limit_kbps=0)),
        (('/a/', '/b/'), dict(bandwidth_limit_kbps=True)),
        (('/a/', '/b/'), dict(bandwidth_limit_kbps='100')),
        (('/a/', '/b/'), dict(excludes='/pg_wal/*')),
        (('/a/', '/b/'), dict(excludes=['ok', 'bad\n'])),
        (('/a', '/b/'), dict(excludes=rsync.PGDATA_EXCLUDES)),  # anchored patterns need 'a/'
        (('/a/', '/b/'), dict(rsh='ssh\n-o x')),
        (('/a/', '/b/'), dict(files_from='')),
        (('/a/', '/b/'), dict(extra='--partial')),
        (('/a/', '/b/'), dict(extra=['-e', 'sh'])),
        (('/a/', '/b/'), dict(extra=['-ave'])),
        (('/a/', '/b/'), dict(extra=['--rsh=ssh -o StrictHostKeyChecking=no'])),
        (('/a/', '/b/'), dict(extra=['--rsync-path=sudo rsync'])),
        (('/a/', '/b/'), dict(extra=['--old-args'])),
        (('/a/', '/b/'), dict(extra=['--no-protect-args'])),
        (('/a/', '/b/'), dict(extra=['--no-secluded-args'])),
        (('/a/', '/b/'), dict(extra=['--'])),
        (('/a/', '/b/'), dict(extra=['nodash'])),
    ],
)
def test_rsync_argv_refuses(args, kwargs):
    with pytest.raises(rsync.InvalidRsyncArgument) as caught:
        rsync.rsync_argv(*args, **kwargs)
    assert isinstance(caught.value, BarmanError)
    assert isinstance(caught.value, ValueError)


def test_rsync_argv_never_disables_host_key_checking():
    rsh = ssh.rsync_rsh(known_hosts_file='/k', control_path='/c/%C')
    argv = rsync.rsync_argv('u@h:/a/', '/b/', rsh=rsh, excludes=rsync.PGDATA_EXCLUDES)
    joined = ' '.join(argv)
    assert 'StrictHostKeyChecking=yes' in joined
    assert 'StrictHostKeyChecking=no' not in joined
    assert '/dev/null' not in joined
    assert [a for a in argv if a.startswith('--rsh=') or a == '-e'] == ['--rsh=' + rsh]


# --------------------------------------------------------------------------- exit codes


@pytest.mark.parametrize(
    'code, vanished_ok, ok',
    [
        (0, True, True),
        (0, False, True),
        (24, True, True),
        (24, False, False),
        (23, True, False),
        (1, True, False),
        (12, True, False),
        (30, True, False),
        (35, True, False),
        (255, True, False),
        (99, True, False),
        (-9, True, False),
    ],
)
def test_interpret_rsync_exit_ok(code, vanished_ok, ok):
    result = rsync.interpret_rsync_exit(code, vanished_ok=vanished_ok)
    assert isinstance(result, rsync.RsyncResult)
    assert result.ok is ok
    assert result.meaning


def test_interpret_rsync_exit_meanings():
    assert rsync.interpret_rsync_exit(0) == rsync.RsyncResult(True, 'Success', None)
    assert rsync.interpret_rsync_exit(23).meaning == 'Partial transfer due to error'
    assert rsync.interpret_rsync_exit(24).meaning == 'Partial transfer due to vanished source files'
    assert rsync.interpret_rsync_exit(12).meaning == 'Error in rsync protocol data stream'
    assert rsync.interpret_rsync_exit(30).meaning == 'Timeout in data send/receive'
    assert rsync.interpret_rsync_exit(35).meaning == 'Timeout waiting for daemon connection'
    result = rsync.interpret_rsync_exit(255)
    assert result.meaning == 'ssh failed'
    assert result.hint == 'ssh failed: check the host key in known_hosts and that the key is authorized'
    assert rsync.interpret_rsync_exit(99).meaning == 'Unknown rsync exit code 99'
    assert rsync.interpret_rsync_exit(-15).meaning == 'rsync was killed by signal 15'


@pytest.mark.parametrize('code', [None, '0', True, 1.0])
def test_interpret_rsync_exit_refuses_non_integers(code):
    with pytest.raises(rsync.InvalidRsyncArgument):
        rsync.interpret_rsync_exit(code)


def test_check_rsync_exit():
    assert rsync.check_rsync_exit(24).ok
    with pytest.raises(rsync.RsyncFailed) as caught:
        rsync.check_rsync_exit(255, stderr='Host key verification failed.')
    error = caught.value
    assert isinstance(error, BarmanError)
    assert error.data == dict(rc=255, stderr='Host key verification failed.')
    assert 'known_hosts' in str(error)
    assert error.fail_json_kwargs()['rc'] == 255
    with pytest.raises(rsync.RsyncFailed):
        rsync.check_rsync_exit(24, vanished_ok=False)


# --------------------------------------------------------------------------- stats


def test_parse_rsync_stats_real_output():
    assert rsync.parse_rsync_stats(RSYNC_STATS_OUTPUT) == dict(
        number_of_files=4,
        regular_files_transferred=2,
        total_file_size=5012,
        total_transferred_file_size=5012,
        literal_data=5012,
        matched_data=0,
        bytes_sent=5221,
        bytes_received=66,
    )


def test_parse_rsync_stats_old_format_and_big_numbers():
    stats = rsync.parse_rsync_stats(RSYNC_30_STATS_OUTPUT)
    assert stats['number_of_files'] == 1234567
    assert stats['regular_files_transferred'] == 1000
    assert stats['total_file_size'] == 1234567890
    assert stats['bytes_received'] == 1500


def test_parse_rsync_stats_thousands_separators():
    stats = rsync.parse_rsync_stats('Total file size: 1,234,567,890 bytes\nLiteral data: 1.234 bytes\n')
    assert stats['total_file_size'] == 1234567890
    assert stats['literal_data'] == 1234


def test_parse_rsync_stats_missing_fields_are_none():
    stats = rsync.parse_rsync_stats('rsync: connection unexpectedly closed\n')
    assert set(stats) == {
        'number_of_files',
        'regular_files_transferred',
        'total_file_size',
        'total_transferred_file_size',
        'literal_data',
        'matched_data',
        'bytes_sent',
        'bytes_received',
    }
    assert all(value is None for value in stats.values())


def test_parse_rsync_stats_refuses_bytes():
    with pytest.raises(rsync.InvalidRsyncArgument):
        rsync.parse_rsync_stats(b'Total bytes sent: 1')


# --------------------------------------------------------------------------- real rsync runs


def _write(root, relative_path, content='x'):
    path = os.path.join(str(root), relative_path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'w') as handle:
        handle.write(content)


def _relative_files(root):
    found = set()
    for directory, subdirectories, files in os.walk(str(root)):
        for name in subdirectories + files:
            found.add(os.path.relpath(os.path.join(directory, name), str(root)))
    return found


def _fake_pgdata(root):
    for relative_path in [
        'PG_VERSION',
        'postgresql.auto.conf',
        'postgresql.auto.conf.tmp',
        'current_logfiles',
        'current_logfiles.tmp',
        'backup_label',
        'backup_label.old',
        'tablespace_map',
        'backup_manifest',
        'postmaster.pid',
        'postmaster.opts',
        'recovery.signal',
        'standby.signal',
        'base/1/1259',
        'base/1/1259_fsm',
        'base/1/pg_internal.init',
        'base/1/pg_internal.init.12345',
        'base/pgsql_tmp/pgsql_tmp123.0',
        'base/16384/pgsql_tmp_stray',
        'global/1262',
        'global/pg_control',
        'global/pg_internal.init',
        'pg_wal/000000010000000000000001',
        'pg_wal/archive_status/000000010000000000000001.done',
        'pg_replslot/slot1/state',
        'pg_stat_tmp/pgss_query_texts.stat',
        'pg_dynshmem/mmap.1',
        'pg_notify/0000',
        'pg_serial/0000',
        'pg_snapshots/00000003-0000001B-1',
        'pg_subtrans/0000',
        'pg_xact/0000',
        'pg_logical/replorigin_checkpoint',
        'pg_tblspc/.keep',
        'log/postgresql.log',
        # Files with these names deeper down are not special to PostgreSQL: keep them.
        'base/1/pg_wal/keep',
        'log/recovery.signal',
    ]:
        _write(root, relative_path)


def test_real_rsync_skips_what_postgresql_skips(tmp_path):
    pgdata = tmp_path / 'pgdata'
    backup = tmp_path / 'backup'
    _fake_pgdata(pgdata)
    argv = rsync.rsync_argv(
        str(pgdata) + '/', str(backup) + '/', excludes=rsync.PGDATA_EXCLUDES + (rsync.PG_CONTROL_EXCLUDE,)
    )
    result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, check=False)
    assert rsync.interpret_rsync_exit(result.returncode).ok, result.stderr

    arrived = _relative_files(backup)
    for kept in [
        'PG_VERSION',
        'postgresql.auto.conf',
        'current_logfiles',
        'backup_label.old',
        'base/1/1259',
        'base/1/1259_fsm',
        'global/1262',
        'pg_xact/0000',
        'pg_logical/replorigin_checkpoint',
        'pg_tblspc/.keep',
        'log/postgresql.log',
        'base/1/pg_wal/keep',
        'log/recovery.signal',
    ]:
        assert kept in arrived, kept
    for skipped in [
        'postgresql.auto.conf.tmp',
        'current_logfiles.tmp',
        'backup_label',
        'tablespace_map',
        'backup_manifest',
        'postmaster.pid',
        'postmaster.opts',
        'recovery.signal',
        'standby.signal',
        'base/1/pg_internal.init',
        'base/1/pg_internal.init.12345',
        'global/pg_internal.init',
        'base/pgsql_tmp',
        'base/16384/pgsql_tmp_stray',
        'global/pg_control',
    ]:
        assert skipped not in arrived, skipped
    for directory in PG_DOC_DIRECTORIES_WHOSE_CONTENTS_ARE_SKIPPED:
        assert (backup / directory).is_dir(), directory
        assert list((backup / directory).iterdir()) == [], directory
    assert not os.path.lexists(str(backup / 'pg_wal')), 'pg_wal is made by the backup, not copied'

    stats = rsync.parse_rsync_stats(result.stdout)
    assert stats['regular_files_transferred'] == len([p for p in arrived if (backup / p).is_file()])


@pytest.mark.parametrize('jobs_pass', [None, 'directories'])
def test_real_rsync_never_copies_a_symlinked_pg_wal(tmp_path, jobs_pass):
    # initdb --waldir: pg_wal is a link to the WAL disk. Copied as a link, a restored copy would write there.
    pgdata = tmp_path / 'pgdata'
    wal_disk = tmp_path / 'wal'
    backup = tmp_path / 'backup'
    _write(pgdata, 'PG_VERSION')
    _write(wal_disk, '000000010000000000000001')
    _write(wal_disk, 'archive_status/000000010000000000000001.ready')
    os.symlink(str(wal_disk), str(pgdata / 'pg_wal'))
    # The parallel copy's first pass makes the directory tree alone.
    extra = ['--include=*/', '--exclude=*'] if jobs_pass else []
    argv = rsync.rsync_argv(str(pgdata) + '/', str(backup) + '/', excludes=rsync.PGDATA_EXCLUDES, extra=extra)
    subprocess.run(argv, stdout=subprocess.PIPE, check=True)
    assert not os.path.lexists(str(backup / 'pg_wal'))


def test_real_rsync_copies_pg_control_last_pass(tmp_path):
    pgdata = tmp_path / 'pgdata'
    backup = tmp_path / 'backup'
    _fake_pgdata(pgdata)
    (backup / 'global').mkdir(parents=True)
    argv = rsync.rsync_argv(str(pgdata / rsync.PG_CONTROL), str(backup / rsync.PG_CONTROL))
    subprocess.run(argv, stdout=subprocess.PIPE, check=True)
    assert _relative_files(backup) == {'global', 'global/pg_control'}


def test_real_rsync_link_dest_and_odd_names(tmp_path):
    source = tmp_path / 'src'
    previous = tmp_path / 'prev'
    destination = tmp_path / 'dst'
    names = ['a b', "quote'name", '-dash', 'semi;colon', '$(touch pwned)']
    for name in names:
        _write(source, 'dir/' + name, name)
    first = rsync.rsync_argv(str(source) + '/', str(previous) + '/')
    subprocess.run(first, stdout=subprocess.PIPE, check=True, cwd=str(tmp_path))
    second = rsync.rsync_argv(str(source) + '/', str(destination) + '/', link_dest=str(previous))
    output = subprocess.run(second, stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
    for name in names:
        copied = destination / 'dir' / name
        assert copied.read_text() == name
        assert os.stat(str(copied)).st_ino == os.stat(str(previous / 'dir' / name)).st_ino
    assert not (tmp_path / 'pwned').exists()
    assert rsync.parse_rsync_stats(output)['regular_files_transferred'] == 0


def test_real_rsync_files_from(tmp_path):
    source = tmp_path / 'src'
    destination = tmp_path / 'dst'
    for name in ['base/1/1', 'base/1/2', 'global/3']:
        _write(source, name)
    listing = tmp_path / 'list'
    listing.write_text('base/1/2\nglobal/3\n')
    argv = rsync.rsync_argv(str(source) + '/', str(destination) + '/', files_from=str(listing))
    subprocess.run(argv, stdout=subprocess.PIPE, check=True)
    assert _relative_files(destination) == {'base', 'base/1', 'base/1/2', 'global', 'global/3'}


def test_rsync_argv_whole_file_keeps_link_dest():
    argv = rsync.rsync_argv('/src/', '/dst/', link_dest='/prev', whole_file=True)
    assert argv == BASE + ['--whole-file', '--link-dest=/prev', '--', '/src/', '/dst/']
    assert '--whole-file' not in rsync.rsync_argv('/src/', '/dst/', link_dest='/prev')


def test_real_rsync_whole_file_still_links_unchanged_files(tmp_path):
    source, previous, destination = tmp_path / 'src', tmp_path / 'prev', tmp_path / 'dst'
    _write(source, 'base/1/same', 'same')
    _write(source, 'base/1/changed', 'old' * 1000)
    subprocess.run(rsync.rsync_argv(str(source) + '/', str(previous) + '/'), stdout=subprocess.PIPE, check=True)
    _write(source, 'base/1/changed', 'new' * 1000)
    os.utime(str(source / 'base/1/changed'), (2000000000, 2000000000))
    argv = rsync.rsync_argv(str(source) + '/', str(destination) + '/', link_dest=str(previous), whole_file=True)
    output = subprocess.run(argv, stdout=subprocess.PIPE, check=True, universal_newlines=True).stdout
    assert os.stat(str(destination / 'base/1/same')).st_ino == os.stat(str(previous / 'base/1/same')).st_ino
    assert (destination / 'base/1/changed').read_text() == 'new' * 1000
    assert (previous / 'base/1/changed').read_text() == 'old' * 1000
    stats = rsync.parse_rsync_stats(output)
    assert stats['regular_files_transferred'] == 1
    assert stats['matched_data'] == 0  # nothing taken from the older copy: sent whole
