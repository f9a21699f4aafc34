# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for module_utils/wal.py, including vectors recorded from a real PostgreSQL 15 server."""

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

MB = 1024 * 1024
ALL_SIZES = [MB << shift for shift in range(11)]  # 1 MB .. 1 GB

# Recorded from "PostgreSQL 15.18 (Debian 15.18-0+deb12u1) on x86_64-pc-linux-gnu", two throwaway
# clusters made with `initdb --wal-segsize=16` and `initdb --wal-segsize=64`
# (SHOW wal_segment_size said 16MB and 64MB), both on timeline 1, queried with:
#   SELECT l, pg_walfile_name(l::pg_lsn), (pg_walfile_name_offset(l::pg_lsn)).file_name,
#          (pg_walfile_name_offset(l::pg_lsn)).file_offset FROM unnest(ARRAY[...]) AS l;
# pg_walfile_name() and pg_walfile_name_offset().file_name were identical on every row, so each row is
# (lsn, name, offset).
PG15_VECTORS_16MB = [
    ('0/0', '00000001FFFFFFFF000000FF', 0),
    ('0/1', '000000010000000000000000', 1),
    ('0/FFFFFF', '000000010000000000000000', 16777215),
    ('0/1000000', '000000010000000000000000', 0),
    ('0/1000001', '000000010000000000000001', 1),
    ('0/2FFFFFF', '000000010000000000000002', 16777215),
    ('0/3000000', '000000010000000000000002', 0),
    ('0/3FFFFFF', '000000010000000000000003', 16777215),
    ('0/4000000', '000000010000000000000003', 0),
    ('0/4000001', '000000010000000000000004', 1),
    ('0/FEFFFFFF', '0000000100000000000000FE', 16777215),
    ('0/FF000000', '0000000100000000000000FE', 0),
    ('0/FFFFFFFF', '0000000100000000000000FF', 16777215),
    ('1/0', '0000000100000000000000FF', 0),
    ('1/1', '000000010000000100000000', 1),
    ('1/1000000', '000000010000000100000000', 0),
    ('1/1000001', '000000010000000100000001', 1),
    ('1/3FFFFFF', '000000010000000100000003', 16777215),
    ('1/4000000', '000000010000000100000003', 0),
    ('16/B374D848', '0000000100000016000000B3', 7657544),
    ('FF/FFFFFFFF', '00000001000000FF000000FF', 16777215),
    ('100/0', '00000001000000FF000000FF', 0),
    ('FFFFFFFF/FF000000', '00000001FFFFFFFF000000FE', 0),
    ('FFFFFFFF/FFFFFFFF', '00000001FFFFFFFF000000FF', 16777215),
]
PG15_VECTORS_64MB = [
    ('0/0', '00000001FFFFFFFF0000003F', 0),
    ('0/1', '000000010000000000000000', 1),
    ('0/FFFFFF', '000000010000000000000000', 16777215),
    ('0/1000000', '000000010000000000000000', 16777216),
    ('0/1000001', '000000010000000000000000', 16777217),
    ('0/2FFFFFF', '000000010000000000000000', 50331647),
    ('0/3000000', '000000010000000000000000', 50331648),
    ('0/3FFFFFF', '000000010000000000000000', 67108863),
    ('0/4000000', '000000010000000000000000', 0),
    ('0/4000001', '000000010000000000000001', 1),
    ('0/FEFFFFFF', '00000001000000000000003F', 50331647),
    ('0/FF000000', '00000001000000000000003F', 50331648),
    ('0/FFFFFFFF', '00000001000000000000003F', 67108863),
    ('1/0', '00000001000000000000003F', 0),
    ('1/1', '000000010000000100000000', 1),
    ('1/1000000', '000000010000000100000000', 16777216),
    ('1/1000001', '000000010000000100000000', 16777217),
    ('1/3FFFFFF', '000000010000000100000000', 67108863),
    ('1/4000000', '000000010000000100000000', 0),
    ('16/B374D848', '00000001000000160000002C', 57989192),
    ('FF/FFFFFFFF', '00000001000000FF0000003F', 67108863),
    ('100/0', '00000001000000FF0000003F', 0),
    ('FFFFFFFF/FF000000', '00000001FFFFFFFF0000003F', 50331648),
    ('FFFFFFFF/FFFFFFFF', '00000001FFFFFFFF0000003F', 67108863),
]
# Same server, 16 MB, on a cluster promoted twice (timeline 3).
PG15_VECTORS_16MB_TIMELINE_3 = [
    ('0/1', '000000030000000000000000', 1),
    ('0/1000000', '000000030000000000000000', 0),
    ('1/0', '0000000300000000000000FF', 0),
    ('16/B374D848', '0000000300000016000000B3', 7657544),
]
PG15_VECTORS = (
    [(lsn, 1, 16 * MB, name, offset) for lsn, name, offset in PG15_VECTORS_16MB]
    + [(lsn, 1, 64 * MB, name, offset) for lsn, name, offset in PG15_VECTORS_64MB]
    + [(lsn, 3, 16 * MB, name, offset) for lsn, name, offset in PG15_VECTORS_16MB_TIMELINE_3]
)
# pg_wal/00000003.history of that twice-promoted cluster, byte for byte (PostgreSQL wrote the blank line).
PG15_HISTORY_TIMELINE_3 = '1\t0/4000000\tno recovery target specified\n\n2\t0/7000000\tno recovery target specified\n'


