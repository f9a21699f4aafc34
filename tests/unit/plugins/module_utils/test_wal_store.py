# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/wal_store.py with real files: synthetic 1 MB WAL segments in tmp_path."""

import functools
import gzip
import hashlib
import io
import json
import os
import time
import random
import stat
import struct

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    identityfile,
    infofile,
    lockfile,
    wal,
    wal_store,
    xlogdb,
)

SEG = 1024 * 1024  # the smallest segment size PostgreSQL allows
SYSID = 7319180283384717360
OTHER_SYSID = 7319180283384717361
HEADER = struct.Struct('<HHIQIIQII')
MAGIC = {
    'gzip': b'\x1f\x8b',
    'zstd': b'\x28\xb5\x2f\xfd',
    'lz4': b'\x04\x22\x4d\x18',
}
HISTORY_2 = '1\t0/380000\tno recovery target specified\n'
# What PostgreSQL 15 writes at the end of a base backup (pg_backup_stop), for 1 MB segments.
BACKUP_NAME = '000000010000000000000002.00000028.backup'
BACKUP_HISTORY = (
    b'START WAL LOCATION: 0/200028 (file 000000010000000000000002)\n'
    b'STOP WAL LOCATION: 0/300100 (file 000000010000000000000003)\n'
    b'CHECKPOINT LOCATION: 0/200060\n'
    b'BACKUP METHOD: streamed\n'
    b'BACKUP FROM: primary\n'
    b'START TIME: 2026-11-20 01:00:00 UTC\n'
    b'LABEL: barman.postgresql 20261120T010000\n'
    b'START TIMELINE: 1\n'
    b'STOP TIME: 2026-11-20 01:00:09 UTC\n'
    b'STOP TIMELINE: 1\n'
)


def seg_name(segno, timeline=1):
    return wal.segment_name(timeline, segno, SEG)


