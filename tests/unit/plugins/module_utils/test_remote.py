# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/remote.py, with real processes: sh, rsync between local directories, and ssh to
a closed port of this host (exit 255). Then the backup's Copier and the recovery's Destination on it."""

import array
import datetime
import fcntl
import os
import termios
import threading
import time

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import backup, recovery, remote, rsync, ssh
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

# Nothing listens on port 1 of the loopback: ssh is refused at once and exits 255.
CLOSED = ssh.validate_ssh_target('postgres', '127.0.0.1', 1)


def local():
    return remote.Remote(None, None)


def tree(root, files):
    """Files under root, {relative path: bytes}; returns root as a str."""
    for name, data in files.items():
        path = os.path.join(str(root), name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, 'wb') as handle:
            handle.write(data)
    return str(root)


FILES = {'base/1/1259': b'x' * 8192, 'base/1/1259_fsm': b'y' * 24576, 'global/pg_control': b'z' * 100}


# -- path -------------------------------------------------------------------------------------------


def test_a_local_path_is_itself_and_a_remote_one_names_the_host():
    assert local().path('/srv/pg/data/') == '/srv/pg/data/'
    assert remote.Remote(CLOSED, None).path('/srv/pg/data/') == 'postgres@127.0.0.1:/srv/pg/data/'
    v6 = ssh.validate_ssh_target('postgres', '::1', 2222)
    assert remote.Remote(v6, None).path('/srv/pg') == 'postgres@[::1]:/srv/pg'


# -- commands ---------------------------------------------------------------------------------------


def test_run_returns_the_exit_code_stdout_and_stderr():
    code, out, err = local().run(['sh', '-c', 'echo "$1"; echo oops >&2; exit 3', 'sh', 'it  said'])
    assert (code, out, err) == (3, 'it  said\n', 'oops')


def test_run_answers_a_local_255_as_any_code():
    assert local().run(['sh', '-c', 'exit 255'])[0] == 255


def test_run_decodes_stdout_as_asked():
    argv = ['sh', '-c', r"printf 'caf\351\n'"]
    assert local().run(argv)[1] == 'caf\ufffd\n'
    assert local().run(argv, errors='surrogateescape')[1].encode('utf-8', 'surrogateescape') == b'caf\xe9\n'


def test_check_output_returns_stdout_or_raises_with_the_exit_code():
    assert local().check_output(['sh', '-c', 'echo ok']) == 'ok\n'
    with pytest.raises(remote.CommandFailed, match=r'^sh failed \(exit 4\): no such thing$') as caught:
        local().check_output(['sh', '-c', 'echo no such thing >&2; exit 4'])
    assert isinstance(caught.value, BarmanError) and caught.value.code == 'BARMAN_ERROR'


def test_an_unreachable_host_raises_ssh_failed(tmp_path):
    with ssh.operation_control_path(str(tmp_path)) as control_path:
        host = remote.Remote(CLOSED, control_path, known_hosts_file=str(tmp_path / 'known_hosts'))
        with pytest.raises(remote.CommandFailed) as caught:
            host.run(['true'])
        assert caught.value.message.startswith('cannot reach postgres@127.0.0.1 over SSH: ')
        assert 'refused' in caught.value.message
        assert caught.value.hint == 'Check that the host is up and that the setup playbook exchanged the keys'
        assert caught.value.code == 'SSH_FAILED'
        with pytest.raises(remote.CommandFailed) as caught:
            host.check_output(['true'])
        assert caught.value.message.startswith('ssh to postgres@127.0.0.1 failed (exit 255): ')
        assert caught.value.hint == 'Check that the setup playbook ran (key exchange) and that the host is up'
        assert caught.value.code == 'SSH_FAILED'
        # No connection was ever opened: ending it is a no-op that does not raise.
        host.close()


def test_closing_is_harmless_and_done_by_the_with_block(tmp_path):
    with local() as host:
        assert host.run(['true'])[0] == 0
    host.close()
    with ssh.operation_control_path(str(tmp_path)) as control_path:
        with remote.Remote(CLOSED, control_path):
            pass


# -- rsync ------------------------------------------------------------------------------------------


def test_rsync_copies_and_returns_its_statistics_and_seconds(tmp_path):
    source = tree(tmp_path / 'src', FILES)
    destination = str(tmp_path / 'dst')
    stats, seconds = local().rsync(source + '/', destination + '/', 'PGDATA')
    assert stats['regular_files_transferred'] == 3
    assert stats['total_transferred_file_size'] == sum(len(data) for data in FILES.values())
    assert isinstance(seconds, float)  # how long: bench/ measures it, a test never bounds it
    with open(os.path.join(destination, 'base/1/1259'), 'rb') as handle:
        assert handle.read() == FILES['base/1/1259']
    stats, _seconds = local().rsync(source + '/', destination + '/', 'PGDATA')
    assert (stats['regular_files_transferred'], stats['total_transferred_file_size']) == (0, 0)


def test_rsync_passes_its_options_on(tmp_path):
    source = tree(tmp_path / 'src', FILES)
    first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
    local().rsync(source + '/', first + '/', 'first', excludes=('/global/pg_control',))
    assert not os.path.exists(os.path.join(first, 'global/pg_control'))
    stats, _seconds = local().rsync(source + '/', second + '/', 'second', link_dest=first)
    assert stats['regular_files_transferred'] == 1  # pg_control; the others are links to the first copy
    assert os.stat(os.path.join(second, 'base/1/1259')).st_nlink == 2


def test_a_missing_source_raises_with_rsyncs_meaning_and_hint(tmp_path):
    with pytest.raises(rsync.RsyncFailed) as caught:
        local().rsync(str(tmp_path / 'nothing') + '/', str(tmp_path / 'dst') + '/', 'PGDATA')
    error = caught.value
    assert error.message.startswith('rsync of PGDATA failed (exit 23, Partial transfer due to error): ')
    assert 'No such file or directory' in error.message
    assert error.hint == 'Some files could not be read or written (often permissions); see stderr'
    assert error.code == 'RSYNC_FAILED'
    assert error.data == {}


def test_a_caller_words_the_failure_its_own_way(tmp_path):
    failure = 'copying %(what)s failed (rsync exit %(code)d, %(meaning)s): %(stderr)s'
    with pytest.raises(rsync.RsyncFailed, match=r'^copying the data to /x failed \(rsync exit 23, Partial '):
        local().rsync(str(tmp_path / 'nothing'), str(tmp_path / 'dst'), 'the data to /x', failure=failure)


def _unread(fd):
    count = array.array('i', [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def _copy_while_a_file_vanishes(tmp_path, vanished_ok):
    """rsync lists 'gone' (and 'kept' after it), then 'gone' is removed before it is sent: exit 24."""
    source = tree(tmp_path / 'src', {'gone': b'g', 'kept': b'k'})
    names = str(tmp_path / 'names')
    os.mkfifo(names)

    def feed():
        with open(names, 'wb', buffering=0) as fifo:  # opens once rsync reads it
            for name in (b'gone\n', b'kept\n'):
                fifo.write(name)
                deadline = time.monotonic() + 60  # a bound for a broken rsync, not a measure
                while _unread(fifo.fileno()) and time.monotonic() < deadline:
                    time.sleep(0.001)
            # rsync read 'kept': it is done with 'gone', which goes now, before the transfer.
            os.unlink(os.path.join(source, 'gone'))

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        return local().rsync(
            source + '/', str(tmp_path / 'dst') + '/', 'vanishing', vanished_ok=vanished_ok, files_from=names
        )
    finally:
        feeder.join()


def test_vanished_files_are_ok_during_a_backup(tmp_path):
    stats, _seconds = _copy_while_a_file_vanishes(tmp_path, vanished_ok=True)
    assert stats['number_of_files'] is not None  # its statistics were read, as after any copy
    assert os.listdir(str(tmp_path / 'dst')) == ['kept']


def test_vanished_files_fail_a_copy_that_must_be_whole(tmp_path):
    with pytest.raises(rsync.RsyncFailed) as caught:
        _copy_while_a_file_vanishes(tmp_path, vanished_ok=False)
    assert 'exit 24, Partial transfer due to vanished source files' in caught.value.message
    assert 'file has vanished' in caught.value.message


# -- list_files -------------------------------------------------------------------------------------


def test_list_files_lists_files_and_links_with_size_and_mtime_excludes_applied(tmp_path):
    source = tree(tmp_path / 'src', dict(FILES, **{'pg_stat_tmp/x': b'12345', 'a name with spaces': b'123'}))
    os.symlink('base/1/1259', os.path.join(source, 'link'))
    os.utime(os.path.join(source, 'base/1/1259'), (1700000000, 1700000000))
    listed = local().list_files(source + '/', excludes=('/pg_stat_tmp/*',))
    assert sorted(name for _size, _mtime, name in listed) == sorted(list(FILES) + ['a name with spaces', 'link'])
    by_name = dict((name, (size, mtime)) for size, mtime, name in listed)
    assert by_name['base/1/1259'] == (8192, 1700000000.0)
    assert by_name['a name with spaces'][0] == 3
    assert by_name['link'][0] == len('base/1/1259')
    assert not os.path.exists(str(tmp_path / 'src' / 'src')), 'listing copied something'


def test_listing_a_missing_source_raises(tmp_path):
    with pytest.raises(rsync.RsyncFailed, match='^listing .*nothing/ failed: .*No such file') as caught:
        local().list_files(str(tmp_path / 'nothing') + '/')
    assert caught.value.code == 'RSYNC_FAILED'


# -- the callers on this host -----------------------------------------------------------------------


def copier(tmp_path, messages, **params):
    options = dict(
        pg_host='127.0.0.1',
        ssh_host=None,
        ssh_user='postgres',
        ssh_port=None,
        ssh_known_hosts=None,
        reuse='link',
        jobs=1,
        bandwidth_limit=None,
        network_compression=False,
    )
    options.update(params)
    made = backup.Copier(options, messages.append, str(tmp_path / '%C'))
    assert made.remote('/srv/pg') == 'postgres@127.0.0.1:/srv/pg'
    made.host = local()  # the same copy from this host's directories instead of over ssh
    return made


@pytest.mark.parametrize('jobs', [1, 3])
def test_the_backup_counts_what_every_rsync_transferred(tmp_path, jobs):
    source = tree(tmp_path / 'pg', FILES)
    messages = []
    made = copier(tmp_path, messages, jobs=jobs)
    made.copy_directory(source, str(tmp_path / 'backup1'), None, None, 'PGDATA', excludes=('/global/pg_control',))
    assert made.stats['files'] == 2
    assert made.stats['transferred_bytes'] == 8192 + 24576
    assert isinstance(made.stats['copy_seconds'], float)
    assert messages and all(m.startswith('copied PGDATA') for m in messages), messages
    assert messages[-1].endswith(' s') and ' bytes transferred, ' in messages[-1]


def test_the_backup_links_to_its_reference_and_checksums_recent_files(tmp_path):
    source = tree(tmp_path / 'pg', FILES)
    messages = []
    made = copier(tmp_path, messages)
    made.copy_directory(source, str(tmp_path / 'backup1'), None, None, 'PGDATA')
    began = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=1)
    made.copy_directory(source, str(tmp_path / 'backup2'), str(tmp_path / 'backup1'), began, 'PGDATA')
    assert os.stat(str(tmp_path / 'backup2' / 'base/1/1259')).st_nlink == 2
    assert messages[-1].startswith('copied PGDATA (checksum of 3 recent files): 0 files, 0 bytes')


def test_the_backup_words_its_failures_as_before(tmp_path):
    with pytest.raises(BarmanError, match=r'^rsync of PGDATA failed \(exit 23, ') as caught:
        copier(tmp_path, []).copy_directory(str(tmp_path / 'nothing'), str(tmp_path / 'b'), None, None, 'PGDATA')
    assert caught.value.code == 'RSYNC_FAILED'
    assert copier(tmp_path, []).ssh_run(['sh', '-c', r"printf '\377'"]) == '\udcff'


def destination(tmp_path):
    return recovery.Destination({}, str(tmp_path / 'copy'), str(tmp_path / '%C'))


def test_the_recovery_asks_its_questions_on_the_destination(tmp_path):
    place = destination(tmp_path)
    assert place.first_entry(place.directory) == ''
    tree(place.directory, {'PG_VERSION': b'15\n'})
    os.symlink('/nowhere', os.path.join(place.directory, 'pg_wal'))
    assert place.first_entry(place.directory) in ('PG_VERSION', 'pg_wal')
    assert place.run(['test', '-e', os.path.join(place.directory, 'PG_VERSION')]) == (0, '')
    mounts = place.filesystems([place.directory, str(tmp_path / 'not' / 'yet')])
    assert mounts[place.directory][0] == mounts[str(tmp_path / 'not' / 'yet')][0]  # free space moves meanwhile
    assert mounts[place.directory][1] > 0
    place.unlink_pg_wal_link()
    assert not os.path.lexists(os.path.join(place.directory, 'pg_wal'))
    place.close()


def test_the_recovery_copies_whole_or_words_its_failure_as_before(tmp_path):
    source = tree(tmp_path / 'backup', FILES)
    place = destination(tmp_path)
    stats = place.rsync(source + '/', place.directory + '/', 'the data directory', extra=['--mkpath'])
    assert stats['regular_files_transferred'] == 3
    with pytest.raises(BarmanError) as caught:
        place.rsync(str(tmp_path / 'nothing') + '/', place.directory + '/', 'the data directory')
    assert caught.value.message.startswith(
        'copying the data directory to %s/ failed (rsync exit 23, Partial transfer due to error): ' % place.directory
    )
    assert caught.value.code == 'RSYNC_FAILED'
