# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a server's catalog holds, and the changes pg_backup_catalog makes to it: keep, release,
delete, retention. Every change takes the server's backup lock, so it never races a backup.

Delete and retention first make a RemovalPlan (the backups, WAL files and stale recovery holds to
remove), then remove exactly that plan; check mode returns the same plan without removing it. The WAL
a plan considers is the whole archive: what xlog.db indexes, and the files in wals/ and incoming/ (a
delivered file waits in incoming/ until it is compressed and indexed, which may happen between a check
run and the real one)."""

import bisect
import collections
import contextlib
import datetime
import os
import shutil
from typing import Any, Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    chain,
    infofile,
    lockfile,
    mirror,
    recovery_hold,
    retention,
    verifyfile,
    wal,
    xlogdb,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

_LIST_FIELDS = ('status', 'begin_wal', 'end_wal', 'begin_xlog', 'end_xlog', 'timeline', 'size', 'deduplicated_size')
# How long a change waits for pg_recover taking a hold (a few milliseconds of work).
HOLD_LOCK_WAIT_SECONDS = 60
# How long removing WAL waits for the background compression of incoming/ to finish its batch.
ARCHIVE_PROCESS_WAIT_SECONDS = 300

# What delete or retention removes: backup ids, WAL names with their bytes (in WAL name order), and
# the tokens of expired recovery holds.
RemovalPlan = collections.namedtuple('RemovalPlan', 'backups wals wal_sizes stale_holds')


class CatalogRefusal(BarmanError):
    """A change to the catalog that would lose recoverability, or asks for what is not there."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


def _iso(value):
    return value.isoformat() if value is not None else None


def server_names(barman_home: str) -> List[str]:
    """The servers that have a directory in the catalog."""
    if not os.path.isdir(barman_home):
        return []
    names = []
    for entry in sorted(os.listdir(barman_home)):
        try:
            layout = catalog.ServerLayout(barman_home, entry)
        except catalog.InvalidName:
            continue
        if os.path.isdir(layout.meta_dir) or os.path.isdir(layout.wals_dir):
            names.append(entry)
    return names


def server_layout(barman_home: str, server: str) -> catalog.ServerLayout:
    """The layout of a server that exists in the catalog; refuses an unknown one, naming the known ones."""
    layout = catalog.ServerLayout(barman_home, server)
    if not os.path.isdir(layout.root):
        raise CatalogRefusal(
            'Server %s has no catalog under %s (servers there: %s)'
            % (server, barman_home, ', '.join(server_names(barman_home)) or 'none'),
            'Check the name, or run playbooks/setup.yml for that server',
            code='NO_SUCH_SERVER',
            server=server,
        )
    return layout


