# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for plugins/filter/status_report.py."""

import copy
import re
import xml.etree.ElementTree as ET

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.barman.postgresql.plugins.filter import status_report

SVG = '{http://www.w3.org/2000/svg}'


def backup(backup_id, status='DONE', end='2026-11-26T10:20:00+00:00', **extra):
    item = {
        'backup_id': backup_id,
        'status': status,
        'begin_time': None if end is None else end[:14] + '15:00' + end[19:],
        'end_time': end,
        'begin_wal': '000000010000000000000004',
        'end_wal': '000000010000000000000005',
        'size': 1288490188,
        'deduplicated_size': 52428800,
        'wal_size': 512,
        'keep': None,
        'retention_status': 'VALID',
    }
    item.update(extra)
    return item


PG1 = {
    'server': 'pg1',
    'status': 'critical',
    'nagios': 'BARMAN CRITICAL - pg1: WAL gap',
    'checks': [
        {'name': 'last_backup_age', 'status': 'ok', 'message': 'last backup 2 hours ago'},
        {'name': 'wal_continuity', 'status': 'critical', 'message': '2 WAL gaps since the oldest backup'},
        {'name': 'disk_space', 'status': 'warning', 'message': 'only 9% free'},
    ],
    'backups': [
        backup('20261124T101500', end='2026-11-24T10:20:00+00:00', keep='full', retention_status='KEEP_FULL'),
        backup('20261125T101500', 'FAILED', end='2026-11-25T10:16:00+00:00', size=None, deduplicated_size=None),
        backup('20261126T101500', end='2026-11-26T10:20:00+01:00', size=512, retention_status='VALID'),
    ],
    'window': {
        'first_recoverable_time': '2026-11-24T10:20:00+00:00',
        'last_wal': '000000010000000000000030',
        'last_wal_time': '2026-11-27T08:00:00Z',
        'gaps': [
            {
                'first': '000000010000000000000010',
                'last': '000000010000000000000011',
                'after_time': None,
                'before_time': '2026-11-24T18:00:00+00:00',
            },
            {
                'first': '000000010000000000000020',
                'last': '000000010000000000000020',
                'after_time': '2026-11-26T01:00:00+00:00',
                'before_time': '2026-11-26T02:00:00+00:00',
            },
        ],
    },
}
PG2 = {
    'server': 'pg2',
    'status': 'ok',
    'nagios': 'BARMAN OK - pg2',
    'checks': [{'name': 'last_backup_age', 'status': 'ok', 'message': 'fine'}],
    'backups': [backup('20261126T031500', end='2026-11-26T03:20:00+00:00', size=10 * 1024**4, wal_size=None)],
    'window': {
        'first_recoverable_time': '2026-11-26T03:20:00+00:00',
        'last_wal': None,
        'last_wal_time': None,
        'gaps': [],
    },
}
EMPTY = {
    'server': '<x&y>',
    'status': 'warning',
    'nagios': 'BARMAN WARNING - <x&y>: no backup',
    'checks': [{'name': 'last_backup_age', 'status': 'warning', 'message': 'no backup <script>alert(1)</script>'}],
    'backups': [],
    'window': {'first_recoverable_time': None, 'last_wal': None, 'last_wal_time': None, 'gaps': []},
}
SERVERS = [PG1, PG2, EMPTY]


def svgs(page):
    """Every inline SVG of a page, parsed (which also proves it is well-formed XML)."""
    return [ET.fromstring(text) for text in re.findall(r'<svg.*?</svg>', page, re.DOTALL)]


def with_class(svg, tag, cls):
    return [e for e in svg.iter(SVG + tag) if cls in e.get('class', '').split()]


def test_filters_are_registered():
    filters = status_report.FilterModule().filters()
    assert filters == {'status_table': status_report.status_table, 'status_html': status_report.status_html}