@pytest.mark.parametrize('lsn, timeline, size, name, offset', PG15_VECTORS)
def test_walfile_name_offset_matches_postgresql_15(lsn, timeline, size, name, offset):
    assert wal.walfile_name_offset(lsn, timeline, size) == (name, offset)
    assert wal.walfile_name_offset(wal.parse_lsn(lsn), timeline, size) == (name, offset)


@pytest.mark.parametrize('lsn, timeline, size, name, offset', PG15_VECTORS)
def test_lsn_segment_name_is_the_segment_holding_the_byte(lsn, timeline, size, name, offset):
    value = wal.parse_lsn(lsn)
    expected = name
    if value % size == 0:
        # On a boundary PostgreSQL names the previous segment; the byte itself is in the next one.
        expected = wal.wal_segment_after(name, size) if value else wal.segment_name(timeline, 0, size)
    assert wal.lsn_segment_name(lsn, timeline, size) == expected
    assert wal.segment_start_lsn(expected, size) + value % size == value


@pytest.mark.parametrize('lsn, timeline, size, name, offset', PG15_VECTORS)
def test_split_walfile_name_round_trips_postgresql_names(lsn, timeline, size, name, offset):
    segno, split_timeline = wal.split_walfile_name(name, size)
    assert split_timeline == timeline
    assert wal.segment_name(split_timeline, segno, size) == name


def test_postgresql_boundary_quirk():
    # Recorded above: the name is XLByteToPrevSeg, the offset is not, and 0/0 wraps to the last segment.
    assert wal.walfile_name_offset('0/1000000', 1, 16 * MB) == ('000000010000000000000000', 0)
    assert wal.lsn_segment_name('0/1000000', 1, 16 * MB) == '000000010000000000000001'
    assert wal.walfile_name_offset('0/0', 1, 16 * MB) == ('00000001FFFFFFFF000000FF', 0)
    assert wal.lsn_segment_name('0/0', 1, 16 * MB) == '000000010000000000000000'


def test_pg15_history_file():
    assert wal.parse_timeline_history(PG15_HISTORY_TIMELINE_3, timeline=3) == [
        wal.HistoryEntry(1, 0x4000000, 'no recovery target specified'),
        wal.HistoryEntry(2, 0x7000000, 'no recovery target specified'),
    ]
    assert wal.history_file_name(3) == '00000003.history'