class ServerCatalog:
    """One server's backups, keep annotations and WAL index, read once."""

    def __init__(self, layout: catalog.ServerLayout) -> None:
        self.layout = layout
        self.infos = {}
        self.malformed = []
        if os.path.isdir(layout.meta_dir):
            for entry in sorted(os.listdir(layout.meta_dir)):
                if not entry.endswith('-backup.info'):
                    continue
                path = os.path.join(layout.meta_dir, entry)
                try:
                    self.infos[entry[: -len('-backup.info')]] = infofile.read_backup_info(path)
                except (catalog.CatalogError, OSError) as exc:
                    self.malformed.append(dict(path=path, error=str(exc)))
        self.keeps = {}
        for backup_id in self.infos:
            target = self._read_keep(backup_id)
            if target:
                self.keeps[backup_id] = target
        try:
            self.wals = xlogdb.read_xlog_db(layout.xlog_db)
        except xlogdb.MalformedXlogDb as exc:
            self.malformed.append(dict(path=layout.xlog_db, error=str(exc)))
            self.wals = []
        self.wals.sort(key=lambda e: e.name)
        self._sizes = None
        self.holds, damaged = recovery_hold.read_all(layout)
        self.malformed += damaged
        self.verifications = {}
        for backup_id in self.infos:
            try:
                record = verifyfile.read_verification(layout, backup_id)
            except (catalog.CatalogError, OSError) as exc:
                self.malformed.append(dict(path=layout.verification_path(backup_id), error=str(exc)))
                continue
            if record is not None:
                self.verifications[backup_id] = record

    def _read_keep(self, backup_id):
        for path in (self.layout.keep_path(backup_id), self.layout.old_keep_path(backup_id)):
            text = catalog.read_text(path)
            if text is None:
                continue
            target = text.strip()
            if target not in retention.KEEP_TARGETS:
                self.malformed.append(
                    dict(path=path, error='keep annotation %r is neither full nor standalone' % target)
                )
                return 'full'  # an unreadable keep still protects the backup
            return target
        return None

    @property
    def segment_size(self) -> int:
        sizes = [i['xlog_segment_size'] for i in self.infos.values() if i.get('xlog_segment_size')]
        return wal.validate_segment_size(sizes[-1] if sizes else wal.DEFAULT_SEGMENT_SIZE)

    def done_ids(self) -> List[str]:
        return infofile.done_backup_ids(self.infos)

    def last_verified_id(self) -> Optional[str]:
        """The newest DONE backup whose last verification PASSED: every newer DONE one is unverified or FAILED."""
        return verifyfile.newest_passed(self.verifications, self.done_ids())

    def verification(self, backup_id: str) -> Optional[Dict[str, Any]]:
        """A backup's last verification in brief (None: never verified): result, when, how long, and the
        number of failures with the first one's message."""
        record = self.verifications.get(backup_id)
        if record is None:
            return None
        failures = verifyfile.failure_texts(record)
        return dict(
            result=record['result'],
            verified_at=record['verified_at'],
            duration=record.get('duration'),
            failure_count=len(failures),
            first_failure=failures[0] if failures else None,
        )

    def refuse_if_malformed(self, doing: str) -> None:
        if self.malformed:
            raise CatalogRefusal(
                'Cannot %s for server %s: %s'
                % (doing, self.layout.server, '; '.join(m['error'] for m in self.malformed)),
                'Repair or move away the file named (nothing was changed); a catalog that cannot be read '
                'completely cannot tell what is safe to remove',
                code='CATALOG_DAMAGED',
                malformed=self.malformed,
            )

    def resolve(self, backup_id: str) -> str:
        """A backup id from an id or a shortcut (latest/last, oldest/first, last-failed)."""
        if backup_id in infofile.SHORTCUTS:
            found = infofile.shortcut_backup_id(self.infos, backup_id)
            if found is None:
                raise CatalogRefusal(
                    'Server %s has no %s backup' % (self.layout.server, backup_id),
                    'List the backups (action list) to see what there is',
                    code='NO_SUCH_BACKUP',
                    server=self.layout.server,
                )
            return found
        catalog.validate_backup_id(backup_id)
        if backup_id not in self.infos:
            raise CatalogRefusal(
                'Server %s has no backup %s (backups: %s)'
                % (self.layout.server, backup_id, ', '.join(sorted(self.infos)) or 'none'),
                'Use an id from the list (action list) or latest, oldest, last-failed',
                code='NO_SUCH_BACKUP',
                server=self.layout.server,
                backup_id=backup_id,
            )
        return backup_id

    # -- reading ---------------------------------------------------------------------------------

    def _segment_sizes(self):
        """Segment numbers of the indexed WAL files (history files aside), sorted, with running byte totals;
        made once, so that listing many backups over a large archive stays one pass."""
        if self._sizes is None:
            size = self.segment_size
            numbered = sorted(
                (wal.segment_number(e.name[:24], size), e.size) for e in self.wals if not e.name.endswith('.history')
            )
            totals = [0]
            for _segno, nbytes in numbered:
                totals.append(totals[-1] + nbytes)
            self._sizes = ([segno for segno, _nbytes in numbered], totals)
        return self._sizes

    def wal_sizes_between(self, first_wal: str, next_wal: Optional[str]) -> Tuple[int, int]:
        """Bytes and count of archived WAL from segment ``first_wal`` up to (not including) ``next_wal``."""
        segnos, totals = self._segment_sizes()
        size = self.segment_size
        low = bisect.bisect_left(segnos, wal.segment_number(first_wal[:24], size))
        high = bisect.bisect_left(segnos, wal.segment_number(next_wal[:24], size)) if next_wal else len(segnos)
        high = max(high, low)
        return totals[high] - totals[low], high - low

    def active_holds(self, now: datetime.datetime) -> List[Dict[str, Any]]:
        return [h for h in self.holds if not recovery_hold.is_stale(h, now)]

    def held_ids(self, now: datetime.datetime) -> List[str]:
        return sorted(set(h['backup_id'] for h in self.active_holds(now)))

    def describe(
        self,
        backup_id: str,
        statuses: Optional[Mapping[str, str]] = None,
        now: Optional[datetime.datetime] = None,
    ) -> Dict[str, Any]:
        info = self.infos[backup_id]
        item = dict(backup_id=backup_id)
        item.update((key, info.get(key)) for key in _LIST_FIELDS)
        item['begin_time'] = _iso(info.get('begin_time'))
        item['end_time'] = _iso(info.get('end_time'))
        item['keep'] = self.keeps.get(backup_id)
        item['holds'] = [h['token'] for h in self.active_holds(now or catalog.now_utc()) if h['backup_id'] == backup_id]
        item['retention_status'] = (statuses or {}).get(backup_id)
        item['error'] = info.get('error')
        item['backup_type'] = chain.backup_type(info)
        item['parent_backup_id'] = info.get('parent_backup_id')
        item['verification'] = self.verification(backup_id)
        item['wal_size'] = item['wal_count'] = None
        if info.get('begin_wal') and info['status'] == infofile.DONE:
            done = self.done_ids()
            newer = done[done.index(backup_id) + 1 :]
            next_wal = self.infos[newer[0]]['begin_wal'] if newer else None
            item['wal_size'], item['wal_count'] = self.wal_sizes_between(info['begin_wal'], next_wal)
        return item

    def details(
        self,
        backup_id: str,
        statuses: Optional[Mapping[str, str]] = None,
        now: Optional[datetime.datetime] = None,
    ) -> Dict[str, Any]:
        """Every backup.info field (times as text), plus what describe() derives; the verification in full
        (its host, replay, steps and failures too)."""
        item = dict((k, _iso(v) if isinstance(v, datetime.datetime) else v) for k, v in self.infos[backup_id].items())
        item.update(self.describe(backup_id, statuses, now))
        item['path'] = self.layout.backup_dir(backup_id)
        if item['verification']:
            record = self.verifications[backup_id]
            item['verification'].update((key, record.get(key)) for key in ('host', 'replay', 'steps', 'failures'))
        return item

    def window(self, gaps: Iterable[Sequence[str]] = ()) -> Dict[str, Any]:
        """From the oldest point a backup recovers to, to the newest archived WAL; gaps placed in time."""
        origin = infofile.archive_origin(self.infos, self.keeps)['backup_id']
        segments = [e for e in self.wals if wal.parse_wal_name(e.name).kind == 'segment']
        size = self.segment_size
        newest = max(segments, key=lambda e: (wal.segment_number(e.name, size), e.name)) if segments else None
        times = dict((e.name, e.time) for e in segments)

        def time_of(name):
            return _iso(datetime.datetime.fromtimestamp(times[name], datetime.timezone.utc)) if name in times else None

        def neighbour(step, name):
            try:
                return time_of(step(name, size))
            except wal.InvalidWalName:  # the first or last possible segment
                return None

        placed = [
            dict(
                first=first,
                last=last,
                after_time=neighbour(wal.wal_segment_before, first),
                before_time=neighbour(wal.wal_segment_after, last),
            )
            for first, last in gaps
        ]
        return dict(
            # Continuous point-in-time recovery starts at the oldest backup kept for it (a standalone one
            # is an island: it recovers to its own end only).
            first_recoverable_time=_iso(self.infos[origin]['end_time']) if origin else None,
            last_wal=newest.name if newest else None,
            last_wal_time=time_of(newest.name) if newest else None,
            gaps=placed,
        )

    def statuses(
        self,
        policy: Optional[retention.Policy],
        minimum_redundancy: int,
        now: datetime.datetime,
        mirrored: Optional[Mapping[str, Collection[str]]] = None,
    ) -> Dict[str, str]:
        """Each backup's retention status; ``mirrored``: the backup ids each mirror holds (a DONE backup newer than
        a mirror's newest copy waits for it)."""
        if not policy:
            return {}
        awaiting = set()
        done = self.done_ids()
        for copies in (mirrored or {}).values():
            # What a mirror lacks older than its newest copy it copied and retired (mirror.to_copy).
            copied = [i for i, b in enumerate(done) if b in copies]
            awaiting.update(b for b in done[copied[-1] + 1 if copied else 0 :] if b not in copies)
        return retention.classify(
            self.infos,
            self.keeps,
            policy,
            minimum_redundancy,
            now,
            self.held_ids(now),
            self.last_verified_id(),
            awaiting_mirror=awaiting,
        )

    def holds_report(self, now: datetime.datetime) -> List[Dict[str, Any]]:
        """Every recovery hold, oldest first, with stale=True for an expired one (it protects nothing)."""
        return [
            dict(hold, stale=recovery_hold.is_stale(hold, now))
            for hold in sorted(self.holds, key=lambda h: (h['started'], h['token']))
        ]

    def summary(
        self,
        policy: Optional[retention.Policy] = None,
        minimum_redundancy: int = 1,
        now: Optional[datetime.datetime] = None,
    ) -> Dict[str, Any]:
        now = now or catalog.now_utc()
        statuses = self.statuses(policy, minimum_redundancy, now)
        order = infofile.ordered_backup_ids(self.infos)
        return dict(
            server=self.layout.server,
            pg_version=chain.version_text(self.infos[order[-1]].get('version')) if order else None,
            backups=[self.describe(b, statuses, now) for b in order],
            wal_count=len(self.wals),
            wal_size=sum(e.size for e in self.wals),
            retention_policy=retention.format_policy(policy) if policy else None,
            minimum_redundancy=minimum_redundancy,
            holds=self.holds_report(now),
            malformed=self.malformed,
            **self.verification_report(),
        )

    def verification_report(self) -> Dict[str, Any]:
        """last_verified: the newest DONE backup whose verification PASSED, and when (None: none has);
        latest_verification: the newest DONE backup and its verification's result (None: never verified)."""
        passed, done = self.last_verified_id(), self.done_ids()
        last = dict(backup_id=passed, verified_at=self.verifications[passed]['verified_at']) if passed else None
        latest = None
        if done:
            brief = self.verification(done[-1]) or {}
            latest = dict((key, brief.get(key)) for key in ('result', 'verified_at', 'first_failure'))
            latest['backup_id'] = done[-1]
        return dict(last_verified=last, latest_verification=latest)

    # -- changing ----------------------------------------------------------------------------------

    def keep(self, backup_id: str, target: str, dry_run: bool = False) -> bool:
        """Annotate a DONE backup so that retention never removes it; returns True if it changed."""
        if target not in retention.KEEP_TARGETS:
            raise CatalogRefusal(
                'Keep target %r is neither full nor standalone' % (target,),
                'Use full or standalone',
                code='INVALID_ARGUMENT',
            )
        if self.infos[backup_id]['status'] != infofile.DONE:
            raise CatalogRefusal(
                'Backup %s of %s is %s: only a DONE backup can be kept'
                % (backup_id, self.layout.server, self.infos[backup_id]['status']),
                'Keep a DONE backup (action list shows the statuses)',
                code='BACKUP_NOT_DONE',
                backup_id=backup_id,
            )
        if self.keeps.get(backup_id) == target:
            return False
        if not dry_run:
            catalog.atomic_write(self.layout.keep_path(backup_id), target, 0o600)
            self._remove_old_keep(backup_id)
        self.keeps[backup_id] = target
        return True

    def release(self, backup_id: str, dry_run: bool = False) -> bool:
        """Remove a keep annotation; returns True if there was one."""
        if backup_id not in self.keeps:
            return False
        if not dry_run:
            for path in (self.layout.keep_path(backup_id), self.layout.old_keep_path(backup_id)):
                if os.path.exists(path):
                    os.unlink(path)
                    catalog.fsync_dir(os.path.dirname(path))
        del self.keeps[backup_id]
        return True

    def _remove_old_keep(self, backup_id):
        path = self.layout.old_keep_path(backup_id)
        if os.path.exists(path):
            os.unlink(path)

    def check_deletable(
        self, backup_id: str, minimum_redundancy: int, now: datetime.datetime, removing: Collection[str] = ()
    ) -> None:
        """Raise CatalogRefusal unless deleting this backup (with ``removing``, deleted with it) loses nothing
        that must stay."""
        info = self.infos[backup_id]
        server = self.layout.server
        if backup_id in self.keeps:
            raise CatalogRefusal(
                'Backup %s of %s is kept (%s): it is not deleted' % (backup_id, server, self.keeps[backup_id]),
                'Release it first (action release) if it really has to go',
                code='BACKUP_KEPT',
                backup_id=backup_id,
            )
        holds = [h for h in self.active_holds(now) if h['backup_id'] == backup_id]
        if holds:
            raise CatalogRefusal(
                'Backup %s of %s is held by %s: it is not deleted, a recovery still reads it and its WAL'
                % (backup_id, server, '; '.join(recovery_hold.describe(h) for h in holds)),
                recovery_hold.release_hint(self.layout, holds[0]),
                code='BACKUP_HELD',
                backup_id=backup_id,
                holds=holds,
            )
        if info['status'] in (infofile.STARTED, infofile.WAITING_FOR_WALS):
            raise CatalogRefusal(
                'Backup %s of %s is %s: it is still being taken' % (backup_id, server, info['status']),
                'Wait for it to end; a backup that died is marked FAILED by the next backup run',
                code='BACKUP_IN_PROGRESS',
                backup_id=backup_id,
            )
        left = [b for b in self.done_ids() if b != backup_id and b not in removing]
        if info['status'] == infofile.DONE and len(left) < max(minimum_redundancy, 1):
            raise CatalogRefusal(
                'Deleting backup %s of %s would leave %d DONE backup(s), below the minimum of %d'
                % (backup_id, server, len(left), max(minimum_redundancy, 1)),
                'Take a new backup first; the last good backup of a server is never deleted',
                code='MINIMUM_REDUNDANCY',
                backup_id=backup_id,
                minimum_redundancy=minimum_redundancy,
            )

    def archived_wals(self) -> Dict[str, int]:
        """{name: bytes} of every WAL file the archive holds: indexed in xlog.db, or a file in wals/ or
        incoming/ (not yet compressed and indexed). Each is the archive, whatever stage it is at."""
        sizes = dict((e.name, e.size) for e in self.wals)
        directories = [self.layout.wals_dir, self.layout.incoming_dir]
        if os.path.isdir(self.layout.wals_dir):
            directories += [
                os.path.join(self.layout.wals_dir, entry)
                for entry in os.listdir(self.layout.wals_dir)
                if len(entry) == 16 and os.path.isdir(os.path.join(self.layout.wals_dir, entry))
            ]
        for directory in directories:
            try:
                entries = os.listdir(directory)
            except FileNotFoundError:
                continue
            for entry in entries:
                if entry in sizes or not wal.is_wal_name(entry):
                    continue  # dot-named temporary files are not WAL names
                try:
                    sizes[entry] = os.stat(os.path.join(directory, entry)).st_size
                except FileNotFoundError:
                    continue  # moved from incoming/ to wals/ meanwhile: found there or in xlog.db
        return sizes

    def plan_removal(
        self,
        backup_ids: Collection[str],
        statuses: Mapping[str, str],
        now: datetime.datetime,
        wal_needed_from: Iterable[str] = (),
    ) -> RemovalPlan:
        """The one plan of delete and retention: ``backup_ids``, the WAL no backup left and no recovery
        hold needs once they are gone, and the expired holds. Check mode shows it, a real run removes it."""
        remaining = dict((b, info) for b, info in self.infos.items() if b not in backup_ids)
        kept_statuses = dict((b, s) for b, s in statuses.items() if b not in backup_ids)
        for backup_id in remaining:
            if backup_id not in kept_statuses and remaining[backup_id]['status'] == infofile.DONE:
                kept_statuses[backup_id] = retention.VALID
        sizes = self.archived_wals()
        names = retention.removable_wals(
            sorted(sizes),
            remaining,
            kept_statuses,
            self.segment_size,
            needed_from=[h['begin_wal'] for h in self.active_holds(now)] + list(wal_needed_from),
        )
        stale = sorted(h['token'] for h in self.holds if recovery_hold.is_stale(h, now))
        return RemovalPlan(sorted(backup_ids), names, [sizes[n] for n in names], stale)

    def remove(self, plan: RemovalPlan) -> None:
        """Remove exactly ``plan``: backups (catalog entry first, then files), WAL files (index first,
        then files, wherever they are), then expired holds."""
        with contextlib.ExitStack() as archive_lock:
            if plan.wals:
                # The background compression must not move a planned file from incoming/ into wals/ and
                # index it again while it is being removed. Taken before anything is removed, so that a
                # busy lock refuses the whole plan, never the WAL half of it.
                archive_lock.enter_context(
                    lockfile.ServerLock(self.layout, 'archive-process', wait_seconds=ARCHIVE_PROCESS_WAIT_SECONDS)
                )
            self._remove_locked(plan)

    def _remove_locked(self, plan: RemovalPlan) -> None:
        removed_infos = dict((b, self.infos[b]) for b in plan.backups)
        # Newest first: an interruption leaves a parent without some children, never children without a parent.
        for backup_id in sorted(plan.backups, reverse=True):
            self.release(backup_id)
            os.unlink(self.layout.backup_info_path(backup_id))
            catalog.fsync_dir(self.layout.meta_dir)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.layout.verification_path(backup_id))  # it would outlive what it speaks of
            self.verifications.pop(backup_id, None)
            directory = self.layout.backup_dir(backup_id)
            if os.path.isdir(directory):
                doomed = os.path.join(self.layout.base_dir, '.%s.deleting' % backup_id)
                os.rename(directory, doomed)
                shutil.rmtree(doomed)
            del self.infos[backup_id]
        # The parents that stay no longer list what went (Barman reads children_backup_ids).
        parents = set(self.infos) & set(i.get('parent_backup_id') for i in removed_infos.values())
        for parent in sorted(parents):
            chain.set_children(self.layout, parent, self.infos)
        if plan.wals:
            gone = set(plan.wals)
            with lockfile.ServerLock(self.layout, 'xlogdb', wait_seconds=60):
                entries = [e for e in xlogdb.read_xlog_db(self.layout.xlog_db) if e.name not in gone]
                catalog.atomic_write(
                    self.layout.xlog_db, ''.join(xlogdb.format_xlog_db_line(*e) for e in entries), 0o600
                )
            for name in plan.wals:
                for path in (self.layout.wal_path(name), os.path.join(self.layout.incoming_dir, name)):
                    if os.path.exists(path):
                        os.unlink(path)
            self.wals = [e for e in self.wals if e.name not in gone]
            self._sizes = None
        for token in plan.stale_holds:
            recovery_hold.release(self.layout, token)
        self.holds = [h for h in self.holds if h['token'] not in plan.stale_holds]