@functools.lru_cache(maxsize=None)
def segment_bytes(name, sysid=SYSID, size=SEG, header_size=SEG, page_address=None, info=0x0002, seed=''):
    """A WAL segment: a valid long page header, then pseudo-random but compressible content."""
    if page_address is None:
        page_address = wal.segment_start_lsn(name, SEG)
    header = HEADER.pack(0xD110, info, wal.timeline_of(name), page_address, 0, 0, sysid, header_size, 8192)
    rnd = random.Random(name + seed)
    words = [bytes(rnd.getrandbits(8) for _count in range(16)) for _count in range(64)]
    body = b''.join(rnd.choice(words) for _count in range(size // 16 + 1))
    return (header + body)[:size]


def sha(data):
    return hashlib.sha256(data).hexdigest()


def file_sha(path):
    with open(path, 'rb') as handle:
        return sha(handle.read())


def read(path):
    with open(path, 'rb') as handle:
        return handle.read()


@pytest.fixture
def home(tmp_path):
    home = tmp_path / 'barman'
    home.mkdir()
    catalog.ensure_directories(catalog.ServerLayout(str(home), 'pg1'))
    return str(home)


@pytest.fixture
def arc(home):
    return wal_store.WalArchive(home, 'pg1')


def put(arc, name, data, digest=None, size=None):
    return arc.receive(
        name,
        len(data) if size is None else size,
        io.BytesIO(data),
        lambda: sha(data) if digest is None else digest,
    )


def listing(directory):
    return sorted(os.listdir(directory))


def tree(root):
    """{relative path: bytes or 'dir'} of everything under root."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            result[os.path.relpath(os.path.join(dirpath, d), root)] = 'dir'
        for f in filenames:
            path = os.path.join(dirpath, f)
            result[os.path.relpath(path, root)] = (read(path), os.stat(path).st_mtime_ns)
    return result


def xlog_lines(arc):
    if not os.path.exists(arc.layout.xlog_db):
        return []
    with open(arc.layout.xlog_db, encoding='utf-8') as handle:
        return [line.rstrip('\n').split('\t') for line in handle]


# -- the synthetic segments themselves ---------------------------------------------------------------


def test_synthetic_segment_has_the_header_postgresql_writes():
    data = segment_bytes(seg_name(3))
    assert len(data) == SEG
    header = wal.parse_segment_header(data[: wal.LONG_PAGE_HEADER_SIZE])
    assert header == wal.SegmentHeader(0xD110, 1, 3 * SEG, SYSID, SEG)
    assert wal.check_segment_content(seg_name(3), header, SEG, SYSID) == header
    assert len(gzip.compress(data, 1)) < SEG // 2  # compressible, like real WAL


# -- receive ------------------------------------------------------------------------------------------


def test_receive_stores_in_incoming_with_mode_0600(arc):
    name = seg_name(1)
    data = segment_bytes(name)
    assert put(arc, name, data) == 'stored'
    path = os.path.join(arc.layout.incoming_dir, name)
    assert listing(arc.layout.incoming_dir) == [name]
    assert read(path) == data
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert arc.locate(name) == path
    assert arc.incoming_backlog() == [name]


def test_first_segment_records_identity(arc):
    assert not os.path.exists(arc.layout.identity_file)
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    with open(arc.layout.identity_file, encoding='utf-8') as handle:
        assert json.load(handle)['systemid'] == str(SYSID)
    assert identityfile.read_identity(arc.layout.identity_file)['systemid'] == str(SYSID)


def test_identical_resend_returns_identical_and_changes_nothing(arc):
    name = seg_name(1)
    data = segment_bytes(name)
    put(arc, name, data)
    before = tree(arc.layout.root)
    assert put(arc, name, data) == 'identical'
    assert tree(arc.layout.root) == before
    assert listing(arc.layout.errors_dir) == []


@pytest.mark.parametrize('compression', wal_store.COMPRESSIONS)
def test_identical_resend_after_processing_returns_identical(arc, compression):
    name = seg_name(1)
    data = segment_bytes(name)
    put(arc, name, data)
    arc.process_incoming(compression)
    before = tree(arc.layout.root)
    assert put(arc, name, data) == 'identical'
    assert tree(arc.layout.root) == before
    assert listing(arc.layout.incoming_dir) == []


def test_different_file_same_name_is_duplicate_kept_in_errors(arc):
    name = seg_name(1)
    first = segment_bytes(name)
    second = segment_bytes(name, seed='other content')
    assert first[:40] == second[:40] and first != second  # same header, valid, but not the same file
    put(arc, name, first)
    archived = os.path.join(arc.layout.incoming_dir, name)
    digest = file_sha(archived)
    with pytest.raises(wal_store.DuplicateWal) as info:
        put(arc, name, second)
    assert name in str(info.value)
    assert file_sha(archived) == digest == sha(first)
    kept = listing(arc.layout.errors_dir)
    assert len(kept) == 1
    assert kept[0].startswith(name + '.') and kept[0].endswith('.duplicate')
    assert read(os.path.join(arc.layout.errors_dir, kept[0])) == second
    assert info.value.data['kept'] == os.path.join(arc.layout.errors_dir, kept[0])
    assert listing(arc.layout.incoming_dir) == [name]  # no temp file left


def test_duplicate_of_a_compressed_archived_file(arc):
    name = seg_name(1)
    put(arc, name, segment_bytes(name))
    arc.process_incoming('zstd')
    stored = arc.layout.wal_path(name)
    digest = file_sha(stored)
    with pytest.raises(wal_store.DuplicateWal):
        put(arc, name, segment_bytes(name, seed='x'))
    assert file_sha(stored) == digest
    assert listing(arc.layout.incoming_dir) == []
    assert len(listing(arc.layout.errors_dir)) == 1


class _Trickle(io.RawIOBase):
    """A stream returning its data a few bytes at a time, then EOF (like a dropped connection)."""

    def __init__(self, data, step=70000):
        self.data = data
        self.step = step

    def readinto(self, buffer):
        block, self.data = self.data[: min(len(buffer), self.step)], self.data[min(len(buffer), self.step) :]
        buffer[: len(block)] = block
        return len(block)


def test_truncated_stream_is_refused_and_leaves_nothing(arc):
    name = seg_name(1)
    data = segment_bytes(name)
    with pytest.raises(wal_store.ArchiveError) as info:
        arc.receive(name, SEG, _Trickle(data[:300000]), lambda: sha(data))
    assert 'cut short: 300000 of 1048576 bytes' in str(info.value)
    assert listing(arc.layout.incoming_dir) == []
    assert not os.path.exists(arc.layout.identity_file)


def test_digest_mismatch_is_refused_and_leaves_nothing(arc):
    name = seg_name(1)
    data = segment_bytes(name)
    bad = sha(b'something else')
    with pytest.raises(wal_store.ArchiveError) as info:
        put(arc, name, data, digest=bad)
    assert 'damaged' in str(info.value) and bad in str(info.value) and sha(data) in str(info.value)
    assert listing(arc.layout.incoming_dir) == []
    assert listing(arc.layout.errors_dir) == []
    assert not os.path.exists(arc.layout.identity_file)


def test_size_not_matching_the_header_is_refused(arc):
    name = seg_name(1)
    data = segment_bytes(name) + b'\0' * 8192
    with pytest.raises(wal.InvalidSegmentContent) as info:
        put(arc, name, data)
    assert 'is %d bytes but its header says segments are %d bytes' % (SEG + 8192, SEG) in str(info.value)
    assert listing(arc.layout.incoming_dir) == []


def test_header_claiming_another_segment_size_is_refused(arc):
    name = seg_name(1)
    data = segment_bytes(name, header_size=2 * SEG)
    with pytest.raises(wal.InvalidSegmentContent, match='header says segments are 2097152 bytes'):
        put(arc, name, data)
    assert listing(arc.layout.incoming_dir) == []


def test_page_address_not_matching_the_name_is_refused(arc):
    data = segment_bytes(seg_name(3))
    with pytest.raises(wal.InvalidSegmentContent) as info:
        put(arc, seg_name(4), data)
    assert 'starts at LSN 0/300000, not at 0/400000' in str(info.value)
    assert seg_name(4) in str(info.value)
    assert listing(arc.layout.incoming_dir) == []


def test_other_system_identifier_than_identity_is_refused(arc):
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    identity = read(arc.layout.identity_file)
    name = seg_name(2)
    with pytest.raises(wal.InvalidSegmentContent) as info:
        put(arc, name, segment_bytes(name, sysid=OTHER_SYSID))
    assert str(OTHER_SYSID) in str(info.value) and str(SYSID) in str(info.value)
    assert listing(arc.layout.incoming_dir) == [seg_name(1)]
    assert read(arc.layout.identity_file) == identity


def test_system_identifier_checked_against_existing_identity_file(arc):
    identityfile.check_identity(arc.layout.identity_file, OTHER_SYSID, '16')
    with pytest.raises(wal.InvalidSegmentContent, match='system identifier %d' % SYSID):
        put(arc, seg_name(1), segment_bytes(seg_name(1)))
    assert listing(arc.layout.incoming_dir) == []


def test_not_a_long_page_header_is_refused(arc):
    name = seg_name(1)
    with pytest.raises(wal.InvalidSegmentContent, match='long page header'):
        put(arc, name, segment_bytes(name, info=0))
    assert listing(arc.layout.incoming_dir) == []


def test_empty_segment_is_refused(arc):
    with pytest.raises(wal_store.ArchiveError, match='is empty'):
        put(arc, seg_name(1), b'')
    assert listing(arc.layout.incoming_dir) == []


def test_segment_shorter_than_a_header_is_refused(arc):
    with pytest.raises(wal.InvalidSegmentContent, match='too short'):
        put(arc, seg_name(1), b'\x10\xd1\x02\x00')
    assert listing(arc.layout.incoming_dir) == []


def test_bad_name_is_refused_before_anything_is_written(arc):
    with pytest.raises(wal.InvalidWalName, match='not a WAL file name'):
        put(arc, '../000000010000000000000001', b'x')
    assert listing(arc.layout.incoming_dir) == []


def test_history_file_is_validated_and_stored(arc):
    data = HISTORY_2.encode()
    assert put(arc, '00000002.history', data) == 'stored'
    assert read(os.path.join(arc.layout.incoming_dir, '00000002.history')) == data


MALFORMED_HISTORIES = [
    'garbage\n',
    '1\tnot-an-lsn\treason\n',
    '2\t0/380000\tparent not below own timeline\n',
    '1\t0/380000\tx\n1\t0/480000\tnot increasing\n',
]


@pytest.mark.parametrize('content', MALFORMED_HISTORIES)
def test_malformed_history_is_refused(arc, content):
    with pytest.raises(wal.InvalidHistory) as info:
        put(arc, '00000002.history', content.encode())
    assert 'line' in str(info.value)
    assert listing(arc.layout.incoming_dir) == []


@pytest.mark.parametrize('content', MALFORMED_HISTORIES)
def test_malformed_history_larger_than_the_write_buffer_is_refused(arc, content):
    # Past io.DEFAULT_BUFFER_SIZE the write goes straight to disk, so the validation sees the content.
    padded = content + '# comment line padding the file\n' * 400
    assert len(padded) > io.DEFAULT_BUFFER_SIZE
    with pytest.raises(wal.InvalidHistory, match='line'):
        put(arc, '00000002.history', padded.encode())
    assert listing(arc.layout.incoming_dir) == []


def test_history_that_is_not_utf8_is_refused(arc):
    with pytest.raises(UnicodeDecodeError):
        put(arc, '00000002.history', b'1\t0/380000\t\xff\xfe\n')
    assert listing(arc.layout.incoming_dir) == []


def test_too_large_history_is_refused(arc):
    with pytest.raises(wal_store.ArchiveError, match='too large for a history file'):
        arc.receive('00000002.history', wal_store.MAX_TEXT_FILE_SIZE + 1, io.BytesIO(b''), lambda: '')
    assert listing(arc.layout.incoming_dir) == []


def test_backup_label_file_is_accepted(arc):
    assert put(arc, BACKUP_NAME, BACKUP_HISTORY) == 'stored'
    assert read(os.path.join(arc.layout.incoming_dir, BACKUP_NAME)) == BACKUP_HISTORY


def test_archive_of_unknown_server_does_not_exist(home):
    with pytest.raises(wal_store.ArchiveError, match='the archive of server nosuch does not exist'):
        wal_store.WalArchive(home, 'nosuch')


# -- process_incoming -------------------------------------------------------------------------------


@pytest.mark.parametrize('compression', wal_store.COMPRESSIONS)
def test_process_incoming_compresses_into_wals_and_indexes(arc, compression):
    names = [seg_name(n) for n in (1, 2, 3)]
    for name in names:
        put(arc, name, segment_bytes(name))
    result = arc.process_incoming(compression)
    assert result == dict(archived=names, identical=[], errors=[])
    assert listing(arc.layout.incoming_dir) == []
    assert listing(arc.layout.wals_dir) == ['0000000100000000', 'pg1-xlog.db']
    for name in names:
        path = os.path.join(arc.layout.wals_dir, name[:16], name)
        stored = read(path)
        if compression == 'none':
            assert stored == segment_bytes(name)
            assert wal_store.detect_compression(path) is None
        else:
            assert stored.startswith(MAGIC[compression])
            assert len(stored) < SEG // 2
            assert wal_store.detect_compression(path) == compression
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert wal_store.content_digest(path) == sha(segment_bytes(name))
        assert arc.locate(name) == path
    lines = xlog_lines(arc)
    assert [line[0] for line in lines] == names
    expected = 'None' if compression == 'none' else compression
    assert [line[3] for line in lines] == [expected] * 3
    assert [line[4] for line in lines] == ['None'] * 3
    entries = xlogdb.read_xlog_db(arc.layout.xlog_db)
    assert [e.compression for e in entries] == [None if compression == 'none' else compression] * 3


def test_history_and_backup_files_stored_uncompressed(arc):
    backup = BACKUP_NAME
    put(arc, '00000002.history', HISTORY_2.encode())
    put(arc, backup, BACKUP_HISTORY)
    result = arc.process_incoming('gzip')
    assert sorted(result['archived']) == sorted(['00000002.history', backup])
    assert read(os.path.join(arc.layout.wals_dir, '00000002.history')) == HISTORY_2.encode()
    assert read(os.path.join(arc.layout.wals_dir, '0000000100000000', backup)) == BACKUP_HISTORY
    assert {line[0]: line[3] for line in xlog_lines(arc)} == {'00000002.history': 'None', backup: 'None'}
    assert listing(arc.layout.incoming_dir) == []


def test_stray_file_in_incoming_goes_to_errors(arc):
    name = seg_name(1)
    put(arc, name, segment_bytes(name))
    with open(os.path.join(arc.layout.incoming_dir, 'stray.txt'), 'wb') as handle:
        handle.write(b'not a WAL file')
    result = arc.process_incoming('gzip')
    assert result['archived'] == [name]
    assert [(e['name'], e['reason']) for e in result['errors']] == [('stray.txt', 'unknown')]
    kept = listing(arc.layout.errors_dir)
    assert len(kept) == 1 and kept[0].startswith('stray.txt.') and kept[0].endswith('.unknown')
    assert read(os.path.join(arc.layout.errors_dir, kept[0])) == b'not a WAL file'
    assert result['errors'][0]['kept'] == os.path.join(arc.layout.errors_dir, kept[0])
    assert listing(arc.layout.incoming_dir) == []
    assert [line[0] for line in xlog_lines(arc)] == [name]


def test_delivery_in_progress_is_left_alone(arc):
    tmp = os.path.join(arc.layout.incoming_dir, '.000000010000000000000001.abc.tmp')
    with open(tmp, 'wb') as handle:
        handle.write(b'partial delivery')
    assert arc.process_incoming('gzip') == dict(archived=[], identical=[], errors=[])
    assert listing(arc.layout.incoming_dir) == ['.000000010000000000000001.abc.tmp']
    assert arc.incoming_backlog() == []


def test_process_incoming_dry_run_changes_nothing(arc):
    names = [seg_name(1), seg_name(2)]
    for name in names:
        put(arc, name, segment_bytes(name))
    with open(os.path.join(arc.layout.incoming_dir, 'stray.txt'), 'wb') as handle:
        handle.write(b'x')
    before = tree(arc.layout.root)
    result = arc.process_incoming('gzip', dry_run=True)
    assert result['archived'] == names
    assert result['errors'] == ['stray.txt']
    assert tree(arc.layout.root) == before


def test_identical_file_in_incoming_is_dropped(arc):
    name = seg_name(1)
    data = segment_bytes(name)
    put(arc, name, data)
    arc.process_incoming('gzip')
    stored = arc.layout.wal_path(name)
    digest = file_sha(stored)
    with open(os.path.join(arc.layout.incoming_dir, name), 'wb') as handle:
        handle.write(data)
    result = arc.process_incoming('gzip')
    assert result == dict(archived=[], identical=[name], errors=[])
    assert listing(arc.layout.incoming_dir) == []
    assert file_sha(stored) == digest
    assert [line[0] for line in xlog_lines(arc)] == [name]


def test_identical_file_in_incoming_reindexes_a_missing_entry(arc):
    name = seg_name(1)
    data = segment_bytes(name)
    put(arc, name, data)
    arc.process_incoming('lz4')
    os.unlink(arc.layout.xlog_db)
    with open(os.path.join(arc.layout.incoming_dir, name), 'wb') as handle:
        handle.write(data)
    assert arc.process_incoming('lz4')['identical'] == [name]
    assert [(line[0], line[3]) for line in xlog_lines(arc)] == [(name, 'lz4')]


def test_different_file_in_incoming_goes_to_errors_archived_stays(arc):
    name = seg_name(1)
    put(arc, name, segment_bytes(name))
    arc.process_incoming('gzip')
    stored = arc.layout.wal_path(name)
    digest = file_sha(stored)
    other = segment_bytes(name, seed='other')
    with open(os.path.join(arc.layout.incoming_dir, name), 'wb') as handle:
        handle.write(other)
    result = arc.process_incoming('gzip')
    assert result['archived'] == [] and result['identical'] == []
    assert [(e['name'], e['reason']) for e in result['errors']] == [(name, 'duplicate')]
    assert file_sha(stored) == digest
    kept = listing(arc.layout.errors_dir)
    assert len(kept) == 1 and kept[0].startswith(name + '.')
    assert read(os.path.join(arc.layout.errors_dir, kept[0])) == other
    assert listing(arc.layout.incoming_dir) == []
    assert [line[0] for line in xlog_lines(arc)] == [name]


def test_unsupported_compression_is_refused(arc):
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    with pytest.raises(wal_store.ArchiveError, match="compression 'bzip2' is not supported"):
        arc.process_incoming('bzip2')
    assert listing(arc.layout.incoming_dir) == [seg_name(1)]


# -- send / copy_decompressed -------------------------------------------------------------------------


@pytest.mark.parametrize('compression', wal_store.COMPRESSIONS)
def test_send_round_trip(arc, tmp_path, compression):
    name = seg_name(5)
    data = segment_bytes(name)
    put(arc, name, data)
    arc.process_incoming(compression)
    out = tmp_path / 'out'
    with open(str(out), 'wb') as target:
        arc.send(name, target)
    assert out.read_bytes() == data
    out2 = tmp_path / 'out2'
    with open(str(out2), 'wb') as target:
        wal_store.copy_decompressed(arc.layout.wal_path(name), target)
    assert out2.read_bytes() == data


def test_send_of_a_file_still_in_incoming(arc):
    name = seg_name(5)
    data = segment_bytes(name)
    put(arc, name, data)
    target = io.BytesIO()
    arc.send(name, target)
    assert target.getvalue() == data


@pytest.mark.parametrize('compression', ['gzip', 'none'])
def test_send_into_a_memory_buffer(arc, compression):
    name = seg_name(5)
    data = segment_bytes(name)
    put(arc, name, data)
    arc.process_incoming(compression)
    target = io.BytesIO()
    arc.send(name, target)
    assert target.getvalue() == data


def test_copy_decompressed_reads_bzip2(tmp_path):
    import bz2

    path = tmp_path / 'x'
    path.write_bytes(bz2.compress(b'hello wal'))
    assert wal_store.detect_compression(str(path)) == 'bzip2'
    target = io.BytesIO()
    wal_store.copy_decompressed(str(path), target)
    assert target.getvalue() == b'hello wal'
    assert wal_store.content_digest(str(path)) == sha(b'hello wal')


def test_send_missing_raises_wal_not_found(arc):
    with pytest.raises(wal_store.WalNotFound) as info:
        arc.send(seg_name(9), io.BytesIO())
    assert seg_name(9) in str(info.value) and 'pg1' in str(info.value)


def test_send_bad_name_is_refused(arc):
    with pytest.raises(wal.InvalidWalName):
        arc.send('../../etc/passwd', io.BytesIO())


# -- continuity -----------------------------------------------------------------------------------


def place(arc, name, data=b'x'):
    """Put a file straight into wals/ (continuity only looks at names)."""
    path = arc.layout.wal_path(name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as handle:
        handle.write(data)


def test_continuity_of_an_empty_archive(arc):
    assert arc.continuity(SEG) == dict(first=None, last=None, timeline=None, segments=0, missing=[], ok=True)
    assert arc.continuity(SEG, first_name=seg_name(1))['ok'] is False


def test_continuity_contiguous(arc):
    for n in range(1, 5):
        place(arc, seg_name(n))
    put(arc, seg_name(5), segment_bytes(seg_name(5)))  # still in incoming/: counts too
    result = arc.continuity(SEG)
    assert result == dict(first=seg_name(1), last=seg_name(5), timeline=1, segments=5, missing=[], ok=True)


def test_continuity_reports_a_missing_middle_range(arc):
    for n in (1, 2, 5, 6, 8):
        place(arc, seg_name(n))
    result = arc.continuity(SEG)
    assert result['ok'] is False
    assert result['missing'] == [[seg_name(3), seg_name(4)], [seg_name(7), seg_name(7)]]
    assert result['segments'] == 5
    assert result['first'] == seg_name(1) and result['last'] == seg_name(8)


def test_continuity_from_a_given_first_name(arc):
    for n in (3, 4):
        place(arc, seg_name(n))
    result = arc.continuity(SEG, first_name=seg_name(1))
    assert result['missing'] == [[seg_name(1), seg_name(2)]]
    assert result['ok'] is False


def test_continuity_across_a_log_id_boundary(arc):
    names = [seg_name(n) for n in range(4094, 4098)]
    assert names == [
        '000000010000000000000FFE',
        '000000010000000000000FFF',
        '000000010000000100000000',
        '000000010000000100000001',
    ]
    for name in names:
        place(arc, name)
    result = arc.continuity(SEG)
    assert result['ok'] is True and result['segments'] == 4
    assert result['first'] == names[0] and result['last'] == names[-1]
    os.unlink(arc.layout.wal_path(names[2]))
    result = arc.continuity(SEG)
    assert result['missing'] == [[names[2], names[2]]]
    assert result['ok'] is False


def test_continuity_missing_range_across_log_id_boundary(arc):
    place(arc, seg_name(4094))
    place(arc, seg_name(4098))
    result = arc.continuity(SEG)
    assert result['missing'] == [['000000010000000000000FFF', '000000010000000100000001']]


def _timeline_switch(arc, tl1=(1, 2, 3, 4, 5), tl2=(3, 4, 5, 6)):
    # The switch LSN 0/380000 is inside segment 3 (0/300000 .. 0/3FFFFF).
    place(arc, '00000002.history', HISTORY_2.encode())
    for n in tl1:
        place(arc, seg_name(n, 1))
    for n in tl2:
        place(arc, seg_name(n, 2))


def test_continuity_follows_a_timeline_switch(arc):
    _timeline_switch(arc)
    result = arc.continuity(SEG)
    assert result == dict(first=seg_name(1, 1), last=seg_name(6, 2), timeline=2, segments=6, missing=[], ok=True)


def test_continuity_does_not_require_old_timeline_after_the_switch(arc):
    _timeline_switch(arc, tl1=(1, 2))
    result = arc.continuity(SEG)
    assert result['ok'] is True and result['missing'] == [] and result['segments'] == 6


def test_continuity_requires_the_new_timeline_from_the_switch_segment(arc):
    _timeline_switch(arc, tl1=(1, 2, 3, 4, 5), tl2=(4, 5, 6))
    result = arc.continuity(SEG)
    # 00000001...03 exists, but recovery reads the switch segment from timeline 2
    assert result['missing'] == [[seg_name(3, 2), seg_name(3, 2)]]
    assert result['ok'] is False


def test_continuity_reports_a_gap_before_the_switch_on_the_old_timeline(arc):
    _timeline_switch(arc, tl1=(1, 3, 4), tl2=(3, 4, 5, 6))
    result = arc.continuity(SEG)
    assert result['missing'] == [[seg_name(2, 1), seg_name(2, 1)]]


def test_continuity_without_the_history_file_is_an_error(arc):
    place(arc, seg_name(1, 1))
    place(arc, seg_name(2, 2))
    with pytest.raises(wal_store.ArchiveError, match='00000002.history'):
        arc.continuity(SEG)


def test_continuity_after_promotion_before_any_segment_on_the_new_timeline(arc):
    _timeline_switch(arc, tl1=(1, 2, 3), tl2=())
    result = arc.continuity(SEG)
    assert result['timeline'] == 1 and result['last'] == seg_name(3, 1) and result['ok'] is True


def test_history_reads_the_archived_file(arc):
    assert arc.history(1) == []
    place(arc, '00000002.history', HISTORY_2.encode())
    assert arc.history(2) == [wal.HistoryEntry(1, 0x380000, 'no recovery target specified')]


# -- rebuild_xlog_db -----------------------------------------------------------------------------


def _archive_some(arc, compression):
    names = [seg_name(n) for n in (1, 2, 3)]
    for name in names:
        put(arc, name, segment_bytes(name))
    put(arc, '00000002.history', HISTORY_2.encode())
    arc.process_incoming(compression)
    return sorted(names + ['00000002.history'])


@pytest.mark.parametrize('compression', wal_store.COMPRESSIONS)
def test_rebuild_xlog_db_gives_back_the_entries(arc, compression):
    names = _archive_some(arc, compression)
    original = {e.name: e for e in xlogdb.read_xlog_db(arc.layout.xlog_db)}
    assert sorted(original) == names
    os.unlink(arc.layout.xlog_db)
    result = arc.rebuild_xlog_db()
    assert result == dict(entries=4, added=names, removed=[])
    rebuilt = xlogdb.read_xlog_db(arc.layout.xlog_db)
    assert [e.name for e in rebuilt] == names
    for entry in rebuilt:
        assert entry.compression == original[entry.name].compression
        assert entry.time == original[entry.name].time
    assert stat.S_IMODE(os.stat(arc.layout.xlog_db).st_mode) == 0o600


def test_rebuild_xlog_db_reproduces_uncompressed_entries_exactly(arc):
    _archive_some(arc, 'none')
    original = read(arc.layout.xlog_db)
    os.unlink(arc.layout.xlog_db)
    arc.rebuild_xlog_db()
    assert read(arc.layout.xlog_db) == original


@pytest.mark.parametrize('compression', ['gzip', 'zstd', 'lz4'])
def test_rebuild_xlog_db_reproduces_compressed_entries_exactly(arc, compression):
    _archive_some(arc, compression)
    original = xlogdb.read_xlog_db(arc.layout.xlog_db)
    os.unlink(arc.layout.xlog_db)
    arc.rebuild_xlog_db()
    assert xlogdb.read_xlog_db(arc.layout.xlog_db) == original


def test_rebuild_xlog_db_dry_run_writes_nothing(arc):
    names = _archive_some(arc, 'gzip')
    os.unlink(arc.layout.xlog_db)
    before = tree(arc.layout.root)
    result = arc.rebuild_xlog_db(dry_run=True)
    assert result == dict(entries=4, added=names, removed=[])
    assert not os.path.exists(arc.layout.xlog_db)
    assert tree(arc.layout.root) == before


def test_rebuild_xlog_db_dry_run_keeps_an_existing_index(arc):
    _archive_some(arc, 'gzip')
    os.unlink(arc.layout.wal_path(seg_name(2)))
    content = read(arc.layout.xlog_db)
    result = arc.rebuild_xlog_db(dry_run=True)
    assert result['removed'] == [seg_name(2)] and result['added'] == []
    assert read(arc.layout.xlog_db) == content


def test_rebuild_xlog_db_drops_entries_of_missing_files(arc):
    _archive_some(arc, 'gzip')
    os.unlink(arc.layout.wal_path(seg_name(2)))
    result = arc.rebuild_xlog_db()
    assert result == dict(entries=3, added=[], removed=[seg_name(2)])
    assert [line[0] for line in xlog_lines(arc)] == [seg_name(1), seg_name(3), '00000002.history']


def test_a_killed_receivers_temp_file_never_blocks_and_goes_after_an_hour(tmp_path):
    home = str(tmp_path)
    layout = catalog.ServerLayout(home, 'pg1')
    catalog.ensure_directories(layout)
    stale = os.path.join(layout.incoming_dir, '.000000010000000000000001.abc.tmp')
    fresh = os.path.join(layout.incoming_dir, '.000000010000000000000002.def.tmp')
    for path in (stale, fresh):
        with open(path, 'wb') as handle:
            handle.write(b'half a segment')
    os.utime(stale, (time.time() - wal_store.STALE_SECONDS - 10,) * 2)
    result = wal_store.WalArchive(home, 'pg1').process_incoming('gzip')
    assert result == dict(archived=[], identical=[], errors=[])
    assert not os.path.exists(stale) and os.path.exists(fresh)


# -- implausible names: refused at receive time, nothing stored -------------------------------------

FAR_NAME = '000000010000FFFF000000FF'  # 256 TiB past 0/0


def far_segment(name, sysid=SYSID):
    """A segment named far ahead, with a header that agrees with its name and the server's system id."""
    return segment_bytes(name, sysid=sysid)


def test_a_segment_far_past_the_newest_archived_one_is_refused_and_nothing_stored(arc):
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    before = tree(arc.layout.root)
    with pytest.raises(wal_store.RefusedWal) as caught:
        put(arc, FAR_NAME, far_segment(FAR_NAME))
    error = caught.value
    assert FAR_NAME in error.message and 'past the newest file in the archive of pg1' in error.message
    assert seg_name(1) in error.message and 'take a backup' in error.hint
    assert tree(arc.layout.root) == before
    assert arc.locate(FAR_NAME) is None


def test_the_bound_counts_bytes_of_wal_and_looks_at_wals_and_incoming(arc, monkeypatch):
    monkeypatch.setattr(wal_store, 'MAX_WAL_AHEAD_BYTES', 8 * SEG)
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    arc.process_incoming('gzip')  # the newest is now in wals/
    assert put(arc, seg_name(9), segment_bytes(seg_name(9))) == 'stored'  # 8 segments ahead: at the bound
    with pytest.raises(wal_store.RefusedWal, match='past the newest'):
        put(arc, seg_name(18), segment_bytes(seg_name(18)))  # 9 past the newest, still in incoming/
    assert put(arc, seg_name(17), segment_bytes(seg_name(17))) == 'stored'
    assert put(arc, seg_name(4), segment_bytes(seg_name(4))) == 'stored'  # behind the newest: always fine


def test_an_empty_archive_takes_any_plausible_first_file(arc):
    assert put(arc, FAR_NAME, far_segment(FAR_NAME)) == 'stored'


def test_a_backup_vouches_for_a_jump(arc):
    # Archiving was off while the server wrote far ahead: a backup read the position from PostgreSQL.
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    far = wal.segment_name(1, wal.segment_number(FAR_NAME, SEG) - 3, SEG)
    with pytest.raises(wal_store.RefusedWal):
        put(arc, far, far_segment(far))
    info = dict(status=infofile.STARTED, begin_wal=wal.wal_segment_after(far, SEG), xlog_segment_size=SEG)
    infofile.write_backup_info(arc.layout.backup_info_path('20261120T010000'), info)
    assert put(arc, far, far_segment(far)) == 'stored'


def test_a_segment_of_a_timeline_without_history_file_is_refused(arc):
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    name = seg_name(2, timeline=5)
    before = tree(arc.layout.root)
    with pytest.raises(wal_store.RefusedWal) as caught:
        put(arc, name, segment_bytes(name))
    assert '00000005.history' in caught.value.message and 'timeline 5' in caught.value.message
    assert 'put pg_wal/00000005.history' in caught.value.hint
    assert tree(arc.layout.root) == before
    # A .backup or .partial file of that timeline neither.
    with pytest.raises(wal_store.RefusedWal, match='00000005.history'):
        put(arc, name + '.partial', segment_bytes(name))


def test_a_new_timeline_is_accepted_once_its_history_file_is_archived(arc):
    for n in (1, 2, 3):
        put(arc, seg_name(n), segment_bytes(seg_name(n)))
    assert put(arc, '00000002.history', HISTORY_2.encode()) == 'stored'
    assert put(arc, seg_name(3, timeline=2), segment_bytes(seg_name(3, timeline=2))) == 'stored'
    # The old timeline's last segment, archived as .partial at the promotion, is a known timeline.
    assert put(arc, seg_name(4) + '.partial', segment_bytes(seg_name(4))) == 'stored'
    arc.process_incoming('gzip')
    # Once in wals/, the timeline's directory tells it is known.
    assert put(arc, seg_name(4, timeline=2), segment_bytes(seg_name(4, timeline=2))) == 'stored'


def test_an_archive_begun_after_a_promotion_takes_the_later_timeline(arc):
    name = seg_name(7, timeline=3)
    assert put(arc, name, segment_bytes(name)) == 'stored'
    assert put(arc, seg_name(8, timeline=3), segment_bytes(seg_name(8, timeline=3))) == 'stored'


def test_a_backup_on_the_timeline_vouches_for_it(arc):
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    info = dict(status=infofile.DONE, begin_wal=seg_name(2, timeline=5), end_wal=seg_name(2, timeline=5))
    infofile.write_backup_info(arc.layout.backup_info_path('20261120T010000'), info)
    assert put(arc, seg_name(2, timeline=5), segment_bytes(seg_name(2, timeline=5))) == 'stored'


def test_an_identical_resend_of_an_archived_file_is_never_refused(arc, monkeypatch):
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    monkeypatch.setattr(wal_store, 'MAX_WAL_AHEAD_BYTES', 0)
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    assert put(arc, seg_name(1), segment_bytes(seg_name(1))) == 'identical'


# -- backup history files: checked at receive, never guessed compressed ------------------------------


@pytest.mark.parametrize(
    'data, words',
    [
        (b'START WAL LOCATION: 0/200028\n', 'lacks a START'),
        (BACKUP_HISTORY.replace(b'0/200028', b'0/300028'), 'do not match its name'),
        (BACKUP_HISTORY + b'\0', 'NUL'),
    ],
)
def test_a_backup_history_file_postgresql_would_not_write_is_refused(arc, data, words):
    with pytest.raises(wal.InvalidBackupHistory, match=words):
        put(arc, BACKUP_NAME, data)
    assert listing(arc.layout.incoming_dir) == []


def test_a_too_large_backup_history_file_is_refused_before_it_is_read(arc):
    with pytest.raises(wal_store.RefusedWal, match='too large for a backup file'):
        arc.receive(BACKUP_NAME, wal.MAX_BACKUP_HISTORY_SIZE + 1, io.BytesIO(b''), lambda: '')
    assert listing(arc.layout.incoming_dir) == []


def test_a_backup_history_file_far_ahead_is_refused(arc):
    put(arc, seg_name(1), segment_bytes(seg_name(1)))
    name = '0000000100000FFF00000002.00000028.backup'
    data = BACKUP_HISTORY.replace(b'0/2', b'FFF/2').replace(b'0/3', b'FFF/3')
    data = data.replace(b'0000000100000000000000', b'0000000100000FFF000000')
    assert wal.check_backup_history(name, data).start_lsn == 0xFFF00200028
    with pytest.raises(wal_store.RefusedWal, match='past the newest'):
        put(arc, name, data)


def test_text_that_starts_like_a_compressed_stream_is_refused(arc):
    # Stored text is read by its first bytes (Barman compresses history files too): text that began
    # with a magic number would be misread, and PostgreSQL never writes such a backup history file.
    with pytest.raises(wal.InvalidBackupHistory, match='START WAL LOCATION'):
        put(arc, BACKUP_NAME, b'BZh91AY&SY\n' + BACKUP_HISTORY)
    assert wal_store.WalArchive.locate(arc, BACKUP_NAME) is None


def test_a_history_file_barman_compressed_is_read_decompressed(arc):
    text = b'1\t0/3000000\tno recovery target specified\n'
    path = arc.layout.wal_path('00000002.history')
    with gzip.open(path, 'wb') as handle:
        handle.write(text)
    target = io.BytesIO()
    arc.send('00000002.history', target)
    assert target.getvalue() == text
    assert wal_store.content_digest(path) == sha(text)
    assert arc.history(2)[0].switch_lsn == 0x3000000


# -- continuity on ranges ------------------------------------------------------------------------------


def test_continuity_with_a_segment_named_far_ahead_answers_at_once(arc):
    # Planted before receive time refused such names: continuity reports one range, it lists no names.
    for n in (1, 2, 3):
        place(arc, seg_name(n))
    place(arc, FAR_NAME)
    started = time.time()
    result = arc.continuity(16 * SEG)
    assert time.time() - started < 1
    assert result['missing'] == [[wal.segment_name(1, 4, 16 * SEG), wal.segment_name(1, 0xFFFF * 256 + 0xFE, 16 * SEG)]]
    assert result['segments'] == 4 and result['last'] == FAR_NAME and result['ok'] is False


def test_islands_report_each_range_on_its_own(arc):
    for n in (2, 3, 7, 8, 9):
        place(arc, seg_name(n))
    assert arc.islands([(seg_name(2), seg_name(3)), (seg_name(5), seg_name(6)), (seg_name(7), seg_name(10))], SEG) == [
        dict(first=seg_name(2), last=seg_name(3), segments=2, missing=[], ok=True),
        dict(first=seg_name(5), last=seg_name(6), segments=0, missing=[[seg_name(5), seg_name(6)]], ok=False),
        dict(first=seg_name(7), last=seg_name(10), segments=3, missing=[[seg_name(10), seg_name(10)]], ok=False),
    ]
    assert arc.islands([], SEG) == []


# -- leftovers of killed processes ----------------------------------------------------------------------


def _leftover(path, age):
    with open(path, 'wb') as handle:
        handle.write(b'half')
    os.utime(path, (time.time() - age,) * 2)
    return path


def _leftovers(arc):
    name = seg_name(1)
    hash_dir = os.path.dirname(arc.layout.wal_path(name))
    os.makedirs(hash_dir, exist_ok=True)
    old = wal_store.STALE_SECONDS + 10
    stale = [
        _leftover(os.path.join(hash_dir, '.%s.k3j_x9ab' % name), old),  # a killed _store_compressed
        _leftover(os.path.join(arc.layout.wals_dir, '.00000002.history.ab12cd34'), old),
        _leftover(os.path.join(arc.layout.wals_dir, '.pg1-xlog.db.ab12cd34.tmp'), old),  # a torn atomic_write
        _leftover(os.path.join(arc.layout.incoming_dir, '.%s.abcdefgh.tmp' % seg_name(2)), old),
    ]
    kept = [
        _leftover(os.path.join(hash_dir, '.%s.youngone' % seg_name(3)), 60),  # may be in use
        _leftover(os.path.join(hash_dir, '.not-ours'), old),
        _leftover(os.path.join(hash_dir, name + '.hidden-by-a-human'), old),
    ]
    return stale, kept


def test_process_incoming_sweeps_stale_temp_files_and_leaves_young_ones(arc):
    stale, kept = _leftovers(arc)
    assert arc.process_incoming('gzip', dry_run=True) == dict(archived=[], identical=[], errors=[])
    assert all(os.path.exists(p) for p in stale + kept), 'a dry run removed something'
    arc.process_incoming('gzip')
    assert [p for p in stale if os.path.exists(p)] == []
    assert all(os.path.exists(p) for p in kept)


def test_sweep_temp_files_reports_what_it_removed_and_waits_for_no_one(arc):
    stale, kept = _leftovers(arc)
    with lockfile.ServerLock(arc.layout, 'archive-process'):
        assert arc.sweep_temp_files() == []  # a processing run holds the archive: it sweeps itself
    assert all(os.path.exists(p) for p in stale)
    assert sorted(arc.sweep_temp_files()) == sorted(stale)
    assert all(os.path.exists(p) for p in kept) and not any(os.path.exists(p) for p in stale)


def test_send_into_memory_decompresses_through_a_program_and_a_missing_one_is_never_not_found(
    arc, monkeypatch, tmp_path
):
    name = seg_name(1)
    data = segment_bytes(name)
    put(arc, name, data)
    arc.process_incoming('zstd')
    target = io.BytesIO()
    assert arc.send(name, target, keep=('gzip',)) is None and target.getvalue() == data, 'a fetch frame is in memory'
    with open(str(tmp_path / 'restored'), 'wb') as restored:  # a file: the program writes to it directly
        arc.send(name, restored)
    assert (tmp_path / 'restored').read_bytes() == data
    empty = tmp_path / 'no-programs'
    empty.mkdir()
    monkeypatch.setenv('PATH', str(empty))  # zstd gone from the backup server
    with pytest.raises(Exception) as info:
        arc.send(name, io.BytesIO())
    assert not isinstance(info.value, wal_store.WalNotFound), 'PostgreSQL would read "not found" and end recovery'