# --- segment sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize('size', ALL_SIZES)
def test_valid_segment_sizes(size):
    assert wal.validate_segment_size(size) == size
    assert wal.segments_per_log_id(size) == 0x100000000 // size


def test_default_segment_size():
    assert wal.DEFAULT_SEGMENT_SIZE == 16 * MB
    assert wal.segments_per_log_id(wal.DEFAULT_SEGMENT_SIZE) == 256
    assert wal.segments_per_log_id(64 * MB) == 64
    assert wal.segments_per_log_id(MB) == 4096
    assert wal.segments_per_log_id(1024 * MB) == 4


@pytest.mark.parametrize(
    'size', [0, 3 * MB, 2048 * MB, 512 * 1024, -16 * MB, 16 * MB + 1, '16777216', None, True, 16.0 * MB]
)
def test_invalid_segment_sizes(size):
    with pytest.raises(wal.InvalidSegmentSize) as caught:
        wal.validate_segment_size(size)
    assert repr(size) in str(caught.value)
    assert caught.value.hint
    with pytest.raises(wal.InvalidSegmentSize):
        wal.segments_per_log_id(size)
    with pytest.raises(wal.InvalidSegmentSize):
        wal.segment_number('000000010000000000000001', size)


def test_error_classes():
    for error in (wal.InvalidWalName, wal.InvalidLsn, wal.InvalidSegmentSize, wal.InvalidHistory):
        assert issubclass(error, BarmanError)
        assert issubclass(error, ValueError)


# --- names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'name, expected',
    [
        ('000000010000000000000001', ('segment', 1, 0, 1, None)),
        ('0000000A00000016000000B3', ('segment', 10, 0x16, 0xB3, None)),
        ('FFFFFFFFFFFFFFFF00000FFF', ('segment', 0xFFFFFFFF, 0xFFFFFFFF, 0xFFF, None)),
        ('000000020000000100000000.partial', ('partial', 2, 1, 0, None)),
        ('000000010000000000000002.00000028.backup', ('backup', 1, 0, 2, 0x28)),
        ('00000002.history', ('history', 2, None, None, None)),
        ('FFFFFFFF.history', ('history', 0xFFFFFFFF, None, None, None)),
    ],
)
def test_parse_wal_name(name, expected):
    parsed = wal.parse_wal_name(name)
    assert parsed == wal.WalFile(name, *expected)
    assert wal.is_wal_name(name)
    assert wal.is_segment_name(name) == (expected[0] == 'segment')
    assert wal.timeline_of(name) == expected[1]


BAD_NAMES = [
    '',
    '../x',
    '/etc/passwd',
    '0' * 65,
    '0' * 23,
    '0' * 25,
    '00000001000000000000000a',
    '0000000100000000000000fe',
    '00000001.History',
    '00000001000000000000000G',
    '000000000000000000000001',
    '00000000.history',
    '000000010000000000000001\n',
    '\n000000010000000000000001',
    ' 000000010000000000000001',
    '000000010000000000000001.',
    '000000010000000000000001x',
    '000000010000000000000001.partial.gz',
    '000000010000000000000001.PARTIAL',
    '000000010000000000000001.0000028.backup',
    '000000010000000000000001.00000028',
    '000000010000000000000001.history',
    '0000001.history',
    '00000001.history.partial',
    '../000000010000000000000001',
    'pg_wal/000000010000000000000001',
    '000000010000000000001000',
    '0000000100000000FFFFFFFF',
]


@pytest.mark.parametrize('name', BAD_NAMES + [None, 1, b'000000010000000000000001'])
def test_bad_names(name):
    with pytest.raises(wal.InvalidWalName) as caught:
        wal.parse_wal_name(name)
    assert repr(name) in str(caught.value)
    assert '000000010000000000000001' in caught.value.hint
    assert caught.value.data['name'] == name
    assert not wal.is_wal_name(name)
    assert not wal.is_segment_name(name)