def test_table_has_every_backup_and_aligned_columns():
    table = status_report.status_table(SERVERS)
    lines = table.splitlines()
    headers = [line for line in lines if line.lstrip().startswith('backup id')]
    assert len(headers) == 2 and headers[0] == headers[1]  # one header per server with backups, same widths
    header = headers[0]
    for server in (PG1, PG2):
        for item in server['backups']:
            rows = [line for line in lines if line.startswith('  ' + item['backup_id'])]
            assert len(rows) == 1
            row = rows[0]
            # Left-aligned columns start under their header, right-aligned ones end under it.
            assert row[header.index('status') :].startswith(item['status'] + ' ')
            assert row[header.index('retention') :] == item['retention_status']
            end = header.index('end (UTC)')
            assert re.match(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ', row[end:])
            size_end = header.index('size') + len('size')
            assert row[:size_end].endswith(status_report._size(item['size']))
            assert row[size_end] == ' '


def test_table_content():
    table = status_report.status_table(SERVERS)
    assert 'pg1  CRITICAL  from 2026-11-24 10:20:00 to 2026-11-27 08:00:00 UTC' in table
    # Times are shown in UTC: 10:20+01:00 is 09:20 UTC.
    assert '2026-11-26 09:20:00' in table
    # Without a WAL time the window ends with the newest DONE backup.
    assert 'pg2  OK  from 2026-11-26 03:20:00 to 2026-11-26 03:20:00 UTC' in table
    assert '<x&y>  WARNING  nothing recoverable\n  no backups' in table
    assert '1.2 GiB' in table and '50.0 MiB' in table and '512 B' in table and '10.0 TiB' in table
    assert 'full' in table and 'KEEP_FULL' in table
    assert 'WAL gap 000000010000000000000010..000000010000000000000011 (after ?, before 2026-11-24 18:00:00)' in table


def test_table_shows_only_checks_that_are_not_ok():
    table = status_report.status_table(SERVERS)
    assert '  wal_continuity: critical - 2 WAL gaps since the oldest backup' in table
    assert '  disk_space: warning - only 9% free' in table
    assert '  last_backup_age: warning - no backup <script>alert(1)</script>' in table
    assert 'last backup 2 hours ago' not in table and 'fine' not in table


def test_html_escapes_everything():
    page = status_report.status_html(SERVERS)
    assert '<x&y>' not in page and '&lt;x&amp;y&gt;' in page
    assert '<script' not in page and '&lt;script&gt;alert(1)&lt;/script&gt;' in page
    assert page.startswith('<!DOCTYPE html>') and page.rstrip().endswith('</html>')


def test_html_is_self_contained():
    page = status_report.status_html(SERVERS)
    for needle in ('<script', '<link', '<img', '<iframe', 'src=', 'url(', '@import', 'href="http'):
        assert needle not in page.lower(), needle
    assert not re.search(r'\son\w+=', page)  # no event handler attributes
    assert set(re.findall(r'href="([^"]*)"', page)) == {'#server-0', '#server-1', '#server-2'}
    assert '<style>' in page


def test_html_summary_and_tables():
    page = status_report.status_html(SERVERS)
    summary = page[: page.index('<section')]
    for server in SERVERS:
        assert status_report.escape(server['nagios']) in summary
    assert '<td class="critical">CRITICAL</td><td>3</td>' in summary
    assert '<td class="ok">OK</td><td>1</td>' in summary
    assert '<td class="warning">WARNING</td><td>0</td><td>nothing recoverable</td>' in summary
    for item in PG1['backups'] + PG2['backups']:
        assert '<td>%s</td>' % item['backup_id'] in page
    assert '<td class="critical">FAILED</td>' in page
    assert 'No backups.' in page
    # The HTML checks table lists every check, ok ones too.
    assert 'last backup 2 hours ago' in page


def test_svg_gaps_markers_and_bounds():
    page = status_report.status_html(SERVERS)
    pictures = svgs(page)
    assert len(pictures) == len(SERVERS)
    for server, svg in zip(SERVERS, pictures):
        width = float(svg.get('width'))
        assert len(with_class(svg, 'rect', 'gap')) == len(server['window']['gaps'])
        assert len(with_class(svg, 'g', 'marker')) == len(server['backups'])
        for rect in with_class(svg, 'rect', 'window') + with_class(svg, 'rect', 'gap'):
            left, size = float(rect.get('x')), float(rect.get('width'))
            assert 0 <= left and size > 0 and left + size <= width
        for circle in svg.iter(SVG + 'circle'):
            assert 0 <= float(circle.get('cx')) <= width
    pg1 = pictures[0]
    assert [g.get('class') for g in with_class(pg1, 'g', 'marker')] == ['marker done', 'marker failed', 'marker done']
    assert len(with_class(pg1, 'path', 'kept')) == 1
    (window_bar,) = with_class(pg1, 'rect', 'window')
    first_gap, second_gap = with_class(pg1, 'rect', 'gap')
    # A gap without after_time starts at the window's start; gaps lie on the window_bar.
    assert float(first_gap.get('x')) == float(window_bar.get('x'))
    assert (
        float(window_bar.get('x'))
        < float(second_gap.get('x'))
        < float(window_bar.get('x')) + float(window_bar.get('width'))
    )
    labels = [t.text for t in pg1.iter(SVG + 'text')]
    assert labels[0] == '2026-11-24 10:15' and labels[-2:] == ['2026-11-27 08:00', 'UTC']
    # Nothing recoverable: no window_bar, a note instead.
    assert not with_class(pictures[2], 'rect', 'window')
    assert 'nothing recoverable' in [t.text for t in pictures[2].iter(SVG + 'text')]


def test_generated_at_and_determinism():
    assert status_report.status_html(SERVERS) == status_report.status_html(copy.deepcopy(SERVERS))
    assert 'Generated' not in status_report.status_html(SERVERS)
    page = status_report.status_html(SERVERS, generated_at='2026-11-27T09:30:00+01:00')
    assert 'Generated 2026-11-27 08:30:00 UTC' in page
    assert 'Generated &lt;now&gt;' in status_report.status_html([], generated_at='<now>')


SAME = '2026-11-26T10:20:00+00:00'
EDGE_CASES = {
    'no servers': [],
    'empty dict': [{}],
    'nones': [{'server': None, 'status': None, 'checks': None, 'backups': None, 'window': None, 'nagios': None}],
    'window times none': [dict(PG1, window={'first_recoverable_time': None, 'last_wal_time': None, 'gaps': None})],
    'all times equal': [
        {
            'server': 'pg1',
            'backups': [
                backup('a', end=SAME, begin_time=SAME),
                backup('b', 'FAILED', end=SAME, begin_time=SAME, keep='standalone'),
            ],
            'window': {
                'first_recoverable_time': SAME,
                'last_wal_time': SAME,
                'gaps': [{'first': 'x', 'last': 'y', 'after_time': SAME, 'before_time': None}],
            },
        }
    ],
    'missing keys': [{'server': 'pg1', 'backups': [{}, {'backup_id': 'x'}], 'checks': [{}], 'window': {'gaps': [{}]}}],
    'garbage values': [
        {
            'server': 42,
            'status': 'bogus',
            'backups': [backup('a', 'STARTED', end='not a time', size='big'), 'not a dict', None],
            'window': {'first_recoverable_time': 'yesterday', 'last_wal_time': 12, 'gaps': 'none'},
            'checks': 'none',
        }
    ],
    'only times with Z': [
        {
            'server': 'pg1',
            'backups': [backup('a', end='2026-11-26T10:20:00Z')],
            'window': {'first_recoverable_time': '2026-11-26T10:20:00Z', 'last_wal_time': '2026-11-26T11:20:00z'},
        }
    ],
}


@pytest.mark.parametrize('servers', list(EDGE_CASES.values()), ids=list(EDGE_CASES))
def test_edge_cases_do_not_raise(servers):
    table = status_report.status_table(servers)
    page = status_report.status_html(servers, generated_at='2026-11-27T09:30:00Z')
    assert isinstance(table, str) and table
    assert page.startswith('<!DOCTYPE html>')
    pictures = svgs(page)
    assert len(pictures) == len(servers)
    for svg in pictures:
        width = float(svg.get('width'))
        for rect in svg.iter(SVG + 'rect'):
            assert 0 <= float(rect.get('x')) <= float(rect.get('x')) + float(rect.get('width')) <= width


def test_zero_width_range_draws_in_the_middle():
    page = status_report.status_html(EDGE_CASES['all times equal'])
    (svg,) = svgs(page)
    middle = float(svg.get('width')) / 2
    assert [float(c.get('cx')) for c in svg.iter(SVG + 'circle')] == [middle]
    (window_bar,) = with_class(svg, 'rect', 'window')
    assert float(window_bar.get('x')) < middle < float(window_bar.get('x')) + float(window_bar.get('width'))
    assert len(with_class(svg, 'g', 'marker')) == 2 and len(with_class(svg, 'path', 'kept')) == 1


def test_window_of_a_list_action_is_unknown_not_empty():
    listed = {'server': 'pg1', 'backups': [backup('a', error=None)], 'wal_count': 3}
    assert status_report.status_table([listed]).startswith('pg1  UNKNOWN  window unknown\n')
    assert 'window unknown' in [t.text for t in svgs(status_report.status_html([listed]))[0].iter(SVG + 'text')]


def test_html_shows_the_error_of_a_failed_backup():
    failed = backup('b', 'FAILED', error='failure <copy>')
    page = status_report.status_html([{'server': 'pg1', 'backups': [failed]}])
    assert '<td>failure &lt;copy&gt;</td>' in page
    assert 'failure' not in status_report.status_table([{'server': 'pg1', 'backups': [failed]}])


def test_trailing_z_is_accepted():
    table = status_report.status_table(EDGE_CASES['only times with Z'])
    assert 'from 2026-11-26 10:20:00 to 2026-11-26 11:20:00 UTC' in table


def test_empty_input():
    assert status_report.status_table([]) == 'no servers'
    assert 'No servers.' in status_report.status_html([])


@pytest.mark.parametrize('bad', [None, 'pg1', {'server': 'pg1'}, 42, [PG1, 'pg2'], [None]])
@pytest.mark.parametrize('name', ['status_table', 'status_html'])
def test_bad_input_raises(name, bad):
    with pytest.raises(AnsibleFilterError, match=name):
        getattr(status_report, name)(bad)


PASSED = {'result': 'PASSED', 'verified_at': '2026-11-25T03:00:00Z', 'failure_count': 0, 'first_failure': None}
FAILED = {
    'result': 'FAILED',
    'verified_at': '2026-11-26T12:00:00Z',
    'failure_count': 1,
    'first_failure': 'amcheck: <bad>',
}
VERIFIED = {
    'server': 'pg3',
    'status': 'critical',
    'last_verified': {'backup_id': '20261124T101500', 'verified_at': '2026-11-25T03:00:00Z'},
    'latest_verification': dict(FAILED, backup_id='20261126T101500'),
    'backups': [
        backup('20261124T101500', end='2026-11-24T10:20:00+00:00', verification=PASSED),
        backup('20261125T101500', end='2026-11-25T10:20:00+00:00', verification=None),
        backup('20261126T101500', verification=FAILED),
    ],
}
NEVER = {'server': 'pg4', 'status': 'ok', 'last_verified': None, 'latest_verification': None, 'backups': [backup('a')]}


def test_table_shows_the_last_verification_of_each_server_and_backup():
    lines = status_report.status_table([VERIFIED, NEVER]).splitlines()
    assert lines[0] == (
        'pg3  CRITICAL  window unknown  last verified 2026-11-25 03:00:00 UTC (20261124T101500 PASSED), '
        'newest backup 20261126T101500 FAILED verification'
    )
    header = lines[1]
    results = [line[header.index('verified') :].split()[0] for line in lines[2:5]]
    assert results == ['PASSED', '-', 'FAILED']
    assert 'pg4  OK  window unknown  last verified never' in lines
    assert 'amcheck' not in '\n'.join(lines)  # the checks line says why; the table stays narrow


def test_html_shows_the_last_verification_of_each_server_and_backup():
    page = status_report.status_html([VERIFIED, NEVER])
    summary = page[: page.index('<section')]
    assert '<th>verification</th>' in summary
    assert '<td>last verified 2026-11-25 03:00:00 UTC (20261124T101500 PASSED), newest backup' in summary
    assert '<td>last verified never</td>' in summary
    assert '<p>Last verified never</p>' in page
    assert '<th>verified</th>' in page and '<th>verified at (UTC)</th>' in page
    assert '<td class="ok">PASSED</td>' in page and '<td class="critical">FAILED</td>' in page
    assert '<td class="unknown">-</td>' in page
    assert '<td>2026-11-26 12:00:00</td><td>amcheck: &lt;bad&gt;</td>' in page
    assert 'verified FAILED' in [t.text for t in svgs(page)[0].iter(SVG + 'title')][-1]
