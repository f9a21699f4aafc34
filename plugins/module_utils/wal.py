# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL file names, LSNs, segment arithmetic and timeline history files, as PostgreSQL defines them.

Pure functions: no I/O. Everything that takes a segment size wants bytes (PostgreSQL's
``wal_segment_size``), a power of two from 1 MB to 1 GB.
"""

import bisect
import collections
import re
from typing import Iterable, List, Optional, Sequence, Tuple, Union

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError, is_int, shown

MIN_SEGMENT_SIZE = 1024 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
MAX_LSN = 0xFFFFFFFFFFFFFFFF
MAX_TIMELINE = 0xFFFFFFFF
LOG_ID_BYTES = 0x100000000

SEGMENT_NAME_HINT = (
    'A WAL segment name is 24 upper-case hex digits (timeline, log id, segment), for example 000000010000000000000001'
)
WAL_NAME_HINT = (
    'Expected a WAL segment name such as 000000010000000000000001, optionally followed by '
    '.partial or by .<8 hex digits>.backup, or a timeline history name such as 00000002.history; '
    'hex digits are upper case and the timeline is not 00000000'
)
LSN_HINT = 'An LSN is two groups of 1 to 8 hex digits separated by a slash, for example 16/B374D848'
SEGMENT_SIZE_HINT = (
    'Use a power of two number of bytes from 1048576 (1 MB) to 1073741824 (1 GB); '
    'PostgreSQL defaults to 16777216 (16 MB)'
)
HISTORY_HINT = (
    'Each line of a timeline history file is "<parent timeline><TAB><switch LSN><TAB><reason>", '
    'for example "1\\t0/4000000\\tno recovery target specified", with parent timelines increasing'
)

_HEX8 = '[0-9A-F]{8}'
_WAL_NAME_RE = re.compile(
    '(?P<timeline>{h})(?:'
    '(?P<log>{h})(?P<seg>{h})(?:(?P<partial>\\.partial)|\\.(?P<offset>{h})\\.backup)?'
    '|(?P<history>\\.history))'.format(h=_HEX8)
)
_LSN_RE = re.compile('([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})')
_DECIMAL_RE = re.compile('[0-9]+')

WalFile = collections.namedtuple('WalFile', ['name', 'kind', 'timeline', 'log', 'seg', 'offset'])
HistoryEntry = collections.namedtuple('HistoryEntry', ['parent_timeline', 'switch_lsn', 'reason'])


class InvalidWalName(BarmanError, ValueError):
    """A WAL file name, timeline or segment number that PostgreSQL would not produce."""

    code = 'INVALID_WAL_NAME'


class InvalidLsn(BarmanError, ValueError):
    """A log sequence number that is not ``X/X`` or is out of the 64-bit range."""

    code = 'INVALID_ARGUMENT'


class InvalidSegmentSize(BarmanError, ValueError):
    """A WAL segment size PostgreSQL does not support."""

    code = 'INVALID_ARGUMENT'


class InvalidHistory(BarmanError, ValueError):
    """A timeline history file whose content PostgreSQL would refuse."""

    code = 'INVALID_WAL_CONTENT'


def validate_segment_size(size: int) -> int:
    """Return ``size`` if it is a valid WAL segment size in bytes, else raise InvalidSegmentSize."""
    valid = is_int(size) and MIN_SEGMENT_SIZE <= size <= MAX_SEGMENT_SIZE and size & (size - 1) == 0
    if not valid:
        raise InvalidSegmentSize(
            'WAL segment size %s is not a power of two from 1 MB to 1 GB' % shown(size),
            SEGMENT_SIZE_HINT,
            segment_size=size,
        )
    return size


def segments_per_log_id(segment_size: int) -> int:
    """How many segments one log id (the middle 8 hex digits of a name) holds."""
    return LOG_ID_BYTES // validate_segment_size(segment_size)


def _last_segment_number(segment_size):
    return MAX_LSN // segment_size


def _check_timeline(timeline):
    if not is_int(timeline) or not 1 <= timeline <= MAX_TIMELINE:
        raise InvalidWalName(
            'timeline %s is not an integer from 1 to 4294967295' % shown(timeline),
            'Timelines start at 1 and are at most 0xFFFFFFFF',
            timeline=timeline,
        )
    return timeline


def parse_wal_name(name: str) -> WalFile:
    """Split a WAL file name into a WalFile, or raise InvalidWalName.

    Accepts a segment, ``<segment>.partial``, ``<segment>.<offset>.backup`` and ``<timeline>.history``.
    """
    match = _WAL_NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not match or int(match.group('timeline'), 16) == 0:
        raise InvalidWalName('%s is not a WAL file name' % shown(name), WAL_NAME_HINT, name=name)
    timeline = int(match.group('timeline'), 16)
    if match.group('history'):
        return WalFile(name, 'history', timeline, None, None, None)
    seg = int(match.group('seg'), 16)
    # No supported segment size has that many segments per log id, whatever the server's size is.
    if seg >= segments_per_log_id(MIN_SEGMENT_SIZE):
        raise InvalidWalName(
            '%s is not a WAL file name: segment field %s is too large for any segment size'
            % (shown(name), match.group('seg')),
            WAL_NAME_HINT,
            name=name,
        )
    offset = None
    if match.group('partial'):
        kind = 'partial'
    elif match.group('offset'):
        kind = 'backup'
        offset = int(match.group('offset'), 16)
    else:
        kind = 'segment'
    return WalFile(name, kind, timeline, int(match.group('log'), 16), seg, offset)


def is_wal_name(name: str) -> bool:
    """True if ``name`` is any WAL file name parse_wal_name accepts."""
    try:
        parse_wal_name(name)
    except InvalidWalName:
        return False
    return True


def is_segment_name(name: str) -> bool:
    """True if ``name`` is a plain 24-digit WAL segment name (not partial, backup or history)."""
    try:
        return parse_wal_name(name).kind == 'segment'
    except InvalidWalName:
        return False


def timeline_of(name: str) -> int:
    """The timeline of any WAL file name."""
    return parse_wal_name(name).timeline


def validate_segment_name(name: str, segment_size: int) -> WalFile:
    """Parse a segment, partial or backup name and check its segment field fits ``segment_size``.

    Returns the WalFile. History names are refused: they have no segment.
    """
    per_log_id = segments_per_log_id(segment_size)
    wal_file = parse_wal_name(name)
    if wal_file.kind == 'history':
        raise InvalidWalName(
            '%s is a timeline history file, not a WAL segment' % shown(name), SEGMENT_NAME_HINT, name=name
        )
    if wal_file.seg >= per_log_id:
        raise InvalidWalName(
            '%s is not a WAL segment name for %d-byte segments: its last 8 digits must be below %08X'
            % (shown(name), segment_size, per_log_id),
            'With %d MB segments the last 8 hex digits run from 00000000 to %08X'
            % (segment_size // MIN_SEGMENT_SIZE, per_log_id - 1),
            name=name,
            segment_size=segment_size,
        )
    return wal_file


def segment_number(name: str, segment_size: int) -> int:
    """The absolute segment number (PostgreSQL's XLogSegNo) of a segment, partial or backup name."""
    wal_file = validate_segment_name(name, segment_size)
    return wal_file.log * segments_per_log_id(segment_size) + wal_file.seg


def split_walfile_name(name: str, segment_size: int) -> Tuple[int, int]:
    """``(segment_number, timeline)`` of a name, like PostgreSQL 16's pg_split_walfile_name()."""
    return segment_number(name, segment_size), timeline_of(name)


def segment_name(timeline: int, segno: int, segment_size: int) -> str:
    """The WAL segment name for ``segno`` on ``timeline`` (PostgreSQL's XLogFileName)."""
    per_log_id = segments_per_log_id(segment_size)
    _check_timeline(timeline)
    if not is_int(segno) or not 0 <= segno <= _last_segment_number(segment_size):
        raise InvalidWalName(
            'segment number %s is out of range for %d-byte segments' % (shown(segno), segment_size),
            'Segment numbers run from 0 to %d with this segment size' % _last_segment_number(segment_size),
            segment_number=segno,
            segment_size=segment_size,
        )
    return '%08X%08X%08X' % (timeline, segno // per_log_id, segno % per_log_id)


def segment_start_lsn(name: str, segment_size: int) -> int:
    """The LSN of the first byte of a segment."""
    return segment_number(name, segment_size) * segment_size


def wal_segment_after(name: str, segment_size: int) -> str:
    """The name of the segment following ``name`` on the same timeline."""
    segno = segment_number(name, segment_size)
    if segno == _last_segment_number(segment_size):
        raise InvalidWalName('%s is the last possible WAL segment' % shown(name), SEGMENT_NAME_HINT, name=name)
    return segment_name(timeline_of(name), segno + 1, segment_size)


def wal_segment_before(name: str, segment_size: int) -> str:
    """The name of the segment preceding ``name`` on the same timeline."""
    segno = segment_number(name, segment_size)
    if segno == 0:
        raise InvalidWalName('%s is the first possible WAL segment' % shown(name), SEGMENT_NAME_HINT, name=name)
    return segment_name(timeline_of(name), segno - 1, segment_size)


def segments_between(first_name: str, last_name: str, segment_size: int) -> List[str]:
    """Names of the segments from ``first_name`` to ``last_name`` inclusive, on one timeline."""
    first = segment_number(first_name, segment_size)
    last = segment_number(last_name, segment_size)
    timeline = timeline_of(first_name)
    if timeline_of(last_name) != timeline:
        raise InvalidWalName(
            '%s and %s are on different timelines' % (shown(first_name), shown(last_name)),
            'Both names must start with the same 8 hex digits',
            first=first_name,
            last=last_name,
        )
    if first > last:
        raise InvalidWalName(
            '%s comes after %s' % (shown(first_name), shown(last_name)),
            'Give the earlier segment first',
            first=first_name,
            last=last_name,
        )
    return [segment_name(timeline, segno, segment_size) for segno in range(first, last + 1)]


def parse_lsn(text: str) -> int:
    """``'16/B374D848'`` -> int. Accepts what PostgreSQL's pg_lsn input accepts."""
    match = _LSN_RE.fullmatch(text) if isinstance(text, str) else None
    if not match:
        raise InvalidLsn('%s is not an LSN' % shown(text), LSN_HINT, lsn=text)
    return int(match.group(1), 16) << 32 | int(match.group(2), 16)


def _lsn_value(lsn):
    if isinstance(lsn, str):
        return parse_lsn(lsn)
    if not is_int(lsn) or not 0 <= lsn <= MAX_LSN:
        raise InvalidLsn(
            'LSN %s is neither an X/X string nor an integer from 0 to 2**64 - 1' % shown(lsn),
            LSN_HINT,
            lsn=lsn,
        )
    return lsn


def format_lsn(lsn: Union[int, str]) -> str:
    """int -> ``'16/B374D848'`` (PostgreSQL's ``%X/%X``: upper case, no zero padding)."""
    lsn = _lsn_value(lsn)
    return '%X/%X' % (lsn >> 32, lsn & 0xFFFFFFFF)


def lsn_segment_name(lsn: Union[int, str], timeline: int, segment_size: int) -> str:
    """The segment holding the byte at ``lsn`` (PostgreSQL's XLByteToSeg)."""
    validate_segment_size(segment_size)
    return segment_name(timeline, _lsn_value(lsn) // segment_size, segment_size)


def walfile_name_offset(lsn: Union[int, str], timeline: int, segment_size: int) -> Tuple[str, int]:
    """``(name, offset)`` exactly as PostgreSQL 15's pg_walfile_name_offset() returns them.

    The name is the segment holding the byte *before* ``lsn`` (XLByteToPrevSeg), because an end or
    stop LSN points just past the last byte written. The offset, however, is ``lsn`` within its own
    segment, so on a segment boundary the name is the previous segment and the offset is 0, and
    LSN 0/0 wraps to the very last segment. pg_walfile_name() returns the same name.
    """
    validate_segment_size(segment_size)
    lsn = _lsn_value(lsn)
    # PostgreSQL does (lsn - 1) in unsigned 64-bit arithmetic, hence the wrap-around at 0/0.
    segno = ((lsn - 1) & MAX_LSN) // segment_size
    return segment_name(timeline, segno, segment_size), lsn % segment_size


def segments_between_lsns(
    begin_lsn: Union[int, str], end_lsn: Union[int, str], timeline: int, segment_size: int
) -> List[str]:
    """Names of the segments holding the bytes from ``begin_lsn`` up to, not including, ``end_lsn``.

    The last name is the one pg_walfile_name(end_lsn) gives, as for a backup's start and stop LSNs.
    Equal LSNs cover no bytes and give an empty list.
    """
    validate_segment_size(segment_size)
    begin = _lsn_value(begin_lsn)
    end = _lsn_value(end_lsn)
    if begin > end:
        raise InvalidLsn(
            'begin LSN %s is after end LSN %s' % (format_lsn(begin), format_lsn(end)),
            'Give the earlier LSN first',
            begin_lsn=begin_lsn,
            end_lsn=end_lsn,
        )
    if begin == end:
        return []
    first = segment_name(timeline, begin // segment_size, segment_size)
    last = segment_name(timeline, (end - 1) // segment_size, segment_size)
    return segments_between(first, last, segment_size)


def history_file_name(timeline: int) -> str:
    """``2`` -> ``'00000002.history'``."""
    return '%08X.history' % _check_timeline(timeline)


def _history_error(line_number, line, problem):
    return InvalidHistory(
        'line %d of the timeline history %s: %s' % (line_number, problem, shown(line)),
        HISTORY_HINT,
        line_number=line_number,
        line=line,
    )


def parse_timeline_history(text: str, timeline: Optional[int] = None) -> List[HistoryEntry]:
    """Entries of a ``.history`` file's content, oldest first.

    ``timeline``, if given, is the timeline the file belongs to: every parent must be below it.
    The reason column is optional, as it is for PostgreSQL's own reader.
    """
    if not isinstance(text, str):
        raise InvalidHistory('timeline history content %s is not text' % shown(text), HISTORY_HINT, content=text)
    if timeline is not None:
        _check_timeline(timeline)
    entries = []
    for line_number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith('#'):
            continue
        fields = stripped.split('\t', 2)
        if not _DECIMAL_RE.fullmatch(fields[0]) or not 1 <= int(fields[0]) <= MAX_TIMELINE:
            raise _history_error(line_number, line, 'does not start with a decimal timeline')
        if len(fields) < 2 or not _LSN_RE.fullmatch(fields[1]):
            raise _history_error(line_number, line, 'has no valid switch LSN after the timeline')
        parent = int(fields[0])
        if entries and parent <= entries[-1].parent_timeline:
            raise _history_error(line_number, line, 'does not increase the parent timeline')
        if timeline is not None and parent >= timeline:
            raise _history_error(
                line_number, line, "has a parent timeline not below the history's own timeline %d" % timeline
            )
        reason = fields[2].strip() if len(fields) == 3 else ''
        entries.append(HistoryEntry(parent, parse_lsn(fields[1]), reason))
    return entries


# The first page of every segment starts with XLogLongPageHeaderData (access/xlog_internal.h):
# magic u16, info u16, timeline u32, page address u64, remaining length u32, padding u32,
# system identifier u64, segment size u32, block size u32 -- in the server's byte order.
LONG_PAGE_HEADER_SIZE = 40
_XLP_LONG_HEADER = 0x0002
SegmentHeader = collections.namedtuple(
    'SegmentHeader', ['magic', 'timeline', 'page_address', 'systemid', 'segment_size']
)


class InvalidSegmentContent(BarmanError, ValueError):
    """A file whose content is not the WAL segment its name says it is."""

    code = 'INVALID_WAL_CONTENT'


def parse_segment_header(data: bytes, name: str = 'the file', byteorder: str = 'little') -> SegmentHeader:
    """The long page header at the start of a WAL segment, from its first LONG_PAGE_HEADER_SIZE bytes."""
    if len(data) < LONG_PAGE_HEADER_SIZE:
        raise InvalidSegmentContent(
            '%s is %d bytes long, too short for a WAL segment header' % (name, len(data)),
            'A WAL segment starts with a %d-byte header' % LONG_PAGE_HEADER_SIZE,
        )

    def field(start, size):
        return int.from_bytes(data[start : start + size], byteorder)

    if not field(2, 2) & _XLP_LONG_HEADER:
        raise InvalidSegmentContent(
            '%s does not start with a WAL long page header' % name,
            'Only files from a PostgreSQL pg_wal directory are accepted',
        )
    return SegmentHeader(field(0, 2), field(4, 4), field(8, 8), field(24, 8), field(32, 4))


def check_segment_content(
    name: str, header: SegmentHeader, size: int, systemid: Union[int, str, None] = None
) -> SegmentHeader:
    """Refuse a segment whose header does not match its name, its size or the expected cluster.

    The header's timeline is not compared: the first segment of a new timeline begins with pages
    copied from its parent timeline.
    """
    if header.segment_size != size:
        raise InvalidSegmentContent(
            '%s is %d bytes but its header says segments are %d bytes' % (name, size, header.segment_size),
            'The file was cut short or padded; PostgreSQL will send it again',
            wal=name,
        )
    validate_segment_size(header.segment_size)
    expected = segment_start_lsn(name, header.segment_size)
    if header.page_address != expected:
        raise InvalidSegmentContent(
            '%s starts at LSN %s, not at %s as its name says'
            % (name, format_lsn(header.page_address), format_lsn(expected)),
            'The file is not the segment it is named after',
            wal=name,
        )
    if systemid is not None and header.systemid != int(systemid):
        raise InvalidSegmentContent(
            '%s comes from the cluster with system identifier %d, not %s' % (name, header.systemid, systemid),
            'Another cluster is archiving under this server name: give it a server name of its own',
            code='IDENTITY_MISMATCH',
            wal=name,
        )
    return header


BACKUP_HISTORY_HINT = (
    'A backup history file is the text PostgreSQL writes at the end of a base backup, with the lines '
    '"START WAL LOCATION: <LSN> (file <segment>)" and "STOP WAL LOCATION: <LSN> (file <segment>)"; its name is '
    'the start segment, then the start offset in 8 hex digits, then .backup'
)
MAX_BACKUP_HISTORY_SIZE = 64 * 1024
_BACKUP_LOCATION_RE = re.compile(r'(START|STOP) WAL LOCATION: ([0-9A-F]{1,8}/[0-9A-F]{1,8}) \(file ([0-9A-F]{24})\)')
_SEGMENT_SIZES = [MIN_SEGMENT_SIZE << shift for shift in range(11)]
BackupHistory = collections.namedtuple('BackupHistory', ['start_lsn', 'stop_lsn', 'segment_size'])


class InvalidBackupHistory(BarmanError, ValueError):
    """A backup history file (.backup) whose content is not what PostgreSQL writes for its name."""

    code = 'INVALID_WAL_CONTENT'


def check_backup_history(name: str, data: bytes) -> BackupHistory:
    """Check a ``.backup`` file's content (bytes) against its name, as PostgreSQL writes both.

    Returns BackupHistory(start LSN, stop LSN, the segment size that makes name and content agree).
    """
    wal_file = parse_wal_name(name)

    def refuse(why):
        return InvalidBackupHistory('%s is not a backup history file: %s' % (shown(name), why), BACKUP_HISTORY_HINT)

    if wal_file.kind != 'backup':
        raise refuse('its name does not end in .<offset>.backup')
    if len(data) > MAX_BACKUP_HISTORY_SIZE:
        raise refuse('it is %d bytes, more than the %d such a file can be' % (len(data), MAX_BACKUP_HISTORY_SIZE))
    if not data.startswith(b'START WAL LOCATION: '):
        # PostgreSQL writes this line first; it also keeps stored text from looking compressed.
        raise refuse('it does not begin with a START WAL LOCATION line')
    if b'\0' in data:
        raise refuse('it holds NUL bytes, so it is not text')
    found = {}
    for line in data.split(b'\n'):
        match = _BACKUP_LOCATION_RE.fullmatch(line.rstrip(b'\r').decode('ascii', 'replace'))
        if match:
            if match.group(1) in found:
                raise refuse('it has two %s WAL LOCATION lines' % match.group(1))
            found[match.group(1)] = (parse_lsn(match.group(2)), match.group(3))
    if set(found) != {'START', 'STOP'}:
        raise refuse('it lacks a %s WAL LOCATION line' % ' and a '.join(sorted({'START', 'STOP'} - set(found))))
    (start, start_file), (stop, stop_file) = found['START'], found['STOP']
    # The name carries the stop timeline, the START line the start one: compare log id and segment.
    if start_file[8:] != name[8:24] or not is_segment_name(start_file):
        raise refuse('it starts in %s, not in the segment its name says' % start_file)
    if not is_segment_name(stop_file):
        raise refuse('its STOP WAL LOCATION line names %s, which is not a WAL segment' % stop_file)
    if stop < start:
        raise refuse('it stops at %s, before its start %s' % (format_lsn(stop), format_lsn(start)))
    for size in _SEGMENT_SIZES:
        if start % size != wal_file.offset or lsn_segment_name(start, timeline_of(start_file), size) != start_file:
            continue
        # PostgreSQL 15 and older name the segment before the stop LSN, 16 and later the one holding it.
        stop_timeline = timeline_of(stop_file)
        stop_files = (lsn_segment_name(stop, stop_timeline, size), walfile_name_offset(stop, stop_timeline, size)[0])
        if stop_file in stop_files:
            return BackupHistory(start, stop, size)
    raise refuse(
        'its start %s (file %s) and stop %s (file %s) do not match its name for any segment size'
        % (format_lsn(start), start_file, format_lsn(stop), stop_file)
    )


def timeline_path(timeline: int, history_entries: Iterable[HistoryEntry]) -> List[Tuple[int, int]]:
    """[(timeline, first LSN on it)] from timeline 1 to ``timeline``, following its history file."""
    path = []
    start = 0
    for entry in history_entries:
        path.append((entry.parent_timeline, start))
        start = entry.switch_lsn
    path.append((timeline, start))
    return path


SegmentSpan = collections.namedtuple('SegmentSpan', ['timeline', 'first', 'last'])


def recovery_spans(
    first_segno: int, last_segno: int, path: Iterable[Tuple[int, int]], segment_size: int
) -> List[SegmentSpan]:
    """The segments recovery reads for segment numbers first..last along ``path``, as SegmentSpans
    (segment numbers, both ends included), in order: one span per timeline, never a list of names.

    The segment holding a switch point is read from the new timeline, as PostgreSQL does.
    """
    starts = [(lsn // segment_size, timeline) for timeline, lsn in path]
    spans = []
    for index, (start, timeline) in enumerate(starts):
        # A later timeline starting at or before a segment takes it over (the last one wins).
        taken_from = min([later for later, _tli in starts[index + 1 :]], default=last_segno + 1)
        low, high = max(first_segno, start), min(last_segno, taken_from - 1)
        if low <= high:
            spans.append(SegmentSpan(timeline, low, high))
    return spans


def segment_runs(segnos: Iterable[int]) -> List[Tuple[int, int]]:
    """[(first, last)] runs of consecutive numbers, from sorted distinct segment numbers."""
    runs = []
    for segno in segnos:
        if runs and runs[-1][1] == segno - 1:
            runs[-1] = (runs[-1][0], segno)
        else:
            runs.append((segno, segno))
    return runs


def uncovered(span: SegmentSpan, runs: Sequence[Tuple[int, int]]) -> List[SegmentSpan]:
    """The parts of ``span`` that ``runs`` (sorted, disjoint (first, last) on its timeline) leave out."""
    holes = []
    low = span.first
    for first, last in runs[max(bisect.bisect_right(runs, (span.first,)) - 1, 0) :]:
        if first > span.last:
            break
        if last < low:
            continue
        if first > low:
            holes.append(SegmentSpan(span.timeline, low, first - 1))
        low = last + 1
        if low > span.last:
            break
    if low <= span.last:
        holes.append(SegmentSpan(span.timeline, low, span.last))
    return holes


def span_length(span: SegmentSpan) -> int:
    return span.last - span.first + 1