def test_huge_name_is_shortened_in_the_message():
    name = 'A' * 10000
    with pytest.raises(wal.InvalidWalName) as caught:
        wal.parse_wal_name(name)
    assert len(str(caught.value)) < 1000
    assert repr(name)[:50] in str(caught.value)


def test_segment_field_must_fit_the_segment_size():
    assert wal.validate_segment_name('00000001000000000000003F', 64 * MB).seg == 0x3F
    assert wal.validate_segment_name('0000000100000000000000FF', 16 * MB).seg == 0xFF
    for name in ('000000010000000000000040', '0000000100000000000000FF', '000000010000000000000040.partial'):
        with pytest.raises(wal.InvalidWalName) as caught:
            wal.validate_segment_name(name, 64 * MB)
        assert repr(name) in str(caught.value)
        assert '0000003F' in caught.value.hint
        with pytest.raises(wal.InvalidWalName):
            wal.segment_number(name, 64 * MB)
    with pytest.raises(wal.InvalidWalName, match='0000000100000000000000FF'):
        wal.split_walfile_name('0000000100000000000000FF', 64 * MB)
    with pytest.raises(wal.InvalidWalName, match='00000004'):
        wal.validate_segment_name('000000010000000000000004', 1024 * MB)


def test_history_name_has_no_segment():
    with pytest.raises(wal.InvalidWalName, match='history'):
        wal.segment_number('00000002.history', 16 * MB)
    assert wal.timeline_of('00000002.history') == 2


def test_partial_and_backup_names_have_a_segment():
    assert wal.segment_number('0000000100000001000000FF.partial', 16 * MB) == 511
    assert wal.wal_segment_after('0000000100000001000000FF.partial', 16 * MB) == '000000010000000200000000'
    assert wal.segment_start_lsn('000000010000000000000002.00000028.backup', 16 * MB) == 0x2000000


def test_segment_number_and_name():
    assert wal.segment_number('000000010000000000000001', 16 * MB) == 1
    assert wal.segment_number('0000000100000016000000B3', 16 * MB) == 0x16 * 256 + 0xB3
    assert wal.segment_number('00000001000000160000002C', 64 * MB) == 0x16 * 64 + 0x2C
    assert wal.segment_name(1, 256, 16 * MB) == '000000010000000100000000'
    assert wal.segment_name(0xFFFFFFFF, 0, MB) == 'FFFFFFFF0000000000000000'
    assert wal.split_walfile_name('0000000200000001000000FF', 16 * MB) == (511, 2)


@pytest.mark.parametrize('timeline', [0, -1, 0x100000000, None, '1', True])
def test_segment_name_rejects_bad_timelines(timeline):
    with pytest.raises(wal.InvalidWalName) as caught:
        wal.segment_name(timeline, 0, 16 * MB)
    assert repr(timeline) in str(caught.value)
    with pytest.raises(wal.InvalidWalName):
        wal.history_file_name(timeline)


@pytest.mark.parametrize('segno', [-1, 2**56, None, '1', 1.0])
def test_segment_name_rejects_bad_segment_numbers(segno):
    with pytest.raises(wal.InvalidWalName) as caught:
        wal.segment_name(1, segno, 16 * MB)
    assert repr(segno) in str(caught.value)


def test_neighbours_cross_log_id_boundaries():
    assert wal.wal_segment_after('0000000100000000000000FF', 16 * MB) == '000000010000000100000000'
    assert wal.wal_segment_before('000000010000000100000000', 16 * MB) == '0000000100000000000000FF'
    assert wal.wal_segment_after('00000001000000000000003F', 64 * MB) == '000000010000000100000000'
    assert wal.wal_segment_before('000000050000000100000000', 64 * MB) == '00000005000000000000003F'
    assert wal.wal_segment_after('000000010000000000000001', 16 * MB) == '000000010000000000000002'
    with pytest.raises(wal.InvalidWalName, match='000000010000000000000000'):
        wal.wal_segment_before('000000010000000000000000', 16 * MB)
    with pytest.raises(wal.InvalidWalName, match='00000001FFFFFFFF000000FF'):
        wal.wal_segment_after('00000001FFFFFFFF000000FF', 16 * MB)


