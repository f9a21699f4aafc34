# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for runtime/walreceiver.py: the SSH forced command, run in-process with real files."""

import hashlib
import io
import os
import random
import struct
import threading
import zlib

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, wal, wal_store
from ansible_collections.barman.postgresql.runtime import walreceiver, walsender

SEG = 1024 * 1024
SYSID = 7319180283384717360


def seg_name(segno, timeline=1):
    return wal.segment_name(timeline, segno, SEG)


def segment_bytes(name, seed=''):
    header = struct.pack(
        '<HHIQIIQII',
        0xD110,
        0x0002,
        wal.timeline_of(name),
        wal.segment_start_lsn(name, SEG),
        0,
        0,
        SYSID,
        SEG,
        8192,
    )
    rnd = random.Random(name + seed)
    words = [bytes(rnd.getrandbits(8) for _count in range(16)) for _count in range(64)]
    return (header + b''.join(rnd.choice(words) for _count in range(SEG // 16)))[:SEG]


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def home(tmp_path):
    home = tmp_path / 'barman'
    home.mkdir()
    catalog.ensure_directories(catalog.ServerLayout(str(home), 'pg1'))
    return str(home)


@pytest.fixture
def layout(home):
    return catalog.ServerLayout(home, 'pg1')


def run(home, command, stdin=b'', server='pg1', stdout=None, extra=()):
    """Run main() as sshd would; return (exit code, stdout bytes, stderr text)."""
    out = io.BytesIO() if stdout is None else stdout
    err = io.StringIO()
    environ = {} if command is None else {'SSH_ORIGINAL_COMMAND': command}
    code = walreceiver.main(
        ['--barman-home', home, '--server', server, '--no-background'] + list(extra),
        environ=environ,
        stdin=io.BytesIO(stdin),
        stdout=out,
        stderr=err,
    )
    return code, (out.getvalue() if stdout is None else None), err.getvalue()


def put(home, name, data, digest=None, size=None, **kwargs):
    size = len(data) if size is None else size
    stdin = data + ((sha(data) if digest is None else digest) + '\n').encode()
    return run(home, 'put %s %s' % (name, size), stdin, **kwargs)


# -- parse_request ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'command, expected',
    [
        ('put 000000010000000000000001 1048576', ('put', '000000010000000000000001', 1048576, 'sha256')),
        ('put 00000002.history 42', ('put', '00000002.history', 42, 'sha256')),
        (
            'put 000000010000000000000002.00000028.backup 300',
            ('put', '000000010000000000000002.00000028.backup', 300, 'sha256'),
        ),
        ('put 000000010000000000000003.partial 0', ('put', '000000010000000000000003.partial', 0, 'sha256')),
        ('get 000000010000000000000001', ('get', '000000010000000000000001', None, None)),
        ("get '000000010000000000000001'", ('get', '000000010000000000000001', None, None)),
        ('  get   00000002.history  ', ('get', '00000002.history', None, None)),
        ('put 000000010000000000000001 %d' % walreceiver.MAX_SEGMENT_BYTES, None),
        ('put 000000010000000000000001 42 crc32', ('put', '000000010000000000000001', 42, 'crc32')),
        ('put 000000010000000000000001 42 sha256', ('put', '000000010000000000000001', 42, 'sha256')),
        ('stream', ('stream', None, None, None)),
    ],
)
def test_parse_request_accepts(command, expected):
    if expected is None:
        expected = ('put', '000000010000000000000001', walreceiver.MAX_SEGMENT_BYTES, 'sha256')
    assert walreceiver.parse_request(command)[:4] == expected
    assert walreceiver.parse_request(command).keep == (), 'only a fetch keeps a compression'


@pytest.mark.parametrize(
    'command, fragment',
    [
        (None, "refused request ''"),
        ('', "refused request ''"),
        ('bash', "refused request 'bash'"),
        ('get', "refused request 'get'"),
        ('put 000000010000000000000001', "refused request 'put 000000010000000000000001'"),
        ('put 000000010000000000000001 notanumber', 'notanumber'),
        ('put 000000010000000000000001 -1', "'put 000000010000000000000001 -1'"),
        ('put 000000010000000000000001 1.5', '1.5'),
        ('get 000000010000000000000001;rm -rf /', 'rm -rf /'),
        ('get 000000010000000000000001 extra', 'extra'),
        ('GET 000000010000000000000001', 'GET'),
        ('rm 000000010000000000000001', "'rm 000000010000000000000001'"),
        ('get "unterminated', 'unterminated'),
        ('put 000000010000000000000001 %d' % (walreceiver.MAX_SEGMENT_BYTES + 1), 'more than a WAL segment'),
        ('put 000000010000000000000001 42 md5', "unknown checksum 'md5'"),
        ('put 000000010000000000000001 42 crc32 extra', 'extra'),
    ],
)
def test_parse_request_refuses(command, fragment):
    with pytest.raises(walreceiver.RequestError) as info:
        walreceiver.parse_request(command)
    assert fragment in str(info.value)
    assert walreceiver.USAGE in str(info.value)


@pytest.mark.parametrize(
    'command, bad',
    [
        ('get ../x', '../x'),
        ('get /etc/passwd', '/etc/passwd'),
        ('get 000000010000000000000001/../../x', '000000010000000000000001/../../x'),
        ('get 000000000000000000000001', '000000000000000000000001'),  # timeline 0
        ('get 00000001000000000000000a', '00000001000000000000000a'),  # lower case
        ('put ../../.ssh/authorized_keys 10', '../../.ssh/authorized_keys'),
        ("get '000000010000000000000001;rm -rf /'", '000000010000000000000001;rm -rf /'),
    ],
)
def test_parse_request_refuses_bad_names(command, bad):
    with pytest.raises(wal.InvalidWalName) as info:
        walreceiver.parse_request(command)
    assert repr(bad) in str(info.value)


def test_parse_request_superscript_size_is_a_request_error():
    with pytest.raises(walreceiver.RequestError):
        walreceiver.parse_request('put 000000010000000000000001 \u00b2')


# -- main: put ---------------------------------------------------------------------------------------


def test_put_stores_the_file(home, layout):
    name = seg_name(1)
    data = segment_bytes(name)
    code, out, err = put(home, name, data)
    assert (code, out, err) == (walreceiver.EXIT_OK, b'', '')
    with open(os.path.join(layout.incoming_dir, name), 'rb') as handle:
        assert handle.read() == data
    assert sorted(os.listdir(layout.incoming_dir)) == [name]
    assert not os.path.exists(os.path.join(layout.wals_dir, name[:16]))  # --no-background: not processed


def test_put_identical_again_is_ok(home, layout):
    name = seg_name(1)
    data = segment_bytes(name)
    assert put(home, name, data)[0] == 0
    assert put(home, name, data) == (0, b'', '')
    assert os.listdir(layout.errors_dir) == []


def test_put_different_file_same_name_is_refused(home, layout):
    name = seg_name(1)
    data = segment_bytes(name)
    put(home, name, data)
    code, _out, err = put(home, name, segment_bytes(name, seed='other'))
    assert code == walreceiver.EXIT_REFUSED
    assert 'refused %s' % name in err and err.startswith('barman-wal-receiver: ')
    with open(os.path.join(layout.incoming_dir, name), 'rb') as handle:
        assert sha(handle.read()) == sha(data)
    assert [e.startswith(name + '.') for e in os.listdir(layout.errors_dir)] == [True]


def test_put_with_a_bad_digest_is_temporary_and_stores_nothing(home, layout):
    name = seg_name(1)
    code, _out, err = put(home, name, segment_bytes(name), digest='0' * 64)
    assert code == walreceiver.EXIT_TEMPORARY
    assert 'damaged' in err and '0' * 64 in err
    assert os.listdir(layout.incoming_dir) == []


def test_put_cut_short_is_temporary_and_stores_nothing(home, layout):
    name = seg_name(1)
    data = segment_bytes(name)
    code, _out, err = run(home, 'put %s %d' % (name, SEG), data[:1000])
    assert code == walreceiver.EXIT_TEMPORARY
    assert 'cut short: 1000 of 1048576 bytes' in err
    assert os.listdir(layout.incoming_dir) == []


def test_put_of_a_segment_under_the_wrong_name_is_refused(home, layout):
    code, _out, err = put(home, seg_name(2), segment_bytes(seg_name(1)))
    assert code == walreceiver.EXIT_REFUSED
    assert seg_name(2) in err and 'starts at LSN 0/100000' in err
    assert os.listdir(layout.incoming_dir) == []


def test_put_of_a_malformed_history_is_refused(home, layout):
    code, _out, err = put(home, '00000002.history', b'garbage\n')
    assert code == walreceiver.EXIT_REFUSED
    assert 'garbage' in err
    assert os.listdir(layout.incoming_dir) == []


def test_put_bigger_than_a_segment_can_be_is_refused(home, layout):
    code, _out, err = run(home, 'put %s %d' % (seg_name(1), walreceiver.MAX_SEGMENT_BYTES + 1), b'')
    assert code == walreceiver.EXIT_REFUSED
    assert 'more than a WAL segment can be' in err
    assert os.listdir(layout.incoming_dir) == []


# -- main: get ---------------------------------------------------------------------------------------


def test_get_from_incoming(home):
    name = seg_name(1)
    data = segment_bytes(name)
    put(home, name, data)
    assert run(home, 'get %s' % name) == (0, data, '')


@pytest.mark.parametrize('compression', wal_store.COMPRESSIONS)
def test_get_after_processing(home, tmp_path, compression):
    name = seg_name(1)
    data = segment_bytes(name)
    put(home, name, data)
    wal_store.WalArchive(home, 'pg1').process_incoming(compression)
    out_path = tmp_path / 'restored'
    with open(str(out_path), 'wb') as out:  # a real file, like sshd's stdout: zstd and lz4 write to its fd
        code, _out, err = run(home, 'get %s' % name, stdout=out)
    assert (code, err) == (0, '')
    assert out_path.read_bytes() == data


def test_get_missing_is_not_archived(home):
    code, out, err = run(home, 'get %s' % seg_name(7))
    assert code == walreceiver.EXIT_NOT_ARCHIVED
    assert out == b''
    assert seg_name(7) in err and 'not in the archive' in err
    assert run(home, 'get 00000002.history')[0] == walreceiver.EXIT_NOT_ARCHIVED


def _damage(path, how):
    with open(path, 'rb') as handle:
        stored = handle.read()
    if how == 'truncated':
        damaged = stored[: len(stored) // 2]
    else:  # the header intact, the compressed body overwritten
        damaged = stored[:20] + bytes(255 - b for b in stored[20:])
    with open(path, 'wb') as handle:
        handle.write(damaged)


@pytest.mark.parametrize('how', ['truncated', 'overwritten'])
@pytest.mark.parametrize('compression', ['gzip', 'zstd', 'lz4'])
def test_get_of_a_damaged_file_is_temporary_never_not_archived(home, tmp_path, compression, how):
    """A decompression error (EOFError, zlib.error, a failing zstd or lz4) is not "not archived":
    the sender must not report the file absent, and must drop what was written before the error."""
    name = seg_name(1)
    put(home, name, segment_bytes(name))
    wal_archive = wal_store.WalArchive(home, 'pg1')
    wal_archive.process_incoming(compression)
    _damage(wal_archive.locate(name), how)
    with open(str(tmp_path / 'restored'), 'wb') as out:
        code, _out, err = run(home, 'get %s' % name, stdout=out)
    assert code == walreceiver.EXIT_TEMPORARY, err
    assert err.startswith('barman-wal-receiver: get %s failed: ' % name), err


def test_get_from_a_missing_archive_is_temporary(home, layout):
    os.rename(layout.incoming_dir, layout.incoming_dir + '.away')  # e.g. the backup disk is not mounted
    code, out, err = run(home, 'get %s' % seg_name(1))
    assert (code, out) == (walreceiver.EXIT_TEMPORARY, b'')
    assert 'does not exist' in err


@pytest.mark.parametrize(
    'command, fragment',
    [
        ('get ../x', "'../x' is not a WAL file name"),
        ('get 000000010000000000000001;rm -rf /', 'rm -rf /'),
        (
            "get '000000010000000000000001;rm -rf /'",
            "'000000010000000000000001;rm -rf /' is not a WAL file name",
        ),
        ('bash', "refused request 'bash'"),
        ('', "refused request ''"),
        (None, "refused request ''"),
        ('put 000000010000000000000001 notanumber', 'notanumber'),
        ('get', "refused request 'get'"),
        ('scp -t /var/lib/barman', 'scp -t /var/lib/barman'),
    ],
)
def test_bad_requests_are_refused(home, layout, command, fragment):
    code, out, err = run(home, command, b'payload')
    assert code == walreceiver.EXIT_REFUSED
    assert out == b''
    assert fragment in err
    assert os.listdir(layout.incoming_dir) == []


def test_unknown_server_directory(home):
    code, out, err = run(home, 'get %s' % seg_name(1), server='nosuch')
    assert code != 0
    assert code == walreceiver.EXIT_TEMPORARY
    assert 'the archive of server nosuch does not exist' in err
    assert out == b''


def test_invalid_server_name_is_refused(home):
    code, _out, err = run(home, 'get %s' % seg_name(1), server='../pg1')
    assert code == walreceiver.EXIT_REFUSED
    assert '../pg1' in err


def test_exit_codes_stay_below_126_and_not_archived_is_no_crash():
    codes = [walreceiver.EXIT_OK, walreceiver.EXIT_REFUSED, walreceiver.EXIT_TEMPORARY, walreceiver.EXIT_NOT_ARCHIVED]
    assert codes == [0, 2, 3, 66]
    # Python's uncaught exception exits 1, ssh 255, a shell 126 or 127: none of them may mean "not archived".
    assert walreceiver.EXIT_NOT_ARCHIVED not in (1, 126, 127, 255)


def test_put_of_an_empty_segment_is_refused(home, layout):
    code, _out, err = put(home, seg_name(1), b'')
    assert code in (walreceiver.EXIT_REFUSED, walreceiver.EXIT_TEMPORARY)
    assert '%s is empty' % seg_name(1) in err
    assert os.listdir(layout.incoming_dir) == []


# -- stream -------------------------------------------------------------------------------------------


def frame(name, data, digest=None):
    return ('put %s %d\n' % (name, len(data))).encode() + data + ((digest or sha(data)) + '\n').encode()


def test_stream_stores_each_file_and_answers_each_in_order(home, layout):
    files = [(seg_name(n), segment_bytes(seg_name(n))) for n in (1, 2, 3)]
    code, out, err = run(home, 'stream', b''.join(frame(n, d) for n, d in files))
    assert (code, err) == (walreceiver.EXIT_OK, '')
    assert out.decode().splitlines() == ['ok %s stored' % n for n, _d in files]
    for name, data in files:
        with open(os.path.join(layout.incoming_dir, name), 'rb') as handle:
            assert sha(handle.read()) == sha(data)
    assert not [e for e in os.listdir(layout.incoming_dir) if e.startswith('.')], 'temporary files left'


def test_stream_answers_a_bad_file_and_goes_on(home, layout):
    one, two, three = (seg_name(n) for n in (1, 2, 3))
    put(home, two, segment_bytes(two))
    stdin = (
        frame(one, segment_bytes(one), digest='0' * 64)  # damaged on the way
        + frame(two, segment_bytes(two, seed='other'))  # a different file under an archived name
        + frame(three, segment_bytes(one))  # a segment under another segment's name
        + frame(two, segment_bytes(two))  # the identical one again
    )
    code, out, _err = run(home, 'stream', stdin)
    answers = out.decode().splitlines()
    assert code == walreceiver.EXIT_OK
    assert answers[0].startswith('error %s ' % one) and 'damaged' in answers[0]
    assert answers[1].startswith('refused %s ' % two) and 'different file' in answers[1]
    assert answers[2].startswith('refused %s ' % three)
    assert answers[3] == 'ok %s identical' % two
    assert sorted(os.listdir(layout.incoming_dir)) == [two]


@pytest.mark.parametrize('line', [b'get 000000010000000000000001\n', b'put ../x 10\n', b'rm -rf /\n', b'stream\n'])
def test_stream_ends_at_a_request_it_cannot_frame(home, layout, line):
    name = seg_name(1)
    code, out, _err = run(home, 'stream', frame(name, segment_bytes(name)) + line + frame(seg_name(2), b'x'))
    answers = out.decode().splitlines()
    assert code == walreceiver.EXIT_REFUSED
    assert answers[0] == 'ok %s stored' % name and answers[1].startswith('refused - ') and len(answers) == 2
    assert sorted(os.listdir(layout.incoming_dir)) == [name]


def test_stream_cut_short_stores_nothing_of_the_cut_file(home, layout):
    name = seg_name(1)
    code, out, _err = run(home, 'stream', frame(name, segment_bytes(name))[:1000])
    assert code == walreceiver.EXIT_OK and out.decode().startswith('error %s ' % name)
    assert os.listdir(layout.incoming_dir) == []


# -- the checksum on the wire -------------------------------------------------------------------------


def test_the_senders_frames_are_what_the_stream_reads(home, layout, tmp_path):
    """Framed by the sender itself (crc32 named in each request), read by the receiver's stream."""
    stdin = io.BytesIO()
    files = [(seg_name(n), segment_bytes(seg_name(n))) for n in (1, 2)]
    for name, data in files:
        path = tmp_path / name
        path.write_bytes(data)
        with open(str(path), 'rb') as source:
            walsender._send_file(source, name, stdin)
    assert stdin.getvalue().startswith(('put %s %d crc32\n' % (files[0][0], SEG)).encode())
    code, out, err = run(home, 'stream', stdin.getvalue())
    assert (code, err) == (walreceiver.EXIT_OK, '')
    assert out.decode().splitlines() == ['ok %s stored' % n for n, _d in files]
    for name, data in files:
        with open(os.path.join(layout.incoming_dir, name), 'rb') as handle:
            assert sha(handle.read()) == sha(data)


def test_put_with_a_crc32_is_checked_against_it(home, layout):
    name = seg_name(1)
    data = segment_bytes(name)
    crc = '%08x' % zlib.crc32(data)
    damaged = data[:5000] + b'\x00' + data[5001:]
    code, _out, err = run(home, 'put %s %d crc32' % (name, SEG), damaged + crc.encode() + b'\n')
    assert code == walreceiver.EXIT_TEMPORARY
    assert 'arrived damaged: crc32 %08x, the sender computed %s' % (zlib.crc32(damaged), crc) in err
    assert os.listdir(layout.incoming_dir) == []
    code, _out, err = run(home, 'put %s %d crc32' % (name, SEG), data + crc.encode() + b'\n')
    assert (code, err) == (walreceiver.EXIT_OK, '')
    assert os.listdir(layout.incoming_dir) == [name]
    code, _out, err = run(home, 'put %s %d' % (name, SEG), data + sha(data).encode() + b'\n')
    assert (code, err) == (walreceiver.EXIT_OK, ''), 'a sha256 sender (before 1.1.0) is still understood'


def test_a_stream_left_open_processes_what_arrived_once_idle(home, layout, monkeypatch):
    """The sender's agent keeps a quiet server's stream open for the next segment: what it delivered
    is processed (compressed into wals/) once nothing more arrives, not only when the stream ends."""
    monkeypatch.setattr(walreceiver, 'PROCESS_WHEN_IDLE_SECONDS', 0.05)
    name = seg_name(1)
    read_fd, write_fd = os.pipe()
    answers_fd, answers_write_fd = os.pipe()
    processed = threading.Event()
    calls = []

    def on_batch():
        calls.append(os.listdir(layout.incoming_dir))
        processed.set()

    with os.fdopen(read_fd, 'rb') as stdin, os.fdopen(answers_write_fd, 'wb') as stdout:
        server = threading.Thread(
            target=walreceiver.serve_stream,
            args=(wal_store.WalArchive(home, 'pg1'), stdin, stdout, on_batch),
        )
        server.start()
        with os.fdopen(write_fd, 'wb') as sender:
            sender.write(frame(name, segment_bytes(name)))
            sender.flush()
            assert processed.wait(60), 'processed while the stream is still open'
        server.join()
    with os.fdopen(answers_fd, 'rb') as answers:
        assert answers.read().decode() == 'ok %s stored\n' % name
    assert calls[0] == [name], 'after the file was durable and answered'