def _removal_result(plan, server, now):
    return dict(
        removed_backups=list(plan.backups),
        removed_wals=len(plan.wals),
        removed_wal_size=sum(plan.wal_sizes),
        removed_wal_names=list(plan.wals),
        first_removed_wal=plan.wals[0] if plan.wals else None,
        last_removed_wal=plan.wals[-1] if plan.wals else None,
        holds=server.active_holds(now),
        removed_stale_holds=list(plan.stale_holds),
    )


def _changing(layout):
    """The locks of a change: the backup lock (no backup, no other change), then the recovery-hold lock,
    so that a recovery taking a hold meanwhile waits until the change has removed what it planned."""
    return lockfile.ServerLock(layout, 'backup'), lockfile.ServerLock(
        layout, recovery_hold.LOCK, wait_seconds=HOLD_LOCK_WAIT_SECONDS
    )


def plan_delete(
    server: ServerCatalog, backup_id: str, minimum_redundancy: int, now: datetime.datetime, force: bool = False
) -> RemovalPlan:
    """The plan of deleting one backup: refuses what must stay, else the backup and the WAL only it needed.
    The parent of incremental backups goes only with ``force``, and its descendants with it."""
    server.refuse_if_malformed('delete a backup')
    backup_id = server.resolve(backup_id)
    built_on = chain.descendants(server.infos, backup_id)
    if built_on and not force:
        raise CatalogRefusal(
            'Backup %s of %s is the parent of the incremental backup(s) %s, which cannot be restored without it: '
            'it is not deleted' % (backup_id, server.layout.server, ', '.join(built_on)),
            'Delete the newest incremental first, or delete with force to remove %s and every backup built on it'
            % backup_id,
            code='BACKUP_HAS_CHILDREN',
            backup_id=backup_id,
            children=built_on,
        )
    doomed = [backup_id] + built_on
    for each in doomed:
        server.check_deletable(each, minimum_redundancy, now, removing=doomed)
    return server.plan_removal(doomed, {}, now)