def test_segments_between():
    assert wal.segments_between('0000000100000000000000FE', '000000010000000100000001', 16 * MB) == [
        '0000000100000000000000FE',
        '0000000100000000000000FF',
        '000000010000000100000000',
        '000000010000000100000001',
    ]
    one = '000000010000000000000005'
    assert wal.segments_between(one, one, 16 * MB) == [one]
    with pytest.raises(wal.InvalidWalName, match='different timelines'):
        wal.segments_between('000000010000000000000001', '000000020000000000000002', 16 * MB)
    with pytest.raises(wal.InvalidWalName, match='000000010000000000000002'):
        wal.segments_between('000000010000000000000002', '000000010000000000000001', 16 * MB)


def test_segments_between_lsns():
    size = 16 * MB
    assert wal.segments_between_lsns('0/FF000028', '1/1000000', 1, size) == [
        '0000000100000000000000FF',
        '000000010000000100000000',
    ]
    assert wal.segments_between_lsns('0/FF000028', '1/1000001', 1, size)[-1] == '000000010000000100000001'
    assert wal.segments_between_lsns('0/2000028', '0/2000100', 3, size) == ['000000030000000000000002']
    assert wal.segments_between_lsns('0/2000028', '0/2000028', 1, size) == []
    with pytest.raises(wal.InvalidLsn, match='0/3000000'):
        wal.segments_between_lsns('0/3000000', '0/2000000', 1, size)


@pytest.mark.parametrize('lsn, timeline, size, name, offset', PG15_VECTORS)
def test_segments_between_lsns_ends_where_pg_walfile_name_does(lsn, timeline, size, name, offset):
    end = wal.parse_lsn(lsn)
    if end == 0:
        return
    assert wal.segments_between_lsns(end - 1, end, timeline, size) == [name]


def test_names_sort_in_wal_order():
    names = [
        '000000010000000000000002',
        '000000010000000000000001.00000028.backup',
        '00000002.history',
        '000000010000000100000000',
        '0000000100000000000000FF',
        '000000020000000000000000',
        '000000010000000000000001',
    ]
    kind_order = {'history': 0, 'segment': 1, 'backup': 2, 'partial': 3}

    def numeric_key(name):
        parsed = wal.parse_wal_name(name)
        return (
            parsed.timeline,
            kind_order[parsed.kind] > 0,
            parsed.log or 0,
            parsed.seg or 0,
            kind_order[parsed.kind],
        )

    # Fixed-width upper-case hex makes plain string order the WAL order; no sort key is needed.
    assert sorted(names) == sorted(names, key=numeric_key)


# --- LSNs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'text, value, formatted',
    [
        ('0/0', 0, '0/0'),
        ('16/B374D848', 0x16B374D848, '16/B374D848'),
        ('16/b374d848', 0x16B374D848, '16/B374D848'),
        ('00000001/00000000', 0x100000000, '1/0'),
        ('FFFFFFFF/FFFFFFFF', 2**64 - 1, 'FFFFFFFF/FFFFFFFF'),
        ('0/1000000', 0x1000000, '0/1000000'),
    ],
)
def test_lsns(text, value, formatted):
    assert wal.parse_lsn(text) == value
    assert wal.format_lsn(value) == formatted
    assert wal.format_lsn(text) == formatted


