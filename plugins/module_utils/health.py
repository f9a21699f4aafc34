# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Health of a server's backups and WAL archive, as ok / warning / critical checks and a Nagios line."""

import datetime
import os
from typing import Any, Dict, Iterable, Mapping, Optional, Sequence

from ansible_collections.barman.postgresql.plugins.module_utils import (
    archive_actions,
    catalog,
    infofile,
    mirror,
    postgres,
    server_catalog,
    verifyfile,
    wal_store,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

OK = 'ok'
WARNING = 'warning'
CRITICAL = 'critical'
_RANK = {OK: 0, WARNING: 1, CRITICAL: 2}
INCOMING_BACKLOG_WARNING = 64


def worst(statuses: Iterable[str]) -> str:
    return max(statuses, key=_RANK.get, default=OK)


def age_text(seconds: float) -> str:
    """An age as a person reads it: seconds, minutes or hours."""
    if seconds < 120:
        return '%d s' % seconds
    if seconds < 7200:
        return '%d min' % (seconds // 60)
    if seconds < 2 * 86400:
        return '%.1f h' % (seconds / 3600.0)
    return '%.1f days' % (seconds / 86400.0)


def _parse_pg_time(text):
    return datetime.datetime.fromisoformat(text.replace(' ', 'T', 1)) if text else None


def nagios_line(server: str, status: str, checks: Sequence[Mapping[str, Any]]) -> str:
    problems = ['%s: %s' % (c['name'], c['message']) for c in checks if c['status'] != OK]
    detail = '; '.join(problems) if problems else '%d checks ok' % len(checks)
    return 'BARMAN %s - %s: %s' % (status.upper(), server, detail)


class _Checks:
    def __init__(self):
        self.items = []

    def add(self, name, status, message):
        self.items.append(dict(name=name, status=status, message=message))


def _backup_checks(checks, server, options, now):
    # In the order they began: ids are local time, which goes back when daylight saving time ends.
    order = infofile.ordered_backup_ids(server.infos)
    done = infofile.done_backup_ids(server.infos)
    minimum = options.get('minimum_redundancy') or 0
    if not done:
        checks.add('backups', CRITICAL, 'no DONE backup: nothing can be recovered; run playbooks/backup.yml')
    elif len(done) < minimum:
        checks.add('backups', CRITICAL, '%d DONE backup(s), fewer than minimum_redundancy %d' % (len(done), minimum))
    else:
        checks.add('backups', OK, '%d DONE backup(s)' % len(done))
    if done:
        newest = server.infos[done[-1]]
        age = (now - newest['end_time']).total_seconds() if newest['end_time'] else None
        limit = options.get('last_backup_maximum_age')
        if age is None:
            checks.add('last_backup_age', WARNING, 'backup %s has no end time' % done[-1])
        elif limit is not None and age > limit:
            checks.add(
                'last_backup_age',
                CRITICAL,
                'last backup %s ended %s ago, more than the maximum of %s' % (done[-1], age_text(age), age_text(limit)),
            )
        else:
            checks.add('last_backup_age', OK, 'last backup %s ended %s ago' % (done[-1], age_text(age)))
    after_last_good = order[order.index(done[-1]) + 1 :] if done else order
    failed = [b for b in after_last_good if server.infos[b]['status'] == infofile.FAILED]
    if failed:
        checks.add(
            'failed_backups',
            WARNING,
            'backup %s FAILED after the last good one: %s' % (failed[-1], server.infos[failed[-1]].get('error')),
        )
    else:
        checks.add('failed_backups', OK, 'no failure since the last good backup')


def _verification_check(checks, server, options, now):
    """The newest backup must not have failed its verification, and some backup must have passed one lately:
    a backup nobody restored is a hope, not a backup."""
    done = server.done_ids()
    if not done:
        return  # the backups check is already critical
    newest = server.verification(done[-1])
    if newest and newest['result'] == verifyfile.FAILED:
        checks.add(
            'verification',
            CRITICAL,
            'newest backup %s FAILED its verification at %s: %s'
            % (done[-1], newest['verified_at'], newest['first_failure'] or 'no failure recorded'),
        )
        return
    limit = options.get('verify_max_age')
    passed = server.last_verified_id()
    if passed:
        moment = verifyfile.verified_at(server.verifications[passed])
        what = 'backup %s PASSED its verification %s ago' % (passed, age_text((now - moment).total_seconds()))
    else:
        # Never verified: the clock runs from the oldest backup, so that a new server gets time for a first run.
        ends = [server.infos[b]['end_time'] for b in done if server.infos[b]['end_time']]
        moment = min(ends) if ends else now
        what = 'no backup has PASSED a verification; the oldest ended %s ago' % age_text((now - moment).total_seconds())
    if limit is not None and (now - moment).total_seconds() > limit:
        checks.add(
            'verification',
            WARNING,
            '%s, more than the maximum of %s; run playbooks/verify.yml' % (what, age_text(limit)),
        )
    else:
        checks.add('verification', OK, what)


def _wal_checks(checks, server, options, now):
    """Continuity from the oldest backup kept for point-in-time recovery on, the islands of older
    standalone backups, freshness, backlog; returns the recoverable window."""
    try:
        wal_archive = wal_store.WalArchive(server.layout.barman_home, server.layout.server)
        origin = infofile.archive_origin(server.infos, server.keeps)
        continuity = wal_archive.continuity(server.segment_size, origin['begin_wal'])
        islands = archive_actions.island_reports(wal_archive, origin['islands'], server.segment_size)
    except BarmanError as exc:
        checks.add('wal_archive', CRITICAL, str(exc))
        return server.window()
    gaps = continuity['missing']
    broken = [
        '%s (backup %s, kept standalone)' % (_ranges(i['missing']), i['backup_id']) for i in islands if not i['ok']
    ]
    if gaps or broken:
        checks.add(
            'wal_archive',
            CRITICAL,
            'WAL missing from the archive: %s; recovery cannot pass it'
            % ', '.join(([_ranges(gaps)] if gaps else []) + broken),
        )
    elif continuity['last'] is None:
        checks.add('wal_archive', WARNING, 'no WAL archived yet')
    else:
        checks.add(
            'wal_archive',
            OK,
            '%d segments from %s to %s, no gap%s'
            % (
                continuity['segments'],
                continuity['first'],
                continuity['last'],
                '; the WAL of %d older backup(s) kept standalone is complete' % len(islands) if islands else '',
            ),
        )
    window = server.window(gaps)
    limit = options.get('wal_maximum_age')
    if window['last_wal_time'] is not None:
        age = (now - datetime.datetime.fromisoformat(window['last_wal_time'])).total_seconds()
        if limit is not None and age > limit:
            checks.add(
                'wal_freshness',
                CRITICAL,
                'newest WAL %s arrived %s ago, more than the maximum of %s'
                % (window['last_wal'], age_text(age), age_text(limit)),
            )
        else:
            checks.add('wal_freshness', OK, 'newest WAL %s arrived %s ago' % (window['last_wal'], age_text(age)))
    backlog = wal_archive.incoming_backlog()
    if len(backlog) > INCOMING_BACKLOG_WARNING:
        checks.add(
            'wal_processing',
            WARNING,
            '%d files wait in incoming/; see %s and run pg_wal_archive action=process'
            % (len(backlog), server.layout.process_log),
        )
    return window


def _ranges(ranges):
    return ', '.join(a if a == b else '%s..%s' % (a, b) for a, b in ranges)


def _archiver_check(checks, server, options):
    """What PostgreSQL says about its archive_command (pg_stat_archiver)."""
    try:
        conn = postgres.connect_with(options)
    except BarmanError as exc:
        checks.add('archiver', CRITICAL, 'cannot ask PostgreSQL: %s' % exc)
        return None
    try:
        stats = postgres.archiver_stats(conn)
    finally:
        conn.close()
    failed_at = _parse_pg_time(stats['last_failed_time'])
    archived_at = _parse_pg_time(stats['last_archived_time'])
    if failed_at and (archived_at is None or failed_at > archived_at):
        checks.add(
            'archiver',
            CRITICAL,
            'archive_command is failing: %s failed at %s (%d failures), last success %s at %s; '
            'pg_wal grows until it works again, see the PostgreSQL log'
            % (
                stats['last_failed_wal'],
                stats['last_failed_time'],
                stats['failed_count'],
                stats['last_archived_wal'],
                stats['last_archived_time'],
            ),
        )
    elif stats['last_archived_wal'] and not _located(server, stats['last_archived_wal']):
        checks.add(
            'archiver',
            CRITICAL,
            'PostgreSQL archived %s but it is not in this archive: archive_command sends WAL elsewhere'
            % stats['last_archived_wal'],
        )
    else:
        checks.add('archiver', OK, '%d archived, last %s' % (stats['archived_count'], stats['last_archived_wal']))
    return stats


def _located(server, name):
    return wal_store.WalArchive(server.layout.barman_home, server.layout.server).locate(name) is not None


def _disk_check(checks, path, options):
    stat = os.statvfs(path)
    free = 100.0 * stat.f_bavail / stat.f_blocks if stat.f_blocks else 100.0
    message = '%.1f%% free (%.1f GiB) on %s' % (free, stat.f_bavail * stat.f_frsize / 2.0**30, path)
    if free < options.get('disk_critical_percent', 5):
        checks.add('disk_space', CRITICAL, message)
    elif free < options.get('disk_warning_percent', 10):
        checks.add('disk_space', WARNING, message)
    else:
        checks.add('disk_space', OK, message)


def _mirror_check(checks, layout, options, now):
    """A mirror's catalog: how far its WAL is behind its primary's (the primary's catalog reader says)."""
    primary = mirror.mirror_of(layout)
    if primary is None:
        return None
    try:
        lag = mirror.lag(layout, now.timestamp())
    except (BarmanError, OSError, ValueError) as error:
        checks.add('mirror', WARNING, 'lag behind %s unknown: its catalog cannot be read (%s)' % (primary, error))
        return None
    seconds = lag['behind_seconds']
    critical, warning = options.get('mirror_lag_critical'), options.get('mirror_lag_warning')
    status = CRITICAL if critical and seconds >= critical else WARNING if warning and seconds >= warning else OK
    checks.add(
        'mirror',
        status,
        'WAL %d segment(s), %s behind %s' % (lag['behind_segments'], age_text(seconds), primary),
    )
    return lag


def check_server(
    layout: catalog.ServerLayout,
    options: Mapping[str, Any],
    policy: Any = None,
    now: Optional[datetime.datetime] = None,
) -> Dict[str, Any]:
    """Every check of one server, with its catalog summary and recoverable window.

    ``options``: minimum_redundancy, last_backup_maximum_age, wal_maximum_age and verify_max_age (seconds or None),
    disk_warning_percent, disk_critical_percent, mirror_lag_warning and mirror_lag_critical (seconds, for a
    mirror's catalog), and pg_* to ask PostgreSQL (pg_host None: skipped).
    """
    now = now or catalog.now_utc()
    server = server_catalog.ServerCatalog(layout)
    checks = _Checks()
    if server.malformed:
        checks.add(
            'catalog',
            CRITICAL,
            'cannot read %s' % '; '.join('%s (%s)' % (m['path'], m['error']) for m in server.malformed),
        )
    _backup_checks(checks, server, options, now)
    _verification_check(checks, server, options, now)
    window = _wal_checks(checks, server, options, now)
    result = server.summary(policy, options.get('minimum_redundancy') or 0, now)
    if options.get('pg_host'):
        result['archiver'] = _archiver_check(checks, server, options)
    result['mirror'] = _mirror_check(checks, layout, options, now)
    _disk_check(checks, layout.barman_home, options)
    status = worst(c['status'] for c in checks.items)
    result.update(
        checks=checks.items,
        status=status,
        nagios=nagios_line(layout.server, status, checks.items),
        window=window,
    )
    return result
