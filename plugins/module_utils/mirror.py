# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A mirror backup server's copy of its primary's catalogs: backups pulled from the primary's catalog,
through its catalog reader (runtime/catalogreader.py, the forced command of the mirror's key there),
never from PostgreSQL. WAL arrives the other way: the primary forwards it (runtime/walforwarder.py).

A copy is made under a partial name (kept across failures, so that the next run resumes it), checked
against the backup's manifest, renamed, and only then given its backup.info: Barman and we list a backup
by its backup.info, so a partial copy never appears in the catalog.
"""

import json
import os
import shutil
import time
from typing import Any, Collection, Dict, List, Mapping, Optional

from ansible_collections.barman.postgresql.plugins.module_utils import (
    backup,
    catalog,
    identityfile,
    infofile,
    lockfile,
    manifest,
    remote,
    ssh,
    wal,
    wal_store,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

MARKER = 'mirror.json'  # in a server's catalog root: this catalog is a copy; its primary writes the original
PARTIAL_PREFIX = '.mirror-'
PARTIAL_SUFFIX = '.partial'
CONNECTION_KEYS = ('mirror_of', 'ssh', 'port', 'identity_file', 'known_hosts', 'barman_home')


class MirrorRefusal(BarmanError):
    """The mirror cannot take this server's catalog as it is."""

    code = 'MIRROR_REFUSED'


class MirrorCopyFailed(BarmanError):
    """A backup copied from the primary differs from its manifest."""

    code = 'MIRROR_COPY_FAILED'


def marker_path(layout: catalog.ServerLayout) -> str:
    return os.path.join(layout.root, MARKER)


def marker(layout: catalog.ServerLayout) -> Optional[Dict[str, Any]]:
    """What the catalog's mirror.json says (its primary and how to reach its catalog reader), or None for a
    catalog of its own (a primary's)."""
    text = catalog.read_text(marker_path(layout))
    return None if text is None else json.loads(text)


def mirror_of(layout: catalog.ServerLayout) -> Optional[str]:
    """The primary backup server this catalog mirrors, or None."""
    return (marker(layout) or {}).get('mirror_of')


def _holds_wal(layout):
    return os.path.exists(layout.xlog_db) and os.path.getsize(layout.xlog_db) > 0


def _holds_anything(layout):
    return bool(infofile.backup_infos(layout)) or _holds_wal(layout)


def claim(layout: catalog.ServerLayout, primary: Mapping[str, Any], dry_run: bool = False) -> bool:
    """Mark the catalog as a mirror of ``primary`` (mirror_of, ssh, port, identity_file, known_hosts,
    barman_home: the primary backup server and its catalog reader); True when that changed it.

    A new catalog is claimed; one already a mirror is re-pointed (the inventory moved it). A catalog written
    as a primary is refused: it may hold WAL and backups its successor never had, and two writers of one
    server's archive are how archives fork.
    """
    wanted = dict((key, primary[key]) for key in CONNECTION_KEYS)
    current = marker(layout)
    if current == wanted:
        return False
    if current is None and os.path.isdir(layout.root) and _holds_anything(layout):
        raise MirrorRefusal(
            'the catalog of %s in %s was written as its primary backup server (it has backups or WAL of its '
            'own), so it cannot become a mirror of %s' % (layout.server, layout.root, wanted['mirror_of']),
            'If this host was the primary and %s took over, move %s aside (keep it until the new primary holds '
            'what you need), then run the playbook again: the mirror copies everything afresh'
            % (wanted['mirror_of'], layout.root),
            server=layout.server,
        )
    if not dry_run:
        catalog.ensure_directories(layout)
        catalog.atomic_write(marker_path(layout), json.dumps(wanted, sort_keys=True) + '\n')
    return True


def reader(connection: Mapping[str, Any], control_path: Optional[str] = None) -> remote.Remote:
    """The primary's catalog reader (as a remote.Remote: its check_output runs a request, its rsync reads)."""
    user, host = connection['ssh'].rsplit('@', 1)
    return remote.Remote(
        ssh.validate_ssh_target(user, host, connection.get('port')),
        control_path,
        known_hosts_file=connection['known_hosts'],
        identity_file=connection['identity_file'],
    )


def listing(source: remote.Remote, server: str, after: Optional[str] = None) -> Dict[str, Any]:
    """The reader's ``list SERVER [WAL]``: identity, backups (id, status, info text), wal (newest, after ...)."""
    return json.loads(source.check_output(['list', server] + ([after] if after else [])))


def newest_segment(layout: catalog.ServerLayout) -> Optional[str]:
    """The newest WAL segment the catalog holds, or None."""
    names = wal_store.WalArchive(layout.barman_home, layout.server).archived_names()
    return max((n for n in names if wal.parse_wal_name(n).kind == 'segment'), default=None)


def lag_of(
    mirror_name: str, newest_here: Optional[str], primary_wal: Mapping[str, Any], now: Optional[float] = None
) -> Dict[str, Any]:
    """How far a mirror's WAL is behind, from the ``wal`` of the reader's ``list SERVER <newest_here>``: segments,
    and seconds since the oldest segment the mirror lacks arrived on the primary."""
    first_missing = primary_wal.get('first_after_time')
    return dict(
        mirror_of=mirror_name,
        newest=newest_here,
        primary_newest=primary_wal.get('newest'),
        behind_segments=primary_wal.get('after') or 0,
        behind_seconds=0 if first_missing is None else max(0, round((now or time.time()) - first_missing)),
    )


def lag(layout: catalog.ServerLayout, now: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """A mirror's lag (lag_of), asking the primary's reader; None for a catalog that is no mirror."""
    connection = marker(layout)
    if connection is None:
        return None
    newest_here = newest_segment(layout)
    with reader(connection) as source:
        primary_wal = listing(source, layout.server, newest_here)['wal']
    return lag_of(connection['mirror_of'], newest_here, primary_wal, now)


def promote(layout: catalog.ServerLayout, dry_run: bool = False) -> Optional[str]:
    """Make a mirror's catalog a primary one (its server now archives here); the former primary's name, or
    None when it was a primary's already."""
    former = mirror_of(layout)
    if former is not None and not dry_run:
        os.unlink(marker_path(layout))
        catalog.fsync_dir(layout.root)
    return former


def oldest_unforwarded(layout: catalog.ServerLayout, names: List[str]) -> Optional[str]:
    """On a primary: the oldest of ``names`` (archived WAL segments, in order) that one of its mirrors has not
    acknowledged, as its forwarder's state says (``mirrors/<mirror>.forwarded``, runtime/walforwarder.py: the
    names acknowledged, or all up to "last"), or None. A mirror without a state has acknowledged nothing."""
    directory = os.path.join(layout.root, 'mirrors')
    oldest = None
    for entry in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        if not entry.endswith('.json'):
            continue
        try:
            state = json.loads(
                catalog.read_text(os.path.join(directory, entry[: -len('.json')] + '.forwarded')) or '{}'
            )
        except ValueError:
            state = {}
        listed, last = state.get('acknowledged'), state.get('last')
        if isinstance(listed, list):
            acknowledged = set(listed)
        else:
            acknowledged = set(n for n in names if isinstance(last, str) and n <= last)
        missing = next((n for n in names if n not in acknowledged), None)
        if missing is not None and (oldest is None or missing < oldest):
            oldest = missing
    return oldest


def partial_dir(layout: catalog.ServerLayout, backup_id: str) -> str:
    return os.path.join(layout.base_dir, PARTIAL_PREFIX + catalog.validate_backup_id(backup_id) + PARTIAL_SUFFIX)


class _PartialLayout(catalog.ServerLayout):
    """The layout with one backup's directory at its partial name, for checking it before the rename."""

    def __init__(self, layout, backup_id):
        super().__init__(layout.barman_home, layout.server)
        self._partial_id = backup_id

    def backup_dir(self, backup_id):
        if backup_id == self._partial_id:
            return partial_dir(self, backup_id)
        return super().backup_dir(backup_id)


def _check_identity(layout, listing, dry_run):
    identity = listing.get('identity')
    if not identity:
        return
    mine = identityfile.read_identity(layout.identity_file)
    if mine is None:
        if not dry_run:
            catalog.atomic_write(layout.identity_file, json.dumps(identity, sort_keys=True) + '\n')
    elif str(mine.get('systemid')) != str(identity.get('systemid')):
        raise MirrorRefusal(
            'the mirror holds server %s of system %s, its primary one of system %s'
            % (layout.server, mine.get('systemid'), identity.get('systemid')),
            "The two catalogs are of different clusters under one name: move the mirror's %s aside" % layout.root,
            server=layout.server,
        )


def _link_dest(layout, backup_id, infos):
    """The newest backup already here before ``backup_id``: most files of a new backup are its files."""
    done = infofile.done_backup_ids(infos)
    earlier = done[: done.index(backup_id)]
    return layout.backup_dir(earlier[-1]) + '/' if earlier else None


def copy_backup(
    layout: catalog.ServerLayout,
    source: remote.Remote,
    primary_home: str,
    backup_id: str,
    info_text: str,
    bandwidth_limit_kbps: Optional[int] = None,
) -> Dict[str, Any]:
    """Copy one DONE backup from the primary (``source``: a remote.Remote to its catalog reader) into the
    mirror's catalog; what was copied."""
    info = infofile.parse_backup_info(info_text, source="the primary's backup.info of %s" % backup_id)
    partial = partial_dir(layout, backup_id)
    infos = infofile.backup_infos(layout)
    link_dest = _link_dest(layout, backup_id, dict(infos, **{backup_id: info}))
    os.makedirs(partial, mode=0o700, exist_ok=True)  # kept from a failed run: rsync resumes into it
    remote_dir = os.path.join(catalog.ServerLayout(primary_home, layout.server).backup_dir(backup_id), '')

    def pull(checksum, dry_run=False):
        return source.rsync(
            source.path(remote_dir),
            partial + '/',
            what='the backup %s of %s from its primary backup server' % (backup_id, layout.server),
            vanished_ok=False,
            link_dest=link_dest,
            checksum=checksum,
            dry_run=dry_run,
            delete=True,  # what a killed rsync left in the partial copy (a pull's --delete never reaches the reader)
            # Whole files between backup servers (measured: the delta algorithm made an incremental's copy 2.5x
            # slower than sending its changed files whole); rsync's delta only where the link was declared slow.
            whole_file=not bandwidth_limit_kbps,
            bandwidth_limit_kbps=bandwidth_limit_kbps or None,
            protect_args=False,  # the catalog reader checks the path, so it must see it on its command line
        )

    def differences():
        """(what differs from the primary's backup, how it was checked): against the backup's manifest, or, for
        a backup without one (Barman's own, or older ones), by rsync comparing every file's content with the
        primary's (it reads both sides again)."""
        problems = _check_copy(layout, backup_id, info)
        if problems is not None:
            return problems, 'manifest'
        compared, _seconds = pull(checksum=True, dry_run=True)
        changed = compared.get('regular_files_transferred') or 0
        return [dict(file='%d file(s)' % changed, problem='differ from the primary by content')] if changed else [], (
            'content'
        )

    stats, seconds = pull(checksum=False)
    problems, checked = differences()
    if problems:
        # rsync trusts size and time, and a file of the previous backup (--link-dest) or of an earlier partial
        # copy may have both and another content (the primary checksums recently changed files): compare
        # contents, once, then check again.
        stats, seconds = pull(checksum=True)
        problems, checked = differences()
    if problems:
        raise MirrorCopyFailed(
            "the copy of backup %s of %s differs from the primary's (%s) even after comparing contents: %s"
            % (
                backup_id,
                layout.server,
                checked,
                '; '.join('%s: %s' % (p['file'], p['problem']) for p in problems[:5]),
            ),
            'The backup on the primary may itself be damaged: verify it there (verify.yml). The partial copy stays '
            'hidden under base/ until the primary no longer lists that backup',
            backup_id=backup_id,
            problems=problems,
        )
    backup.sync_filesystem(partial)
    final = layout.backup_dir(backup_id)
    if os.path.exists(layout.backup_info_path(backup_id)):
        raise MirrorRefusal(
            'backup %s of %s appeared in the mirror while it was copied' % (backup_id, layout.server),
            'Another run copied it: nothing to do',
            backup_id=backup_id,
        )
    if os.path.exists(final):  # a directory without backup.info: not a backup of the catalog
        shutil.rmtree(final)
    os.rename(partial, final)
    catalog.fsync_dir(layout.base_dir)
    catalog.atomic_write(layout.backup_info_path(backup_id), info_text)
    return dict(
        backup_id=backup_id,
        bytes=stats.get('total_transferred_file_size'),
        linked_from=link_dest and os.path.basename(link_dest.rstrip('/')),
        seconds=round(seconds, 3),
        checked_by=checked,
    )


def _check_copy(layout, backup_id, info):
    """What differs between the partial copy and the backup's manifest ([] when nothing does); None for a backup
    without a manifest."""
    partial_layout = _PartialLayout(layout, backup_id)
    if not os.path.exists(partial_layout.manifest_path(backup_id)):
        return None
    parsed = manifest.read(partial_layout.manifest_path(backup_id))
    return manifest.check_files(
        partial_layout, backup_id, [t.oid for t in info.get('tablespaces') or []], parsed=parsed
    )


def to_copy(listed: List[Mapping[str, Any]], have: Collection[str]) -> List[Mapping[str, Any]]:
    """The DONE backups of the primary's listing (oldest first) newer than the newest one the mirror holds, or all
    of them for a mirror that holds none: an older one the mirror lacks was copied and removed by its own
    retention, and copying it again would undo that."""
    held = [i for i, b in enumerate(listed) if b['id'] in have]
    return [b for b in listed[held[-1] + 1 if held else 0 :] if b.get('status') == 'DONE' and b['id'] not in have]


def sync_server(
    layout: catalog.ServerLayout,
    source: remote.Remote,
    primary: Mapping[str, Any],
    catalog_listing: Mapping[str, Any],
    dry_run: bool = False,
    bandwidth_limit_kbps: Optional[int] = None,
) -> Dict[str, Any]:
    """Copy every DONE backup of the primary's ``listing`` (the catalog reader's ``list``) that the mirror
    lacks, oldest first (a block incremental's parent before it); what was copied."""
    claimed = claim(layout, primary, dry_run)
    _check_identity(layout, catalog_listing, dry_run)
    result = dict(server=layout.server, mirror_of=primary['mirror_of'], claimed=claimed, copied=[])
    if dry_run:
        result['missing'] = [b['id'] for b in to_copy(catalog_listing.get('backups', []), _backup_ids(layout))]
        return result
    started = time.monotonic()
    with lockfile.ServerLock(layout, 'mirror'):  # decided under the lock: a run that just ended copied some
        wanted = to_copy(catalog_listing.get('backups', []), _backup_ids(layout))
        for entry in wanted:
            result['copied'].append(
                copy_backup(layout, source, primary['barman_home'], entry['id'], entry['info'], bandwidth_limit_kbps)
            )
    result['missing'] = []
    result['seconds'] = round(time.monotonic() - started, 3)
    return result


def _backup_ids(layout):
    return set(infofile.backup_infos(layout))


def sweep_partials(layout: catalog.ServerLayout, keep: List[str]) -> List[str]:
    """Remove partial copies of backups the primary no longer lists (deleted there meanwhile)."""
    removed = []
    for entry in os.listdir(layout.base_dir) if os.path.isdir(layout.base_dir) else []:
        if entry.startswith(PARTIAL_PREFIX) and entry.endswith(PARTIAL_SUFFIX):
            backup_id = entry[len(PARTIAL_PREFIX) : -len(PARTIAL_SUFFIX)]
            if backup_id not in keep:
                shutil.rmtree(os.path.join(layout.base_dir, entry))
                removed.append(backup_id)
    return removed


def module_spec() -> Dict[str, Any]:
    """pg_backup_mirror's AnsibleModule keyword arguments."""
    spec = dict(
        action=dict(type='str', choices=['sync', 'claim', 'promote'], default='sync'),
        primary=dict(type='str'),
        primary_ssh=dict(type='str'),
        primary_port=dict(type='int', default=22),
        primary_barman_home=dict(type='path', default='/var/lib/barman'),
        identity_file=dict(type='path'),
        known_hosts_file=dict(type='path'),
        bandwidth_limit=dict(type='int', default=0),
    )
    spec.update(catalog.catalog_argument_spec())
    return dict(
        argument_spec=spec,
        required_if=[
            (action, wanted, ('primary', 'primary_ssh', 'identity_file', 'known_hosts_file'))
            for action, wanted in (('action', 'sync'), ('action', 'claim'))
        ],
    )


def run_action(params: Mapping[str, Any], check_mode: bool = False) -> Dict[str, Any]:
    """The result of ``params['action']`` with ``changed``."""
    layout = catalog.ServerLayout(params['barman_home'], params['server'])
    if params['action'] == 'promote':
        former = promote(layout, dry_run=check_mode)
        return dict(changed=former is not None, server=layout.server, was_mirror_of=former)
    primary = dict(
        mirror_of=params['primary'],
        ssh=params['primary_ssh'],
        port=params['primary_port'],
        identity_file=params['identity_file'],
        known_hosts=params['known_hosts_file'],
        barman_home=params['primary_barman_home'],
    )
    if params['action'] == 'claim':
        changed = claim(layout, primary, dry_run=check_mode)
        return dict(changed=changed, server=layout.server, mirror_of=primary['mirror_of'], holds_wal=_holds_wal(layout))
    with reader(primary) as source:
        # One request for both the backups to copy and the lag (measured as the run starts, after mirror.yml's
        # forwarding): each request is an SSH connection and a start of the reader on the primary.
        newest_here = newest_segment(layout)
        catalog_listing = listing(source, layout.server, newest_here)
        result = sync_server(
            layout, source, primary, catalog_listing, dry_run=check_mode, bandwidth_limit_kbps=params['bandwidth_limit']
        )
    if not check_mode:
        listed = [b['id'] for b in catalog_listing.get('backups', [])]
        result['swept_partials'] = sweep_partials(layout, listed)
        result['lag'] = lag_of(primary['mirror_of'], newest_here, catalog_listing.get('wal') or {})
    result['changed'] = bool(result['claimed'] or result['copied'] or result.get('swept_partials'))
    return result