def delete_backup(
    layout: catalog.ServerLayout,
    backup_id: str,
    minimum_redundancy: int,
    dry_run: bool = False,
    now: Optional[datetime.datetime] = None,
    force: bool = False,
) -> Dict[str, Any]:
    """Delete one backup (with force, and the incrementals built on it) and the WAL only they needed. Returns
    the removal result (with backup_id)."""
    now = now or catalog.now_utc()
    backup_lock, hold_lock = _changing(layout)
    with backup_lock, hold_lock:
        server = ServerCatalog(layout)
        plan = plan_delete(server, backup_id, minimum_redundancy, now, force)
        result = _removal_result(plan, server, now)
        if not dry_run:
            server.remove(plan)
    result['backup_id'] = plan.backups[0]
    return result


def plan_retention(
    server: ServerCatalog,
    policy: retention.Policy,
    minimum_redundancy: int,
    now: datetime.datetime,
    mirrored: Optional[Mapping[str, Collection[str]]] = None,
) -> Tuple[Dict[str, str], RemovalPlan]:
    """(statuses, plan): the backups the policy makes OBSOLETE (a held one is HELD instead, the last verified
    one LAST_VERIFIED), FAILED backups older than the oldest one it keeps, and the WAL nothing left needs."""
    server.refuse_if_malformed('apply the retention policy')
    statuses = server.statuses(policy, minimum_redundancy, now, mirrored)
    doomed = [b for b, s in statuses.items() if s == retention.OBSOLETE]
    doomed += retention.obsolete_failures(server.infos, statuses)
    wal_needed_from = []
    if mirrored:
        # Waiting for mirrors: their WAL too, from the oldest segment one of them has not acknowledged.
        segments = [n for n in sorted(server.archived_wals()) if wal.is_segment_name(n)]
        wal_needed_from = [n for n in [mirror.oldest_unforwarded(server.layout, segments)] if n]
    return statuses, server.plan_removal(doomed, statuses, now, wal_needed_from)