@pytest.mark.parametrize(
    'text',
    [
        '',
        'x/y',
        '1/2/3',
        '-1/0',
        '1/-0',
        '100000000/0',
        '0/100000000',
        '0x1/0',
        '+1/0',
        ' 0/0',
        '0/0\n',
        '0/',
        '/0',
        '1',
        None,
        5,
    ],
)
def test_invalid_lsn_text(text):
    with pytest.raises(wal.InvalidLsn) as caught:
        wal.parse_lsn(text)
    assert repr(text) in str(caught.value)
    assert '16/B374D848' in caught.value.hint


@pytest.mark.parametrize('value', [-1, 2**64, None, 1.5, True])
def test_invalid_lsn_values(value):
    with pytest.raises(wal.InvalidLsn) as caught:
        wal.format_lsn(value)
    assert repr(value) in str(caught.value)
    with pytest.raises(wal.InvalidLsn):
        wal.lsn_segment_name(value, 1, 16 * MB)
    with pytest.raises(wal.InvalidLsn):
        wal.walfile_name_offset(value, 1, 16 * MB)


# --- every segment size ----------------------------------------------------------------------------


@pytest.mark.parametrize('size', ALL_SIZES)
def test_round_trips_for_every_size(size):
    per_log_id = wal.segments_per_log_id(size)
    last = wal.MAX_LSN // size
    interesting = [0, 1, 2, per_log_id - 1, per_log_id, per_log_id + 1, 5 * per_log_id - 1, last - 1, last]
    for timeline in (1, 2, 0xFFFFFFFF):
        for segno in interesting:
            name = wal.segment_name(timeline, segno, size)
            assert wal.is_segment_name(name)
            assert wal.split_walfile_name(name, size) == (segno, timeline)
            start = wal.segment_start_lsn(name, size)
            assert start == segno * size
            assert wal.lsn_segment_name(start, timeline, size) == name
            assert wal.lsn_segment_name(start + size - 1, timeline, size) == name
            assert wal.walfile_name_offset(start + 1, timeline, size) == (name, 1)
            assert wal.walfile_name_offset(start + size - 1, timeline, size) == (name, size - 1)
            assert wal.lsn_segment_name(wal.format_lsn(start), timeline, size) == name
            if segno < last:
                after = wal.wal_segment_after(name, size)
                assert wal.wal_segment_before(after, size) == name
                assert wal.walfile_name_offset(start + size, timeline, size) == (name, 0)
    with pytest.raises(wal.InvalidWalName):
        wal.segment_name(1, last + 1, size)


@pytest.mark.parametrize('size', ALL_SIZES)
def test_segments_between_across_log_id_for_every_size(size):
    per_log_id = wal.segments_per_log_id(size)
    first = wal.segment_name(7, 3 * per_log_id - 2, size)
    last = wal.segment_name(7, 3 * per_log_id + 1, size)
    names = wal.segments_between(first, last, size)
    expected_seg_fields = ['%08X' % (per_log_id - 2), '%08X' % (per_log_id - 1), '00000000', '00000001']
    assert [name[16:] for name in names] == expected_seg_fields
    assert [name[8:16] for name in names] == ['00000002', '00000002', '00000003', '00000003']
    assert names == sorted(names)
    begin = wal.segment_start_lsn(first, size) + 40
    end = wal.segment_start_lsn(last, size) + size
    assert wal.segments_between_lsns(begin, end, 7, size) == names
    assert wal.segments_between_lsns(wal.format_lsn(begin), wal.format_lsn(end), 7, size) == names


# --- timeline history ------------------------------------------------------------------------------


def test_history_with_comments_and_blank_lines():
    text = '# made by hand\n\n1\t0/3000158\tno recovery target specified\n  \n2\t16/B374D848\tbefore 2024-01-01\r\n'
    assert wal.parse_timeline_history(text) == [
        wal.HistoryEntry(1, 0x3000158, 'no recovery target specified'),
        wal.HistoryEntry(2, 0x16B374D848, 'before 2024-01-01'),
    ]
    assert wal.parse_timeline_history('1\t0/3000158\n') == [wal.HistoryEntry(1, 0x3000158, '')]
    assert wal.parse_timeline_history('') == []


