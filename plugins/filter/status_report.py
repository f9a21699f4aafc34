# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jinja filters that turn the server list of pg_backup_catalog into a text table or a static HTML page."""


# Each filter is documented in a file of its own beside this one (status_table.yml and status_html.yml):
# ansible-doc reads such a file only when the plugin file holds no DOCUMENTATION.

import datetime
from collections.abc import Mapping
from html import escape

from ansible.errors import AnsibleFilterError

UTC = datetime.timezone.utc
WIDTH = 900
HEIGHT = 116
MARGIN = 24


class _Html(str):
    """Text that is already HTML, not to be escaped again."""


def _dict(value):
    return value if isinstance(value, Mapping) else {}


def _items(mapping, key):
    """The dicts in a list-valued key, tolerating None or a missing key."""
    value = _dict(mapping).get(key)
    return [item for item in value if isinstance(item, Mapping)] if isinstance(value, (list, tuple)) else []


def _servers(servers, name):
    if not isinstance(servers, (list, tuple)):
        raise AnsibleFilterError(
            '%s expects the list of server dicts of pg_backup_catalog, got %s' % (name, type(servers).__name__)
        )
    for index, item in enumerate(servers):
        if not isinstance(item, Mapping):
            raise AnsibleFilterError(
                '%s: item %d of the server list is a %s, not a dict' % (name, index, type(item).__name__)
            )
    return servers


def _text(value, default='-'):
    return default if value is None or value == '' else ' '.join(str(value).split())


def _time(value):
    """An aware datetime from isoformat() text (a trailing Z accepted; naive taken as UTC), else None."""
    moment = value if isinstance(value, datetime.datetime) else None
    if isinstance(value, str) and value.strip():
        text = value.strip()
        try:
            moment = datetime.datetime.fromisoformat(text[:-1] + '+00:00' if text[-1] in 'zZ' else text)
        except ValueError:
            return None
    return moment.replace(tzinfo=UTC) if moment and moment.tzinfo is None else moment


def _when(value, default='-', fmt='%Y-%m-%d %H:%M:%S'):
    moment = _time(value)
    return moment.astimezone(UTC).strftime(fmt) if moment else default


def _size(value):
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return '-'
    amount, units = float(value), ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB']
    while abs(amount) >= 1024 and len(units) > 1:
        amount /= 1024
        units.pop(0)
    return '%.0f B' % amount if units[0] == 'B' else '%.1f %s' % (amount, units[0])


def _backup_class(status):
    return {'DONE': 'ok', 'FAILED': 'critical'}.get(status, 'warning')


def _status(value):
    text = str(value or '').lower()
    return text if text in ('ok', 'warning', 'critical') else 'unknown'


def _verified(value):
    """A backup's verification result, '-' when it was never verified."""
    return _text(_dict(value).get('result'))


def _verified_class(text):
    return {'PASSED': 'ok', 'FAILED': 'critical'}.get(text, 'unknown')


def _last_verified_text(server):
    """When the newest backup that passed a verification was verified, or never; a FAILED newest backup too.
    None for a server list without verification fields (not 'never': unknown)."""
    if 'last_verified' not in server:
        return None
    last, latest = _dict(server.get('last_verified')), _dict(server.get('latest_verification'))
    text = 'last verified never'
    if last:
        text = 'last verified %s UTC (%s PASSED)' % (
            _when(last.get('verified_at'), '?'),
            _text(last.get('backup_id'), '?'),
        )
    if latest.get('result') == 'FAILED':
        text += ', newest backup %s FAILED verification' % _text(latest.get('backup_id'), '?')
    return text