def apply_retention(
    layout: catalog.ServerLayout,
    policy: retention.Policy,
    minimum_redundancy: int,
    now: Optional[datetime.datetime] = None,
    dry_run: bool = False,
    mirrored: Optional[Mapping[str, Collection[str]]] = None,
) -> Dict[str, Any]:
    """Apply the policy: plan, then (unless dry_run) remove exactly the plan. Returns the statuses and the
    removal result. ``mirrored``: the backup ids each mirror holds (what one lacks stays, WAITING_FOR_MIRROR)."""
    now = now or catalog.now_utc()
    backup_lock, hold_lock = _changing(layout)
    with backup_lock, hold_lock:
        server = ServerCatalog(layout)
        statuses, plan = plan_retention(server, policy, minimum_redundancy, now, mirrored)
        result = _removal_result(plan, server, now)
        result['retention_status'] = statuses
        if not dry_run:
            server.remove(plan)
    return result


def release_hold(layout: catalog.ServerLayout, token: str, dry_run: bool = False) -> Dict[str, Any]:
    """Remove a recovery hold; returns dict(hold=token, released=whether it existed)."""
    path = recovery_hold.hold_path(layout, token)
    existed = os.path.exists(path)
    if existed and not dry_run:
        existed = recovery_hold.release(layout, token)
    return dict(hold=token, released=existed)
