# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A base backup with rsync over SSH, run from the backup server (the pg_basebackup_rsync module's logic).

pg_backup_start() -> rsync PGDATA and tablespaces (hard links to the previous backup; pg_wal made
empty, never a link to the original's WAL) -> pg_control last -> pg_backup_stop() on the same session
-> backup_label written into the copy -> the copy's filesystem synced -> wait for the end WAL in the
catalog -> DONE. Any failure leaves the backup FAILED, never half DONE.
"""

import concurrent.futures
import contextlib
import ctypes
import datetime
import os
import shutil
import stat
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    chain,
    cluster,
    identityfile,
    infofile,
    lockfile,
    manifest,
    pgdata_layout,
    postgres,
    remote,
    rsync,
    ssh,
    stream_backup,
    wal,
)
from ansible_collections.barman.postgresql.plugins.module_utils.wal_store import WalArchive
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

REUSE_MODES = ('link', 'copy', 'off')
# rsync: pg_backup_start() over libpq, then rsync over SSH; postgres: pg_basebackup over the replication
# protocol (stream_backup.py), which alone can take block-level incrementals (PostgreSQL 17+).
BACKUP_METHODS = ('rsync', 'postgres')
# How rsync sends a changed file: the delta algorithm (checksums of the older copy on both hosts, then only
# the differing blocks) saves bandwidth on a slow link; on a fast one it is slower than sending it whole.
DELTA_TRANSFER_MODES = ('auto', 'always', 'never')
WHOLE_FILE = 'whole-file'
DELTA = 'delta'
# auto, when no copy measured the delta algorithm yet: at this speed (bytes/s, 400 Mbit/s) a link sends a
# file whole sooner than rsync's delta algorithm (single-threaded checksums of both copies) gets through it.
FAST_LINK = 50 * 1000 * 1000
# A copy that sent less than this tells more about rsync's start and its file list than about the link.
MIN_MEASURED_BYTES = 64 * 1024 * 1024
# The previous backups whose copy statistics may tell the link's speed (newer ones first).
MEASURE_LOOKBACK = 10
# auto, link speed unknown: whole files when at least this share of the bytes is in changed files.
MOST_CHANGED = 0.5
# Files whose mtime is this close to (or after) the reference backup's start may have changed within
# the same second as the copy rsync would compare against: they are compared by checksum.
MTIME_GRANULARITY = 1
PROGRESS_LOG = 'backup.log'
# A backup waits this long at most for one of the backup server's slots (concurrency): runs that hang
# holding every slot must not block every later backup for ever (LOCK_BUSY, operation backup-slot).
SLOT_WAIT_SECONDS = 6 * 3600


class BackupError(BarmanError):
    """The backup could not be taken; the backup itself (if started) is FAILED."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


def module_spec() -> dict:
    """pg_basebackup_rsync's AnsibleModule keyword arguments: the catalog, the connection (pg_host required:
    it is what is backed up) and the copy."""
    spec = dict(catalog.catalog_argument_spec(), **postgres.connection_argument_spec())
    spec['pg_host'] = dict(spec['pg_host'], required=True)
    spec.update(
        ssh_host=dict(type='str'),
        ssh_user=dict(type='str', default='postgres'),
        ssh_port=dict(type='int'),
        ssh_known_hosts=dict(type='path'),
        reuse=dict(type='str', choices=list(REUSE_MODES), default='link'),
        jobs=dict(type='int', default=1),
        concurrency=dict(type='int', default=0),
        immediate_checkpoint=dict(type='bool', default=True),
        bandwidth_limit=dict(type='int'),
        network_compression=dict(type='bool', default=False),
        wal_timeout=dict(type='int', default=120),
        label=dict(type='str'),
        delta_transfer=dict(type='str', choices=list(DELTA_TRANSFER_MODES), default='auto'),
        backup_method=dict(type='str', choices=list(BACKUP_METHODS), default='rsync'),
        backup_incremental=dict(type='bool', default=False),
        incremental_chain=dict(type='int', default=6),
        pg_bindir=dict(type='path'),
        streaming_user=dict(type='str', default='streaming_barman'),
        streaming_password=dict(type='str', no_log=True),
        members=cluster.members_spec(),
        backup_from=dict(type='str', choices=list(cluster.BACKUP_FROM), default=cluster.PRIMARY),
        standby_max_lag=dict(type='int', default=1024),
    )
    return dict(argument_spec=spec)


class Progress:
    """Lines in <server>/backup.log, so a long copy can be followed with tail -f."""

    def __init__(self, layout: catalog.ServerLayout) -> None:
        self.path = os.path.join(layout.root, PROGRESS_LOG)

    def __call__(self, message: str) -> None:
        with open(self.path, 'a') as log:
            log.write('%s %s\n' % (catalog.now_utc().strftime('%Y-%m-%dT%H:%M:%SZ'), message))


# -- the catalog side ----------------------------------------------------------------------------


def newest_done_backup(layout: catalog.ServerLayout) -> Tuple[Optional[str], Optional[Dict[str, Any]]]:
    infos = infofile.backup_infos(layout)
    done = infofile.done_backup_ids(infos)
    return (done[-1], infos[done[-1]]) if done else (None, None)


def settle_unfinished_backups(
    layout: catalog.ServerLayout, wal_archive: WalArchive, dry_run: bool = False
) -> List[Dict[str, str]]:
    """Called with the backup lock held: no other backup runs, so a STARTED one lost its owner.

    STARTED becomes FAILED; WAITING_FOR_WALS becomes DONE once its WAL arrived. With ``dry_run`` (check
    mode) the answer is the same and nothing is written.
    """
    settled = []
    for backup_id, info in infofile.backup_infos(layout).items():
        if info['status'] == infofile.STARTED:
            info['status'] = infofile.FAILED
            info['error'] = 'the process taking this backup died before it ended (found by a later run)'
        elif info['status'] == infofile.WAITING_FOR_WALS and wals_complete(wal_archive, info):
            info['status'] = infofile.DONE
        else:
            continue
        if not dry_run:
            infofile.write_backup_info(layout.backup_info_path(backup_id), info)
        settled.append(dict(backup_id=backup_id, status=info['status']))
    return settled


def wals_complete(wal_archive: WalArchive, info: Mapping[str, Any]) -> bool:
    """Every segment from the backup's begin_wal to its end_wal is archived (never, for a backup whose two ends
    are on different timelines)."""
    try:
        names = wal.segments_between(info['begin_wal'], info['end_wal'], info['xlog_segment_size'])
    except wal.InvalidWalName:
        return False
    return all(wal_archive.locate(name) for name in names)


def new_backup_id(layout: catalog.ServerLayout) -> str:
    """A start-time id not taken yet (two backups in one second wait for the next)."""
    while True:
        backup_id = catalog.new_backup_id(datetime.datetime.now())
        if not os.path.exists(layout.backup_info_path(backup_id)) and not os.path.exists(layout.backup_dir(backup_id)):
            return backup_id
        time.sleep(0.2)


def disk_usage(path: str) -> Tuple[int, int]:
    """(size of every file, size of the files not shared with another backup) in bytes."""
    size = deduplicated = 0
    for directory, _dirs, files in os.walk(path):
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            size += stat.st_size
            if stat.st_nlink == 1:
                deduplicated += stat.st_size
    return size, deduplicated


def sync_filesystem(path: str) -> None:
    """Make everything written to the filesystem holding ``path`` durable, with one syncfs(2).

    Files, the directories that name them and hard links in one call: cheaper than rsync --fsync,
    which fsyncs file after file during the copy and leaves directories out. Where syncfs is
    missing (not Linux), every file and directory under ``path`` is fsynced instead.
    """
    syncfs = getattr(ctypes.CDLL(None, use_errno=True), 'syncfs', None)
    if syncfs is None:
        _fsync_tree(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if syncfs(fd) != 0:
            number = ctypes.get_errno()
            raise OSError(number, os.strerror(number), path)
    finally:
        os.close(fd)


def _fsync_tree(path):
    for directory, _dirs, files in os.walk(path):
        for target in [directory] + [os.path.join(directory, name) for name in files]:
            if os.path.islink(target):
                continue
            fd = os.open(target, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


# -- whole files or deltas --------------------------------------------------------------------------


def _megabytes(rate):
    return '%.0f MB/s' % (rate / 1e6)


def measured_rates(infos: Mapping[str, Mapping[str, Any]]) -> Dict[str, Tuple[float, str]]:
    """{transfer mode: (bytes per second, backup id)} of the newest copy of each mode, among the last
    MEASURE_LOOKBACK backups (``infos`` oldest first), that sent at least MIN_MEASURED_BYTES.

    A copy that sent whole files measured the link (a full always does); one that used the delta
    algorithm measured that algorithm on this link and these hosts' CPUs.
    """
    rates = {}
    for backup_id in list(infos)[::-1][:MEASURE_LOOKBACK]:
        stats = infos[backup_id].get('copy_stats') or {}
        mode, rate = stats.get('transfer'), stats.get('throughput')
        if mode in (WHOLE_FILE, DELTA) and mode not in rates and rate and rate > 0:
            if (stats.get('transferred_bytes') or 0) >= MIN_MEASURED_BYTES:
                rates[mode] = (float(rate), backup_id)
    return rates


def needs_change_estimate(mode: str, has_reference: bool, rates: Mapping[str, Tuple[float, str]]) -> bool:
    """Whether :func:`choose_transfer` wants the changed bytes (a listing of the source) to decide."""
    return mode == 'auto' and has_reference and WHOLE_FILE not in rates


def choose_transfer(
    mode: str,
    has_reference: bool,
    rates: Mapping[str, Tuple[float, str]],
    change: Optional[Tuple[int, int]] = None,
) -> Tuple[str, str]:
    """(WHOLE_FILE or DELTA, why) for this copy.

    ``mode``: the delta_transfer option; ``has_reference``: an older copy exists for the delta algorithm
    to work against; ``rates``: :func:`measured_rates`; ``change``: (bytes in files whose size or mtime
    differ from the older copy, bytes in all), only looked at when the link's speed is unknown.
    """
    if not has_reference:
        return WHOLE_FILE, 'no previous copy to take deltas from'
    if mode == 'never':
        return WHOLE_FILE, 'delta_transfer=never'
    if mode == 'always':
        return DELTA, 'delta_transfer=always'
    whole, delta = rates.get(WHOLE_FILE), rates.get(DELTA)
    if whole and delta:
        faster = WHOLE_FILE if whole[0] >= delta[0] else DELTA
        return faster, 'whole files went at %s (backup %s), the delta algorithm at %s (backup %s)' % (
            _megabytes(whole[0]),
            whole[1],
            _megabytes(delta[0]),
            delta[1],
        )
    if whole:
        if whole[0] >= FAST_LINK:
            return WHOLE_FILE, 'whole files went at %s (backup %s): a fast link (>= %s)' % (
                _megabytes(whole[0]),
                whole[1],
                _megabytes(FAST_LINK),
            )
        return DELTA, 'whole files went at %s (backup %s): a slow link (< %s), deltas save bandwidth' % (
            _megabytes(whole[0]),
            whole[1],
            _megabytes(FAST_LINK),
        )
    if change and change[1] > 0:
        share = change[0] / change[1]
        if share >= MOST_CHANGED:
            return WHOLE_FILE, 'link speed not measured yet; %.0f%% of the bytes are in changed files' % (100 * share)
        return DELTA, 'link speed not measured yet; %.0f%% of the bytes are in changed files' % (100 * share)
    return DELTA, 'link speed not measured yet'


def changed_bytes(
    listing: Sequence[Tuple[int, float, str]], reference: Mapping[str, Tuple[int, int]]
) -> Tuple[int, int]:
    """(bytes in the files rsync's quick check will send, bytes in all) of a source ``listing``
    [(size, mtime, name)] against the older copy's {name: (size, whole-second mtime)}: a file is
    sent when it is new or its size or mtime differ, as rsync compares them."""
    changed = total = 0
    for size, mtime, name in listing:
        total += size
        if reference.get(name) != (size, int(mtime)):
            changed += size
    return changed, total


def reference_stats(reference_dir: str, names: Sequence[str]) -> Dict[str, Tuple[int, int]]:
    """{name: (size, whole-second mtime)} of the older copy's files, as rsync's quick check sees them.

    The copy on the backup server's disk, not its manifest: that is what rsync compares with."""
    found = {}
    for name in names:
        try:
            st = os.lstat(os.path.join(reference_dir, name))
        except OSError:
            continue
        found[name] = (st.st_size, int(st.st_mtime))
    return found


def linked_since(destination_dir: str, reference_dir: str, since: float) -> List[str]:
    """Files of a fresh copy that rsync took from the older copy, trusting their size and mtime (hard-linked,
    or copied locally where a link was not possible, e.g. other permissions), whose mtime is ``since`` or
    later: those rsync may have trusted wrongly. Paths relative to the copy."""
    names = []
    for directory, _dirs, files in os.walk(destination_dir):
        for name in files:
            path = os.path.join(directory, name)
            relative = os.path.relpath(path, destination_dir)
            try:
                mine = os.lstat(path)
                theirs = os.lstat(os.path.join(reference_dir, relative))
            except OSError:
                continue
            # Not only the same inode: rsync's quick check matched whenever size and mtime (seconds) agree.
            trusted = mine.st_size == theirs.st_size and int(mine.st_mtime) == int(theirs.st_mtime)
            if trusted and stat.S_ISREG(mine.st_mode) and mine.st_mtime >= since:
                names.append(relative)
    return names


# -- the copy ---------------------------------------------------------------------------------------


class Copier:
    """rsync from the PostgreSQL host into the backup directory, reusing the reference backup."""

    def __init__(self, params: Mapping[str, Any], progress: Callable[[str], None], control_path: Optional[str]) -> None:
        self.params = params
        self.progress = progress
        host = params['ssh_host'] or params['pg_host']
        target = ssh.validate_ssh_target(params['ssh_user'], host, params['ssh_port'])
        # One SSH connection for every rsync and command of the backup (ControlMaster), not one each.
        self.host = remote.Remote(target, control_path, known_hosts_file=params.get('ssh_known_hosts'))
        self.stats = dict(transferred_bytes=0, files=0, copy_seconds=0.0, main_bytes=0, main_seconds=0.0)
        self.whole_file = False  # set by _copy from choose_transfer, for every rsync of the backup
        self._stats_lock = threading.Lock()  # parallel workers add to the same totals

    def remote(self, path: str) -> str:
        """``path`` on the PostgreSQL host, as an rsync source."""
        return self.host.path(path)

    def close(self) -> None:
        self.host.close()

    def ssh_run(self, remote_argv: Sequence[str]) -> str:
        """Run a command on the PostgreSQL host as the SSH user; its stdout."""
        return self.host.check_output(remote_argv, errors='surrogateescape')

    def rsync(self, source: str, destination: str, what: str, **kwargs: Any) -> Dict[str, Optional[int]]:
        """One rsync of the backup, counted in its statistics and its progress log; rsync's statistics."""
        stats, seconds = self.host.rsync(
            source,
            destination,
            what,
            vanished_ok=True,  # PostgreSQL drops and creates files during the copy; WAL replay repairs that
            bandwidth_limit_kbps=self.params['bandwidth_limit'],
            compress=self.params['network_compression'],
            whole_file=self.whole_file,
            **kwargs,
        )
        with self._stats_lock:
            self.stats['transferred_bytes'] += stats.get('total_transferred_file_size') or 0
            self.stats['files'] += stats.get('regular_files_transferred') or 0
            self.stats['copy_seconds'] += seconds
        self.progress(
            'copied %s: %s files, %s bytes transferred, %.1f s'
            % (what, stats.get('regular_files_transferred'), stats.get('total_transferred_file_size'), seconds)
        )
        return stats

    def copy_directory(
        self,
        source_dir: str,
        destination_dir: str,
        reference_dir: Optional[str],
        reference_begin: Optional[datetime.datetime],
        what: str,
        excludes: Sequence[str] = (),
    ) -> None:
        """Copy one directory tree: a pass trusting size+mtime, then checksums for recent files."""
        os.makedirs(destination_dir, mode=0o700, exist_ok=True)
        reuse = self.params['reuse']
        extra = []
        link_dest = None
        if reference_dir and os.path.isdir(reference_dir):
            if reuse == 'link':
                link_dest = reference_dir
            elif reuse == 'copy':
                extra.append('--copy-dest=%s' % reference_dir)
        else:
            reference_begin = None
        source = self.remote(source_dir.rstrip('/') + '/')
        jobs = max(1, self.params['jobs'])
        bytes_before, started = self.stats['transferred_bytes'], time.monotonic()
        if jobs == 1:
            self.rsync(source, destination_dir + '/', what, excludes=excludes, link_dest=link_dest, extra=extra)
        else:
            self.parallel_copy(source_dir, destination_dir, what, excludes, link_dest, extra, jobs)
        # The speed of the main pass (wall time, workers together) is what the next backup's choice reads.
        self.stats['main_seconds'] += time.monotonic() - started
        self.stats['main_bytes'] += self.stats['transferred_bytes'] - bytes_before
        if reference_begin is not None and reuse != 'off':
            self.recheck_recent(
                source_dir, destination_dir, reference_begin, what, excludes, reference_dir if link_dest else None
            )

    def change_estimate(self, source_dir: str, reference_dir: str, excludes: Sequence[str]) -> Tuple[int, int]:
        """(changed bytes, bytes in all) of one directory tree against its older copy: see changed_bytes."""
        listing = self.host.list_files(self.remote(source_dir.rstrip('/') + '/'), excludes)
        return changed_bytes(listing, reference_stats(reference_dir, [name for _s, _m, name in listing]))

    def parallel_copy(
        self,
        source_dir: str,
        destination_dir: str,
        what: str,
        excludes: Sequence[str],
        link_dest: Optional[str],
        extra: Sequence[str],
        jobs: int,
    ) -> None:
        """The directory tree first, then files split over ``jobs`` rsync workers, largest first."""
        source = self.remote(source_dir.rstrip('/') + '/')
        self.rsync(
            source,
            destination_dir + '/',
            what + ' (directories)',
            excludes=tuple(excludes),
            extra=['--include=*/', '--exclude=*'],
        )
        # Workers get lists already filtered: rsync refuses an excluded name in --files-from.
        files = self.host.list_files(source, excludes)
        buckets = [[0, []] for _count in range(jobs)]
        for size, _mtime, name in sorted(files, reverse=True):
            bucket = min(buckets, key=lambda b: b[0])
            bucket[0] += size
            bucket[1].append(name)
        errors = []
        lists_dir = os.path.join(os.path.dirname(destination_dir), '.jobs-%s' % os.path.basename(destination_dir))
        os.makedirs(lists_dir, mode=0o700, exist_ok=True)

        def worker(number, names):
            list_path = os.path.join(lists_dir, 'files-%d' % number)
            with open(list_path, 'wb') as handle:
                handle.write(b'\0'.join(n.encode('utf-8', errors='surrogateescape') for n in names) + b'\0')
            try:
                self.rsync(
                    source,
                    destination_dir + '/',
                    '%s (worker %d)' % (what, number),
                    link_dest=link_dest,
                    files_from=list_path,
                    extra=list(extra) + ['--from0'],
                )
            except BarmanError as error:
                errors.append(error)

        threads = [threading.Thread(target=worker, args=(n, b[1])) for n, b in enumerate(buckets) if b[1]]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        shutil.rmtree(lists_dir, ignore_errors=True)
        if errors:
            raise errors[0]

    def recheck_recent(
        self,
        source_dir: str,
        destination_dir: str,
        reference_begin: datetime.datetime,
        what: str,
        excludes: Sequence[str],
        linked_to: Optional[str] = None,
    ) -> None:
        """Compare by checksum every file changed since the reference backup began (minus a second).

        rsync's quick check trusts size and a one-second mtime: a page rewritten in place within the
        second the reference copied it looks unchanged. Only those files pay for a checksum. With
        ``linked_to`` (the --link-dest directory) the ones rsync trusted are known without asking the
        host: the files hard-linked to it; a file it sent was read whole during this backup.
        """
        since = reference_begin.timestamp() - MTIME_GRANULARITY
        source = self.remote(source_dir.rstrip('/') + '/')
        wanted = None
        if linked_to is not None:
            wanted = set(linked_since(destination_dir, linked_to, since))
            if not wanted:
                return
        # The listing also leaves out files dropped since the main pass (rsync refuses a missing listed file).
        names = [
            name
            for _size, mtime, name in self.host.list_files(source, excludes)
            if mtime >= since and (wanted is None or name in wanted)
        ]
        if not names:
            return
        list_path = destination_dir.rstrip('/') + '.recent'
        with open(list_path, 'wb') as handle:
            handle.write(b'\0'.join(n.encode('utf-8', errors='surrogateescape') for n in names) + b'\0')
        try:
            self.rsync(
                source,
                destination_dir + '/',
                '%s (checksum of %d recent files)' % (what, len(names)),
                checksum=True,
                files_from=list_path,
                extra=['--from0'],
            )
        finally:
            os.unlink(list_path)


# -- the backup ------------------------------------------------------------------------------------


def _under(path, directory):
    return os.path.abspath(path).startswith(os.path.abspath(directory).rstrip('/') + '/')


def preflight(
    params: Mapping[str, Any],
    layout: catalog.ServerLayout,
    conn: Any,
    copier: Copier,
    primary_conn: Any = None,
    from_standby: bool = False,
) -> Dict[str, Any]:
    """What a backup needs, checked before anything is written; returns the server facts. ``conn`` is the
    member backed up, ``primary_conn`` the primary (the same session unless the backup is from a standby)."""
    facts = postgres.server_facts(conn)
    if facts['in_recovery'] != from_standby:
        raise BackupError(
            '%s is %s now, not the %s chosen a moment ago'
            % (
                params['pg_host'],
                'a standby' if facts['in_recovery'] else 'a primary',
                'primary' if not from_standby else 'standby',
            ),
            'A failover is under way: run the backup again once it is over',
            code='SERVER_IS_STANDBY',
        )
    missing = postgres.missing_backup_privileges(conn)
    if missing:
        raise BackupError(
            'the PostgreSQL role %s may not take a backup: it lacks %s' % (params['pg_user'], ', '.join(missing)),
            'Run the setup playbook (wal_archiving role) to grant them',
            code='MISSING_PRIVILEGES',
        )
    # The primary archives the WAL, whichever member is copied.
    settings = postgres.query_one(
        primary_conn or conn,
        "SELECT current_setting('archive_mode') AS mode, current_setting('archive_command') AS command",
    )
    if settings['mode'] == 'off' or not settings['command'] or settings['command'] == '(disabled)':
        raise BackupError(
            'WAL archiving is off on %s (archive_mode=%s): a backup without its WAL cannot be restored'
            % (params['pg_host'], settings['mode']),
            'Run the setup playbook (wal_archiving role) for this server',
            code='ARCHIVING_OFF',
        )
    identityfile.check_identity(layout.identity_file, facts['systemid'], facts['version'])
    copier.ssh_run(['test', '-r', os.path.join(facts['data_directory'], 'PG_VERSION')])
    facts['pgdata_layout'] = pgdata_layout.parse_probe(
        copier.ssh_run(pgdata_layout.probe_argv(facts['data_directory'])).strip('\n'), facts['data_directory']
    )
    database_size = postgres.query_one(conn, 'SELECT sum(pg_database_size(oid))::bigint AS size FROM pg_database')
    free = shutil.disk_usage(layout.root).free
    if database_size['size'] and free < database_size['size']:
        raise BackupError(
            'not enough space under %s: %d bytes free, the databases take %d'
            % (layout.root, free, database_size['size']),
            'Free space (apply a retention policy, delete old backups) or add disk',
            code='NOT_ENOUGH_SPACE',
        )
    facts['wal_segment_size'] = postgres.wal_segment_size(conn)
    facts['tablespaces'] = postgres.tablespaces(conn)
    facts['cluster_size'] = database_size['size']
    facts.update(postgres.checksum_settings(conn))
    if params['backup_method'] == 'postgres':
        facts['pg_basebackup'] = stream_backup.preflight(params, conn, facts, params['backup_incremental'])
    elif params['backup_incremental']:
        raise BackupError(
            'backup_incremental needs backup_method postgres: block-level incrementals are taken by pg_basebackup',
            'Set barman_backup_method postgres for this server (rsync backups are incremental by hard links)',
            code='INVALID_ARGUMENT',
        )
    return facts


def take_backup(params: Mapping[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """Take one backup; returns a result dict (backup_id, status, sizes, times ...)."""
    if not params.get('pg_host'):
        raise BackupError(
            'pg_host is required: the address of the PostgreSQL server to back up', code='INVALID_ARGUMENT'
        )
    layout = catalog.ServerLayout(params['barman_home'], params['server'])
    wal_archive = WalArchive(params['barman_home'], params['server'])
    progress = Progress(layout)
    # A connection of its own: a recovery of this server running meanwhile must not share (and end) it.
    with lockfile.ServerLock(layout, 'backup'), ssh.operation_control_path(layout.root) as control_path:
        settled = settle_unfinished_backups(layout, wal_archive, dry_run=check_mode)
        # The backup server's quota of backups at once (all servers, all runs): a slot before the preflight,
        # so that its facts (tablespaces, free space, which member is the primary) are those of the start.
        slot = lockfile.BackupSlot(
            params['barman_home'],
            0 if check_mode else params['concurrency'],
            waiting=_waiting(progress),
            wait_seconds=SLOT_WAIT_SECONDS,
        )
        with slot, contextlib.ExitStack() as stack:
            chosen = cluster.choose(
                [cluster.probe(params, m) for m in cluster.members_of(params)],
                params['backup_from'],
                params['standby_max_lag'],
                params['server'],
            )
            source, from_standby = chosen['source'], chosen['source']['in_recovery']
            params = dict(params, pg_host=source['pg_host'], pg_port=source['pg_port'], ssh_host=source['ssh_host'])
            copier = Copier(params, progress, control_path)
            stack.callback(copier.close)
            conn = postgres.connect_with(params)
            stack.callback(conn.close)
            primary_conn = conn
            if from_standby:  # the primary switches WAL at the end, so that the backup's last segment is archived
                primary = chosen['primary']
                primary_conn = postgres.connect_with(
                    dict(params, pg_host=primary['pg_host'], pg_port=primary['pg_port'])
                )
                stack.callback(primary_conn.close)
            facts = preflight(params, layout, conn, copier, primary_conn, from_standby)
            facts['source'] = dict(
                host=source['name'],
                role='standby' if from_standby else 'primary',
                reason=chosen['reason'],
                skipped=chosen['skipped'],
            )
            if check_mode:
                return dict(
                    changed=False,
                    settled=settled,
                    checked=True,
                    pgdata=facts['data_directory'],
                    pgdata_layout=facts['pgdata_layout'],
                    source=facts['source'],
                )
            progress('backing up %s' % chosen['reason'])
            result = _run_backup(params, layout, wal_archive, conn, copier, facts, progress, primary_conn)
            return dict(result, settled=settled)


def _waiting(progress):
    return lambda slots: progress("waiting for one of the backup server's %d backup slots (concurrency)" % slots)


def _run_backup(params, layout, wal_archive, conn, copier, facts, progress, primary_conn=None):
    backup_id = new_backup_id(layout)
    info_path = layout.backup_info_path(backup_id)
    infos = infofile.backup_infos(layout)
    reference_id, reference = newest_done_backup(layout)
    streamed = params['backup_method'] == 'postgres'
    parent_id, chain_reason = None, None
    if streamed:
        parent_id, chain_reason = stream_backup.choose_parent(
            infos, layout, params['backup_incremental'], params['incremental_chain'], facts
        )
    started = time.time()
    info = infofile.parse_backup_info('', info_path)
    info.update(
        backup_label=None,
        status=infofile.STARTED,
        mode=chain.POSTGRES_MODE if streamed else 'rsync-concurrent',
        pgdata=facts['data_directory'],
        version=facts['version'],
        systemid=facts['systemid'],
        xlog_segment_size=facts['wal_segment_size'],
        config_file=facts['config_file'],
        hba_file=facts['hba_file'],
        ident_file=facts['ident_file'],
        tablespaces=[infofile.Tablespace(*t) for t in facts['tablespaces']] or None,
        server_name=params['server'],
        backup_name=params.get('label'),
        cluster_size=facts['cluster_size'],
        data_checksums=facts['data_checksums'],
        summarize_wal=facts['summarize_wal'],
        parent_backup_id=parent_id,
    )
    infofile.write_backup_info(info_path, info)
    progress('backup %s started (%s)' % (backup_id, chain_reason if streamed else 'reference %s' % reference_id))
    try:
        if streamed:
            try:
                taken = _stream(params, layout, conn, copier, facts, backup_id, parent_id)
            except stream_backup.StreamError as error:
                if not (parent_id and stream_backup.parent_refused(error)):
                    raise
                # summarize_wal was off for a while (or the summaries were removed), or the parent is of a timeline
                # the server left: no incremental can be taken on it, but a full can, and the next builds on that.
                chain_reason = 'full: PostgreSQL refused an incremental on %s (%s)' % (
                    parent_id,
                    error.message.splitlines()[0][:200],
                )
                progress('backup %s: %s' % (backup_id, chain_reason))
                parent_id = info['parent_backup_id'] = None
                infofile.write_backup_info(info_path, info)
                shutil.rmtree(layout.backup_dir(backup_id), ignore_errors=True)
                taken = _stream(params, layout, conn, copier, facts, backup_id, None)
        else:
            taken = _rsync_backup(
                params, layout, conn, copier, facts, backup_id, reference_id, reference, info, progress
            )
        if facts['source']['role'] == 'standby':
            # A standby cannot switch WAL: the primary closes the segment the backup ends in, so that it is archived.
            progress('backup %s: WAL %s switched on the primary' % (backup_id, postgres.switch_wal(primary_conn)))
        segment_size = facts['wal_segment_size']
        end_wal, end_offset = wal.walfile_name_offset(taken['end_lsn'], taken['end_timeline'], segment_size)
        info.update(
            begin_xlog=taken['start_lsn'],
            begin_wal=wal.lsn_segment_name(taken['start_lsn'], taken['start_timeline'], segment_size),
            begin_offset=wal.walfile_name_offset(taken['start_lsn'], taken['start_timeline'], segment_size)[1],
            begin_time=taken['start_time'],
            timeline=taken['start_timeline'],
            end_xlog=taken['end_lsn'],
            # The stop LSN is one past the backup's last byte: on a boundary it is in the previous segment.
            end_wal=end_wal,
            end_offset=end_offset,
            end_time=taken['end_time'],
            status=infofile.WAITING_FOR_WALS,
            backup_label=taken['labelfile'],
        )
        size, deduplicated = disk_usage(layout.backup_dir(backup_id))
        stats = dict(
            taken['copy_stats'],
            total_time=round(time.time() - started, 3),
            # Which member was copied (Barman has no field for it and refuses unknown ones: copy_stats is a dict).
            source_host=facts['source']['host'],
            source_role=facts['source']['role'],
        )
        if streamed:
            stats.update(backup_type='incremental' if parent_id else 'full', chain_reason=chain_reason)
        info.update(size=size, deduplicated_size=deduplicated, copy_stats=stats)
        infofile.write_backup_info(info_path, info)
        if parent_id:  # Barman finds a parent's children in its backup.info
            chain.set_children(layout, parent_id, dict(infos, **{backup_id: info}))
        progress('backup %s copied, waiting for WAL %s' % (backup_id, info['end_wal']))
    except BaseException as error:
        info.update(status=infofile.FAILED, error=str(error).replace('\n', ' ')[:2000])
        infofile.write_backup_info(info_path, info)
        progress('backup %s FAILED: %s' % (backup_id, info['error']))
        raise
    arrived = _wait_for_wals(wal_archive, info, params['wal_timeout'])
    if arrived:
        info['status'] = infofile.DONE
        infofile.write_backup_info(info_path, info)
        progress('backup %s DONE' % backup_id)
    result = dict(
        changed=True,
        backup_id=backup_id,
        status=info['status'],
        backup_method=params['backup_method'],
        source=facts['source'],
        backup_type='incremental' if parent_id else 'full',
        parent_backup_id=parent_id,
        reference_backup_id=parent_id if streamed else reference_id,
        begin_wal=info['begin_wal'],
        end_wal=info['end_wal'],
        begin_xlog=info['begin_xlog'],
        end_xlog=info['end_xlog'],
        begin_time=str(info['begin_time']),
        end_time=str(info['end_time']),
        size=info['size'],
        deduplicated_size=info['deduplicated_size'],
        copy_stats=info['copy_stats'],
        pgdata_layout=facts['pgdata_layout'],
        duration=round(time.time() - started, 3),
    )
    if not arrived:
        raise BackupError(
            'backup %s is copied but WAL %s did not reach the archive within %d s: it stays WAITING_FOR_WALS '
            'and is not usable until it arrives' % (backup_id, info['end_wal'], params['wal_timeout']),
            'Check archiving (pg_wal_archive check); the next backup run marks it DONE once the WAL is there',
            code='WAITING_FOR_WALS',
            **result,
        )
    return result


def _rsync_backup(params, layout, conn, copier, facts, backup_id, reference_id, reference, info, progress):
    """pg_backup_start() -> rsync -> pg_backup_stop() on the same session -> labels, manifest, syncfs."""
    from_standby = facts['source']['role'] == 'standby'
    start = postgres.backup_start(
        conn, params.get('label') or 'barman.postgresql %s' % backup_id, params['immediate_checkpoint']
    )
    # Where the backup starts is on disk before the copy: a crash leaves a FAILED backup that says so.
    info.update(
        begin_xlog=start['lsn'],
        begin_wal=wal.lsn_segment_name(start['lsn'], start['timeline'], facts['wal_segment_size']),
        begin_time=start['time'],
        timeline=start['timeline'],
    )
    infofile.write_backup_info(layout.backup_info_path(backup_id), info)
    copy_started = time.time()
    transfer, transfer_reason = _copy(params, layout, copier, facts, backup_id, reference_id, reference)
    copy_seconds = time.time() - copy_started
    stop = postgres.backup_stop(conn)
    end_timeline = start['timeline']
    if from_standby:
        # A standby may have switched to a new timeline (a failover) during the copy: its end is on that one.
        end_timeline = postgres.query_one(conn, 'SELECT min_recovery_end_timeline AS tli FROM pg_control_recovery()')[
            'tli'
        ]
        if end_timeline != start['timeline']:
            raise BackupError(
                'the standby %s moved from timeline %s to %s during the backup (a failover): the copy spans two '
                'histories' % (params['pg_host'], start['timeline'], end_timeline),
                'Take the backup again once the failover is over; this one is FAILED',
                code='SERVER_IS_STANDBY',
            )
    _write_labels(layout, backup_id, stop)
    # PostgreSQL's own manifest, so that pg_verifybackup can check the copy where it lies (verify.yml). Its
    # hashing (CPU, on files still in the page cache) runs while syncfs waits for the disk; it fsyncs itself.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        writing = pool.submit(manifest.write_manifest, layout, backup_id, info, stop['lsn'], reference_id)
        # Durable before WAITING_FOR_WALS, from which a later run may mark it DONE without looking.
        sync_started = time.time()
        _sync(layout, backup_id)
        sync_seconds = time.time() - sync_started
        progress('backup %s synced to disk in %.1f s' % (backup_id, sync_seconds))
        written = writing.result()
    progress(
        'backup %s: backup_manifest of %d files written in %.1f s' % (backup_id, written['files'], written['seconds'])
    )
    return dict(
        start_lsn=start['lsn'],
        start_timeline=start['timeline'],
        start_time=start['time'],
        end_lsn=stop['lsn'],
        end_timeline=end_timeline,
        end_time=stop['time'],
        labelfile=stop['labelfile'],
        copy_stats=dict(
            copy_time=round(copy_seconds, 3),
            sync_time=round(sync_seconds, 3),
            manifest_time=written['seconds'],
            number_of_workers=max(1, params['jobs']),
            transferred_bytes=copier.stats['transferred_bytes'],
            # How changed files went, and the main passes' speed: the next backup's delta_transfer=auto reads it.
            transfer=transfer,
            transfer_reason=transfer_reason,
            throughput=_throughput(copier.stats),
        ),
    )


def _stream(params, layout, conn, copier, facts, backup_id, parent_id):
    """pg_basebackup (it starts and stops the backup itself, and syncs what it wrote), then the configuration
    files kept outside PGDATA, which it does not send."""
    start_time = postgres.query_one(conn, 'SELECT now() AS time')['time']
    copy_started = time.time()
    taken = stream_backup.copy(params, layout, backup_id, facts, facts['pg_basebackup'], parent_id, copier.progress)
    copy_seconds = time.time() - copy_started
    _copy_outside_config(copier, facts, layout.backup_data_dir(backup_id))
    _sync(layout, backup_id)
    # The time after pg_basebackup returned: never before the real end, so a target chosen after it is
    # always reachable from this backup.
    end_time = postgres.query_one(conn, 'SELECT now() AS time')['time']
    data_bytes = disk_usage(layout.backup_dir(backup_id))[1]
    return dict(
        taken,
        start_time=start_time,
        end_time=end_time,
        copy_stats=dict(
            copy_time=round(copy_seconds, 3),
            transferred_bytes=data_bytes,
            throughput=int(data_bytes / copy_seconds) if copy_seconds > 0 else None,
        ),
    )


def _sync(layout, backup_id):
    try:
        sync_filesystem(layout.backup_dir(backup_id))
    except OSError as error:
        raise BackupError(
            'the copy could not be made durable (syncfs of %s): %s' % (layout.backup_dir(backup_id), error),
            "A write to the backup server's disk failed: check its kernel log and the disk",
            code='DISK_WRITE_FAILED',
        ) from None


def _choose_transfer(params, layout, copier, facts, reference_id):
    """Set the copier's transfer mode (whole files or deltas) for the whole backup; (mode, why)."""
    mode = params.get('delta_transfer') or 'auto'
    reference_data = layout.backup_data_dir(reference_id) if reference_id else None
    has_reference = params['reuse'] != 'off' and bool(reference_data) and os.path.isdir(reference_data)
    rates = measured_rates(infofile.backup_infos(layout))
    change = None
    if needs_change_estimate(mode, has_reference, rates):
        trees = [(facts['data_directory'], reference_data, rsync.PGDATA_EXCLUDES + (rsync.PG_CONTROL_EXCLUDE,))]
        trees += [
            (location, layout.backup_tablespace_dir(reference_id, oid), ('pgsql_tmp*',))
            for _name, oid, location in facts['tablespaces']
        ]
        sums = [copier.change_estimate(*tree) for tree in trees]
        change = (sum(c for c, _t in sums), sum(t for _c, t in sums))
    transfer, why = choose_transfer(mode, has_reference, rates, change)
    copier.whole_file = transfer == WHOLE_FILE
    copier.progress('transfer: %s (%s)' % (transfer, why))
    return transfer, why


def _copy(params, layout, copier, facts, backup_id, reference_id, reference):
    reference_begin = reference['begin_time'] if reference else None
    data_dir = layout.backup_data_dir(backup_id)
    reference_data = layout.backup_data_dir(reference_id) if reference_id else None
    transfer = _choose_transfer(params, layout, copier, facts, reference_id)
    copier.copy_directory(
        facts['data_directory'],
        data_dir,
        reference_data,
        reference_begin,
        'PGDATA',
        excludes=rsync.PGDATA_EXCLUDES + (rsync.PG_CONTROL_EXCLUDE,),
    )
    pgdata_layout.make_empty_pg_wal(data_dir)
    pgdata_layout.write_layout(layout, backup_id, facts['pgdata_layout'])
    copier.progress('made an empty pg_wal/ (the original: %s)' % pgdata_layout.describe(facts['pgdata_layout']))
    for name, oid, location in facts['tablespaces']:
        copier.copy_directory(
            location,
            layout.backup_tablespace_dir(backup_id, oid),
            reference_id and layout.backup_tablespace_dir(reference_id, oid),
            reference_begin,
            'tablespace %s' % name,
            excludes=('pgsql_tmp*',),
        )
    _copy_outside_config(copier, facts, data_dir)
    # pg_control last: a copy whose pg_control predates its data files is what recovery expects.
    copier.rsync(
        copier.remote(os.path.join(facts['data_directory'], rsync.PG_CONTROL)),
        os.path.join(data_dir, rsync.PG_CONTROL),
        'pg_control',
    )
    return transfer


def _copy_outside_config(copier, facts, data_dir):
    """Config files outside PGDATA (Debian) go into the copy's root, as Barman does."""
    for key in ('config_file', 'hba_file', 'ident_file'):
        path = facts[key]
        if not _under(path, facts['data_directory']):
            copier.rsync(copier.remote(path), os.path.join(data_dir, os.path.basename(path)), 'config %s' % path)


def _throughput(stats):
    """Bytes per second of the main passes (files sent / their wall time), None when nothing was sent."""
    if stats['main_bytes'] > 0 and stats['main_seconds'] > 0:
        return int(stats['main_bytes'] / stats['main_seconds'])
    return None


def _write_labels(layout, backup_id, stop):
    data_dir = layout.backup_data_dir(backup_id)
    catalog.atomic_write(os.path.join(data_dir, 'backup_label'), stop['labelfile'], 0o600)
    if stop['spcmapfile']:
        catalog.atomic_write(os.path.join(data_dir, 'tablespace_map'), stop['spcmapfile'], 0o600)


def _wait_for_wals(wal_archive, info, timeout):
    deadline = time.time() + timeout
    while not wals_complete(wal_archive, info):
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True