# Backup columns: header, key, formatter, whether the text table shows it too (the HTML page shows all).
FIELDS = (
    ('backup id', 'backup_id', _text, True),
    ('status', 'status', _text, True),
    ('type', 'backup_type', _text, True),
    ('begin (UTC)', 'begin_time', _when, False),
    ('end (UTC)', 'end_time', _when, True),
    ('begin WAL', 'begin_wal', _text, False),
    ('end WAL', 'end_wal', _text, False),
    ('size', 'size', _size, True),
    ('new', 'deduplicated_size', _size, True),
    ('WAL', 'wal_size', _size, True),
    ('keep', 'keep', _text, True),
    ('verified', 'verification', _verified, True),
    ('retention', 'retention_status', _text, True),
    ('error', 'error', _text, False),
    ('verified at (UTC)', 'verification', lambda v: _when(_dict(v).get('verified_at')), False),
    ('verification failure', 'verification', lambda v: _text(_dict(v).get('first_failure')), False),
)
VERIFIED_COLUMN = [field[0] for field in FIELDS].index('verified')
TEXT_FIELDS = [field for field in FIELDS if field[3]]


def _row(backup, fields):
    return [field[2](backup.get(field[1])) for field in fields]


def _window_end(server):
    """When the recoverable window ends: the newest archived WAL, else the end of the newest DONE backup."""
    done = [_time(b.get('end_time')) for b in _items(server, 'backups') if b.get('status') == 'DONE']
    return _time(_dict(server.get('window')).get('last_wal_time')) or max([t for t in done if t], default=None)


def _window_text(server):
    if not isinstance(server.get('window'), Mapping):  # pg_backup_catalog computes it only with action=check
        return 'window unknown'
    first = _time(server['window'].get('first_recoverable_time'))
    if not first:
        return 'nothing recoverable'
    return 'from %s to %s UTC' % (_when(first), _when(_window_end(server), 'unknown'))


def _gap_text(gap):
    return 'WAL gap %s..%s (after %s, before %s)' % (
        _text(gap.get('first'), '?'),
        _text(gap.get('last'), '?'),
        _when(gap.get('after_time'), '?'),
        _when(gap.get('before_time'), '?'),
    )


def status_table(servers):
    """A fixed-width text table of every server; columns are aligned across all servers."""
    if not _servers(servers, 'status_table'):
        return 'no servers'
    rows = [[_row(b, TEXT_FIELDS) for b in _items(s, 'backups')] for s in servers]
    headers = [field[0] for field in TEXT_FIELDS]
    widths = [max(len(row[col]) for row in [headers] + sum(rows, [])) for col in range(len(headers))]
    right = [field[2] is _size for field in TEXT_FIELDS]

    def line(cells):
        return '  ' + '  '.join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right)).rstrip()

    lines = []
    for server, backups in zip(servers, rows):
        status = _text(server.get('status'), 'unknown').upper()
        version = 'PostgreSQL %s' % server['pg_version'] if server.get('pg_version') else None
        head = [_text(server.get('server'), '?'), version, status, _window_text(server), _last_verified_text(server)]
        lines += ['', '  '.join(part for part in head if part)]
        lines += [line(row) for row in [headers] + backups] if backups else ['  no backups']
        lines += ['  ' + _gap_text(gap) for gap in _items(server.get('window'), 'gaps')]
        for check in _items(server, 'checks'):
            if check.get('status') != 'ok':
                name, status = _text(check.get('name'), '?'), _text(check.get('status'), 'unknown')
                lines.append('  %s: %s - %s' % (name, status, _text(check.get('message'), '')))
    return '\n'.join(lines[1:])


def _attrs(**attrs):
    return ''.join(' %s="%s"' % (key.rstrip('_').replace('_', '-'), escape(str(val))) for key, val in attrs.items())