@pytest.mark.parametrize(
    'text, line_number',
    [
        ('x\t0/3000158\treason\n', 1),
        ('1\n', 1),
        ('1 0/3000158 reason\n', 1),
        ('1\tnope\treason\n', 1),
        ('0\t0/3000158\treason\n', 1),
        ('-1\t0/3000158\treason\n', 1),
        ('4294967296\t0/3000158\treason\n', 1),
        ('0x1\t0/3000158\treason\n', 1),
        ('1\t0/3000158\tr\n\n1\t0/4000000\tr\n', 3),
        ('2\t0/3000158\tr\n1\t0/4000000\tr\n', 2),
        ('# c\n1\t0/3000158\tr\n2\t0/4000000/1\tr\n', 3),
    ],
)
def test_malformed_history(text, line_number):
    with pytest.raises(wal.InvalidHistory) as caught:
        wal.parse_timeline_history(text)
    assert 'line %d ' % line_number in str(caught.value)
    assert caught.value.data['line_number'] == line_number
    assert repr(text.splitlines()[line_number - 1]) in str(caught.value)
    assert 'no recovery target specified' in caught.value.hint


def test_history_parent_must_be_below_its_timeline():
    with pytest.raises(wal.InvalidHistory, match='line 3 '):
        wal.parse_timeline_history(PG15_HISTORY_TIMELINE_3, timeline=2)
    with pytest.raises(wal.InvalidHistory):
        wal.parse_timeline_history(None)
    with pytest.raises(wal.InvalidWalName):
        wal.parse_timeline_history('', timeline=0)


# -- ranges of segments: what continuity works on, never a list of names --------------------------


def test_recovery_spans_follow_the_path_and_read_the_switch_segment_from_the_new_timeline():
    path = [(1, 0), (2, 0x380000), (3, 0x800000)]  # switches inside segments 3 and 8 (1 MB segments)
    assert wal.recovery_spans(1, 10, path, MB) == [
        wal.SegmentSpan(1, 1, 2),
        wal.SegmentSpan(2, 3, 7),
        wal.SegmentSpan(3, 8, 10),
    ]
    assert wal.recovery_spans(5, 6, path, MB) == [wal.SegmentSpan(2, 5, 6)]
    assert wal.recovery_spans(9, 8, path, MB) == []


def test_recovery_spans_a_later_timeline_starting_in_the_same_segment_wins():
    path = [(1, 0), (2, 0x380000), (3, 0x390000)]
    assert wal.recovery_spans(1, 5, path, MB) == [wal.SegmentSpan(1, 1, 2), wal.SegmentSpan(3, 3, 5)]


def test_recovery_spans_of_the_whole_lsn_range_stay_small():
    # The name 000000010000FFFF000000FF is 256 TiB past 0/0: one span, not 16 million names.
    last = wal.segment_number('000000010000FFFF000000FF', 16 * MB)
    assert wal.recovery_spans(1, last, [(1, 0)], 16 * MB) == [wal.SegmentSpan(1, 1, 0xFFFF * 256 + 0xFF)]


def test_segment_runs():
    assert wal.segment_runs([]) == []
    assert wal.segment_runs([3]) == [(3, 3)]
    assert wal.segment_runs([1, 2, 3, 5, 7, 8]) == [(1, 3), (5, 5), (7, 8)]


@pytest.mark.parametrize(
    'runs, holes',
    [
        ([], [(10, 20)]),
        ([(10, 20)], []),
        ([(1, 30)], []),
        ([(1, 9), (21, 30)], [(10, 20)]),
        ([(12, 13), (15, 15)], [(10, 11), (14, 14), (16, 20)]),
        ([(1, 11), (19, 25)], [(12, 18)]),
        ([(1, 2), (5, 6), (30, 40)], [(10, 20)]),
        ([(10, 10), (20, 20)], [(11, 19)]),
    ],
)
def test_uncovered_parts_of_a_span(runs, holes):
    span = wal.SegmentSpan(2, 10, 20)
    assert wal.uncovered(span, runs) == [wal.SegmentSpan(2, low, high) for low, high in holes]
    assert wal.span_length(span) == 11


