# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_wal_archive's options and actions: check (is a server's WAL archive working and complete?), process
(compress and index what was delivered) and rebuild (xlog.db from the files), outside the module."""

import os
import re
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError
from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    infofile,
    lockfile,
    mirror,
    postgres,
    server_catalog,
    wal,
    wal_store,
)

POLL_SECONDS = 0.2
# What server_catalog's remove renames a backup directory to before it deletes it.
_DELETING_RE = re.compile(r'\.[0-9]{8}T[0-9]{6}\.deleting\Z')


def continuity_origin(layout: catalog.ServerLayout) -> Dict[str, Any]:
    """Where the archive must be continuous from, and the islands before it (infofile.archive_origin),
    from the server's backups and their keep annotations as pg_backup_catalog reads them."""
    server = server_catalog.ServerCatalog(layout)
    return infofile.archive_origin(server.infos, server.keeps)


def sweep_deleted_backups(layout: catalog.ServerLayout) -> List[str]:
    """Remove the base/.<id>.deleting directories a killed delete left; returns their paths.

    Only under the backup lock, which a delete holds throughout (skipped when busy: a backup or a
    change runs), and only those unchanged for wal_store.STALE_SECONDS.
    """
    candidates = _stale_deleting(layout)
    if not candidates:
        return []
    try:
        with lockfile.ServerLock(layout, 'backup'):
            swept = []
            for path in _stale_deleting(layout):
                try:
                    shutil.rmtree(path)
                except OSError:
                    continue  # not ours to remove (another owner): a human sees it in base/
                swept.append(path)
            if swept:
                catalog.fsync_dir(layout.base_dir)
    except lockfile.LockBusy:
        return []
    return swept


def _stale_deleting(layout):
    if not os.path.isdir(layout.base_dir):
        return []
    stale = []
    for entry in sorted(os.listdir(layout.base_dir)):
        path = os.path.join(layout.base_dir, entry)
        if not _DELETING_RE.match(entry) or os.path.islink(path) or not os.path.isdir(path):
            continue
        if time.time() - os.lstat(path).st_mtime > wal_store.STALE_SECONDS:
            stale.append(path)
    return stale


def wait_for_wal(wal_archive: wal_store.WalArchive, name: str, timeout: float) -> Optional[float]:
    """Seconds it took ``name`` to arrive, or None after ``timeout`` seconds."""
    started = time.time()
    while True:
        if wal_archive.locate(name) is not None:
            return round(time.time() - started, 3)
        if time.time() - started > timeout:
            return None
        time.sleep(POLL_SECONDS)


def check_archive(
    wal_archive: wal_store.WalArchive, params: Mapping[str, Any], switch: bool = True, sweep: bool = True
) -> Dict[str, Any]:
    """Switch WAL and wait for it (when connected), then check continuity from the oldest backup kept for
    point-in-time recovery, and the islands of older standalone backups; problems are sentences. With
    ``sweep``, first remove what killed processes left (stale temporary files, half-deleted backups)."""
    result = dict(problems=[], swept=[])
    if sweep:
        result['swept'] = wal_archive.sweep_temp_files() + sweep_deleted_backups(wal_archive.layout)
    segment_size = params.get('segment_size')
    if params.get('pg_host'):
        conn = postgres.connect_with(params)
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
    origin = continuity_origin(wal_archive.layout)
    first = params.get('first_wal') or origin['begin_wal']
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
    result['islands'] = island_reports(wal_archive, origin['islands'], segment_size)
    for island in result['islands']:
        if not island['ok']:
            result['problems'].append(
                'WAL %s of backup %s (kept standalone) is missing from the archive of %s: that backup cannot be '
                'restored. Copy it from pg_wal on the server if it is still there; otherwise release and delete it.'
                % (
                    ', '.join('%s to %s' % tuple(r) for r in island['missing']),
                    island['backup_id'],
                    wal_archive.layout.server,
                )
            )
    if mirror.mirror_of(wal_archive.layout):
        # A mirror's archive follows its primary's: how far behind (segments, seconds) is part of its health.
        try:
            result['mirror'] = mirror.lag(wal_archive.layout)
        except (BarmanError, OSError, ValueError) as error:  # the primary's site lost: this archive still counts
            result['mirror'] = dict(mirror_of=mirror.mirror_of(wal_archive.layout), error=str(error))
    result['incoming_backlog'] = wal_archive.incoming_backlog()
    if os.path.exists(wal_archive.layout.process_log):
        with open(wal_archive.layout.process_log) as log:
            result['process_errors'] = log.read().splitlines()[-10:]
    return result


def island_reports(
    wal_archive: wal_store.WalArchive, islands: Sequence[Mapping[str, Any]], segment_size: int
) -> List[Dict[str, Any]]:
    """Each island (infofile.archive_origin) with whether its WAL is all there: dict(backup_id, begin_wal,
    end_wal, segments, missing=[[first, last]...], ok)."""
    reports = wal_archive.islands([(i['begin_wal'], i['end_wal']) for i in islands], segment_size)
    return [
        dict(island, segments=r['segments'], missing=r['missing'], ok=r['ok']) for island, r in zip(islands, reports)
    ]


def module_spec() -> Dict[str, Any]:
    """pg_wal_archive's AnsibleModule keyword arguments: the catalog, the connection (optional: without it
    only the disk is checked), the action."""
    spec = dict(
        action=dict(type='str', choices=['check', 'process', 'rebuild'], default='check'),
        compression=dict(type='str', choices=list(wal_store.COMPRESSIONS), default='gzip'),
        switch_wal=dict(type='bool', default=True),
        timeout=dict(type='int', default=60),
        segment_size=dict(type='int'),
        first_wal=dict(type='str'),
        fail_on_problem=dict(type='bool', default=True),
    )
    spec.update(catalog.catalog_argument_spec())
    spec.update(postgres.connection_argument_spec())
    return dict(argument_spec=spec)


def run_action(params: Mapping[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """The result of ``params['action']`` with ``changed``; in check mode nothing changes on disk and no WAL
    switch is asked of PostgreSQL."""
    wal_archive = wal_store.WalArchive(params['barman_home'], params['server'])
    if params['action'] == 'process':
        result = wal_archive.process_incoming(params['compression'], dry_run=check_mode)
        result['changed'] = bool(result['archived'] or result['identical'] or result['errors'])
    elif params['action'] == 'rebuild':
        result = wal_archive.rebuild_xlog_db(dry_run=check_mode)
        result['changed'] = bool(result['added'] or result['removed'])
    else:
        result = check_archive(
            wal_archive, params, switch=params['switch_wal'] and not check_mode, sweep=not check_mode
        )
        result['changed'] = bool(result['swept'])
    return result