def _svg(server):
    """An inline SVG of one server's recoverable window, WAL gaps and backups on a time axis."""
    window, backups = _dict(server.get('window')), _items(server, 'backups')
    gaps, first, end = _items(window, 'gaps'), _time(window.get('first_recoverable_time')), _window_end(server)
    times = [first, end] + [_time(b.get(k)) for b in backups for k in ('begin_time', 'end_time')]
    times = [t for t in times + [_time(g.get(k)) for g in gaps for k in ('after_time', 'before_time')] if t]
    label = 'recoverable window of %s' % _text(server.get('server'), '?')
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" role="img" aria-label="%s">'
        % (WIDTH, HEIGHT, WIDTH, HEIGHT, escape(label))
    ]
    if not times:
        return out[0] + '<text x="%d" y="33">%s</text></svg>' % (MARGIN, escape(_window_text(server)))
    low, high = min(times), max(times)
    span = (high - low).total_seconds()

    scale = (WIDTH - 2 * MARGIN) / span if span > 0 else 0

    def x(moment):
        return round(MARGIN + (moment - low).total_seconds() * scale, 1) if span > 0 else WIDTH / 2

    def rect(cls, left, right, top, height, title):
        # At least 3 px wide, so that a zero-length interval still shows; always inside the picture.
        width = max(right - left, 3)
        left = min(max(left - (width - (right - left)) / 2, 0), WIDTH - width)
        box = _attrs(class_=cls, x=round(left, 1), y=top, width=round(width, 1), height=height)
        return '<rect%s><title>%s</title></rect>' % (box, escape(title))

    if first:
        left, right = sorted((x(first), x(end or first)))
        out.append(rect('window', left, right, 20, 18, 'recoverable ' + _window_text(server)))
    else:
        out.append('<text x="%d" y="33">%s</text>' % (MARGIN, escape(_window_text(server))))
    for gap in gaps:
        after, before = _time(gap.get('after_time')) or first or low, _time(gap.get('before_time')) or end or high
        left, right = sorted((x(after), x(before)))
        out.append(rect('gap', left, right, 16, 26, _gap_text(gap)))
    for backup in backups:
        moment = _time(backup.get('end_time')) or _time(backup.get('begin_time'))
        if not moment:
            continue
        cell, cx = dict(zip([field[0] for field in FIELDS], _row(backup, FIELDS))), x(moment)
        kind = {'DONE': 'done', 'FAILED': 'failed'}.get(cell['status'], 'other')
        title = '%s %s, ended %s UTC, keep %s, retention %s, verified %s' % tuple(
            cell[name] for name in ('backup id', 'status', 'end (UTC)', 'keep', 'retention', 'verified')
        )
        shape = {
            'done': '<circle cx="%s" cy="60" r="6"/>' % cx,
            'failed': '<path d="M%s 54l12 12m0 -12l-12 12"/>' % (cx - 6),
            'other': '<rect x="%s" y="54" width="12" height="12"/>' % (cx - 6),
        }[kind]
        if backup.get('keep'):
            shape += '<path class="kept" d="M%s 50l5 -8h-10z"/>' % cx
        out.append('<g class="marker %s"><title>%s</title>%s</g>' % (kind, escape(title), shape))
    out.append('<line class="axis" x1="%d" y1="80" x2="%d" y2="80"/>' % (MARGIN, WIDTH - MARGIN))
    fmt = '%Y-%m-%d %H:%M' if span < 3 * 86400 else '%Y-%m-%d'
    for step, moment in enumerate([low] if span <= 0 else [low + (high - low) * i / 4 for i in range(5)]):
        anchor = {0: 'start', 4: 'end'}.get(step, 'middle') if span > 0 else 'middle'
        tick = _attrs(class_='axis', x1=x(moment), y1=76, x2=x(moment), y2=84)
        text = _attrs(x=x(moment), y=100, text_anchor=anchor)
        out.append('<line%s/><text%s>%s</text>' % (tick, text, _when(moment, fmt=fmt)))
    out.append('<text x="%d" y="114" text-anchor="end">UTC</text></svg>' % (WIDTH - MARGIN))
    return ''.join(out)


def _table(headers, rows, classes=None):
    """An HTML table; classes maps a column index to a function of the cell text giving its CSS class."""
    head = ''.join('<th>%s</th>' % escape(h) for h in headers)
    body = ''.join(
        '<tr>%s</tr>'
        % ''.join(
            '<td%s>%s</td>'
            % (_attrs(class_=classes[i](c)) if i in (classes or {}) else '', c if isinstance(c, _Html) else escape(c))
            for i, c in enumerate(row)
        )
        for row in rows
    )
    return '<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>' % (head, body)


CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1em}
th,td{border:1px solid #ccc;padding:.2em .6em;text-align:left;vertical-align:top}th{background:#eee}
.ok{background:#d4edda}.warning{background:#fff3cd}.critical{background:#f8d7da}.unknown{background:#e2e3e5}
svg{display:block;max-width:100%;height:auto}svg text{font-size:12px;fill:#333}.legend span{margin-right:1.5em}
.window{fill:#7fb8e6}.gap{fill:#d62728;opacity:.85}.done circle{fill:#2ca02c}.failed path{stroke:#d62728;stroke-width:3}
.other rect{fill:#ff9f1c}.marker .kept{fill:#6f42c1;stroke:none}.axis{stroke:#555}"""
LEGEND = (
    '<p class="legend"><span style="color:#7fb8e6">&#9632; recoverable window</span>'
    '<span style="color:#d62728">&#9632; WAL gap</span><span style="color:#2ca02c">&#9679; DONE backup</span>'
    '<span style="color:#d62728">&#10005; FAILED backup</span><span style="color:#ff9f1c">&#9632; other backup</span>'
    '<span style="color:#6f42c1">&#9660; kept</span></p>'
)


def status_html(servers, generated_at=None):
    """One static HTML page (inline CSS and SVG, no script) with every server's window, backups and checks."""
    _servers(servers, 'status_html')
    parts = ['<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Barman backup status</title>']
    parts.append('<style>%s</style></head><body><h1>Barman backup status</h1>' % CSS)
    if generated_at is not None:
        when = _when(generated_at, fmt='%Y-%m-%d %H:%M:%S UTC') if _time(generated_at) else _text(generated_at)
        parts.append('<p>Generated %s</p>' % escape(when))
    summary = []
    for index, server in enumerate(servers):
        name, nagios = escape(_text(server.get('server'), '?')), escape(_text(server.get('nagios'), ''))
        link, code = _Html('<a href="#server-%d">%s</a>' % (index, name)), _Html('<code>%s</code>' % nagios)
        count = str(len(_items(server, 'backups')))
        verified = _last_verified_text(server) or '-'
        version = _text(server.get('pg_version'), '-')
        summary.append(
            [link, version, _status(server.get('status')).upper(), count, _window_text(server), verified, code]
        )
    headers = ['server', 'PostgreSQL', 'status', 'backups', 'recoverable window', 'verification', 'nagios']
    parts.append(_table(headers, summary, {2: str.lower}) if servers else '<p>No servers.</p>')
    parts.append(LEGEND if servers else '')
    for index, server in enumerate(servers):
        status, backups, checks = _status(server.get('status')), _items(server, 'backups'), _items(server, 'checks')
        name, gaps = escape(_text(server.get('server'), '?')), _items(server.get('window'), 'gaps')
        parts.append('<section id="server-%d"><h2>%s <small class="%s">%s</small></h2>' % (index, name, status, status))
        verified = _last_verified_text(server)
        parts.append('<p>Recoverable %s</p>' % escape(_window_text(server)))
        parts.append('<p>%s</p>' % escape(verified[0].upper() + verified[1:]) if verified else '')
        parts.append('%s<h3>Backups</h3>' % _svg(server))
        rows = [_row(b, FIELDS) for b in backups]
        classes = {1: _backup_class, VERIFIED_COLUMN: _verified_class}
        parts.append(_table([f[0] for f in FIELDS], rows, classes) if rows else '<p>No backups.</p>')
        if gaps:
            parts.append('<h3>WAL gaps</h3><ul>%s</ul>' % ''.join('<li>%s</li>' % escape(_gap_text(g)) for g in gaps))
        rows = [
            [_text(c.get(k), d) for k, d in (('name', '?'), ('status', 'unknown'), ('message', ''))] for c in checks
        ]
        checks = _table(['check', 'status', 'message'], rows, {1: _status}) if rows else '<p>No checks.</p>'
        parts.append('<h3>Checks</h3>%s</section>' % checks)
    return ''.join(parts) + '</body></html>\n'


class FilterModule:
    def filters(self):
        return dict(status_table=status_table, status_html=status_html)
