# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Is a server's WAL archive working and complete? The pg_wal_archive check, outside the module."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import time

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, postgres, wal

POLL_SECONDS = 0.2


def oldest_backup_begin_wal(layout):
    """begin_wal of the oldest DONE backup, where continuity must start; None without backups."""
    for info in catalog.backup_infos(layout).values():
        if info['status'] == catalog.DONE and info['begin_wal']:
            return info['begin_wal']
    return None


def wait_for_wal(wal_archive, name, timeout):
    """Seconds it took ``name`` to arrive, or None after ``timeout`` seconds."""
    started = time.time()
    while True:
        if wal_archive.locate(name) is not None:
            return round(time.time() - started, 3)
        if time.time() - started > timeout:
            return None
        time.sleep(POLL_SECONDS)


def check_archive(wal_archive, params, switch=True):
    """Switch WAL and wait for it (when connected), then check continuity; problems are sentences."""
    result = dict(problems=[])
    segment_size = params.get('segment_size')
    if params.get('pg_host'):
        conn = postgres.connect(**dict((k, v) for k, v in params.items() if k.startswith('pg_')))
        try:
            segment_size = postgres.wal_segment_size(conn)
            result['archiver'] = postgres.archiver_stats(conn)
            if switch:
                name = postgres.switch_wal(conn)
                result['switched_wal'] = name
                result['arrival_seconds'] = wait_for_wal(wal_archive, name, params['timeout'])
                if result['arrival_seconds'] is None:
                    stats = postgres.archiver_stats(conn)
                    result['archiver'] = stats
                    result['problems'].append(
                        'WAL %s did not reach the archive of %s within %d s (PostgreSQL: %d archived, '
                        '%d failed, last failure %s at %s): check archive_command and the PostgreSQL log '
                        'on the server.'
                        % (
                            name,
                            wal_archive.layout.server,
                            params['timeout'],
                            stats['archived_count'],
                            stats['failed_count'],
                            stats['last_failed_wal'],
                            stats['last_failed_time'],
                        )
                    )
        finally:
            conn.close()
    segment_size = wal.validate_segment_size(segment_size or wal.DEFAULT_SEGMENT_SIZE)
    first = params.get('first_wal') or oldest_backup_begin_wal(wal_archive.layout)
    continuity = wal_archive.continuity(segment_size, first)
    if switch and result.get('arrival_seconds') is not None:
        # The sender's look-ahead agent may deliver a segment before PostgreSQL's own call for an
        # earlier one has finished: give such a hole the same time to close.
        deadline = time.time() + params['timeout']
        while continuity['missing'] and time.time() < deadline:
            time.sleep(POLL_SECONDS)
            continuity = wal_archive.continuity(segment_size, first)
    result['continuity'] = continuity
    for first_missing, last_missing in continuity['missing']:
        result['problems'].append(
            'WAL %s is missing from the archive of %s: recovery cannot pass it. Copy it from pg_wal on '
            'the server if it is still there, then take a new backup.'
            % (
                first_missing if first_missing == last_missing else '%s to %s' % (first_missing, last_missing),
                wal_archive.layout.server,
            )
        )
    result['incoming_backlog'] = wal_archive.incoming_backlog()
    if os.path.exists(wal_archive.layout.process_log):
        with open(wal_archive.layout.process_log) as log:
            result['process_errors'] = log.read().splitlines()[-10:]
    return result