# -- backup history files (.backup) -----------------------------------------------------------------

# The lines PostgreSQL 15 writes (do_pg_backup_stop), with 16 MB segments.
PG15_BACKUP_HISTORY = (
    b'START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\n'
    b'STOP WAL LOCATION: 0/A000000 (file 000000010000000000000009)\n'
    b'CHECKPOINT LOCATION: 0/9000060\n'
    b'BACKUP METHOD: streamed\n'
    b'BACKUP FROM: primary\n'
    b'START TIME: 2026-11-20 01:00:00 CET\n'
    b'LABEL: barman.postgresql 20261120T010000 \xe9t\xe9\n'
    b'START TIMELINE: 1\n'
    b'STOP TIME: 2026-11-20 01:00:09 CET\n'
    b'STOP TIMELINE: 1\n'
)
PG15_BACKUP_NAME = '000000010000000000000009.00000028.backup'


def test_backup_history_as_postgresql_writes_it():
    # The stop LSN on a segment boundary: PostgreSQL 15 names the segment before it, 16 the one at it.
    assert wal.check_backup_history(PG15_BACKUP_NAME, PG15_BACKUP_HISTORY) == wal.BackupHistory(
        0x9000028, 0xA000000, 16 * MB
    )
    pg16 = PG15_BACKUP_HISTORY.replace(
        b'0/A000000 (file 000000010000000000000009)', b'0/A000000 (file 00000001000000000000000A)'
    )
    assert wal.check_backup_history(PG15_BACKUP_NAME, pg16).stop_lsn == 0xA000000


@pytest.mark.parametrize(
    'name, data, words',
    [
        (PG15_BACKUP_NAME, b'', 'does not begin with a START WAL LOCATION'),
        (PG15_BACKUP_NAME, PG15_BACKUP_HISTORY.split(b'\n', 1)[1], 'does not begin with a START WAL LOCATION'),
        (
            PG15_BACKUP_NAME,
            PG15_BACKUP_HISTORY + b'STOP WAL LOCATION: 0/A000000 (file 000000010000000000000009)\n',
            'two STOP',
        ),
        (PG15_BACKUP_NAME, PG15_BACKUP_HISTORY + b'\0', 'NUL'),
        (PG15_BACKUP_NAME, PG15_BACKUP_HISTORY + b'#' * wal.MAX_BACKUP_HISTORY_SIZE, 'more than'),
        ('000000010000000000000008.00000028.backup', PG15_BACKUP_HISTORY, 'not in the segment its name says'),
        ('000000010000000000000009.00000029.backup', PG15_BACKUP_HISTORY, 'do not match its name'),
        (
            PG15_BACKUP_NAME,
            PG15_BACKUP_HISTORY.replace(b'STOP WAL LOCATION: 0/A000000', b'STOP WAL LOCATION: 0/8000000'),
            'before its start',
        ),
        (
            PG15_BACKUP_NAME,
            PG15_BACKUP_HISTORY.replace(
                b'0/A000000 (file 000000010000000000000009)', b'0/F000000 (file 000000010000000000000009)'
            ),
            'do not match its name',
        ),
        ('000000010000000000000009', PG15_BACKUP_HISTORY, 'does not end in'),
    ],
)
def test_backup_history_that_postgresql_would_not_write_is_refused(name, data, words):
    with pytest.raises(wal.InvalidBackupHistory) as caught:
        wal.check_backup_history(name, data)
    assert words in str(caught.value) and 'START WAL LOCATION' in caught.value.hint
