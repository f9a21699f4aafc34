# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery of a backup to a directory of a host, to its end or to a point in time (pg_recover's logic).

Everything that can be refused is refused before anything is copied: the target against the backups
and the archive, the archive's continuity, the destination. Nothing is ever deleted: an existing
PGDATA is refused (or, in place, moved aside by the caller).
"""

import datetime
import os
import re
import shutil
import tempfile
import time
from typing import Any, Container, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    chain,
    cluster,
    infofile,
    pgdata_layout,
    postgres,
    recovery_hold,
    remote,
    ssh,
    stream_backup,
    wal,
)
from ansible_collections.barman.postgresql.plugins.module_utils.wal_store import WalArchive, copy_decompressed
from ansible_collections.barman.postgresql.plugins.module_utils.backup import disk_usage
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

TARGET_KINDS = ('target_time', 'target_xid', 'target_name', 'target_lsn', 'target_immediate')
TARGET_ACTIONS = ('pause', 'promote', 'shutdown')
# Settings of a copied postgresql.conf that point at the original cluster's files: commented out.
SETTINGS_POINTING_AT_THE_ORIGINAL = (
    'data_directory',
    'hba_file',
    'ident_file',
    'external_pid_file',
    'include_dir',
    'include',
    'include_if_exists',
    'archive_command',
    'archive_library',
    'restore_command',
    # The original's duties, which a copy must not run in its name.
    'recovery_end_command',
    'archive_cleanup_command',
    'ssl_passphrase_command',
    'primary_conninfo',
    'primary_slot_name',
    'stats_temp_directory',
    # An earlier recovery's settings (a backup taken after an in-place recovery carries them).
    'recovery_target',
    'recovery_target_time',
    'recovery_target_xid',
    'recovery_target_name',
    'recovery_target_lsn',
    'recovery_target_inclusive',
    'recovery_target_action',
    'recovery_target_timeline',
)


class RecoveryError(BarmanError):
    """The recovery was refused or failed; the message says why and what is possible."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


def target_argument_spec() -> dict:
    """The options that choose the backup and the target (the_target, choose_backup): pg_recover's, and those of a
    recovery staged from a bucket."""
    return dict(
        backup_id=dict(type='str'),
        target_time=dict(type='str'),
        target_xid=dict(type='str'),
        target_name=dict(type='str'),
        target_lsn=dict(type='str'),
        target_immediate=dict(type='bool', default=False),
    )


def module_spec() -> dict:
    """pg_recover's AnsibleModule keyword arguments: the catalog, the target, the destination and how WAL
    gets there, and the rules between them.

    Ansible counts an option as given when its key is there, even with a null value, for mutually_exclusive,
    required_together and required_if (required_by alone looks at the value). recover.yml passes every
    target and destination option, null when not chosen, so the rules on those stay here, in the_target,
    which treats null and blank as not given.
    """
    spec = catalog.catalog_argument_spec()
    spec.update(target_argument_spec())
    spec.update(
        target_tli=dict(type='str', default='latest'),
        target_inclusive=dict(type='bool', default=True),
        target_action=dict(type='str', choices=list(TARGET_ACTIONS), default='promote'),
        destination_host=dict(type='str'),
        destination_user=dict(type='str', default='postgres'),
        destination_port=dict(type='int'),
        destination_directory=dict(type='path'),
        in_place=dict(type='bool', default=False),
        tablespace_map=dict(type='dict', default={}),
        delta=dict(type='bool', default=False),
        port=dict(type='int'),
        listen_addresses=dict(type='str'),
        settings=dict(type='dict', default={}),
        get_wal=dict(type='bool', default=True),
        wal_sender=dict(type='list', elements='str'),
        archive=dict(type='bool', default=False),
        hold_hours=dict(type='int', default=24),
        pg_bindir=dict(type='path'),
        standby=dict(type='bool', default=False),
        members=cluster.members_spec(),
        standby_user=dict(type='str', default='streaming_barman'),
        standby_passfile=dict(type='path'),
        standby_name=dict(type='str'),
        primary_slot_name=dict(type='str'),
    )
    # The primary of a standby is found by asking the members, as the backup role.
    spec.update((k, v) for k, v in postgres.connection_argument_spec().items() if k != 'pg_host')
    return dict(
        argument_spec=spec,
        # recovery_settings refuses get_wal without wal_sender too (restore_command is planned in check mode as well).
        required_if=[('get_wal', True, ['wal_sender'])],
        # Without destination_host the copy is local: an SSH port would be silently ignored.
        required_by=dict(destination_port=('destination_host',)),
    )


# -- the target ----------------------------------------------------------------------------------

_TZ_RE = re.compile(r'(Z|[+-]\d{2}(:?\d{2})?|\s[A-Za-z][A-Za-z_/+-]*)$')


def parse_target_time(text: Optional[str]) -> datetime.datetime:
    """An aware datetime from 'YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]' (a time zone is required)."""
    text = (text or '').strip()
    value = text.replace('T', ' ', 1)
    if value.endswith('Z'):
        value = value[:-1] + '+00:00'
    if re.search(r'[+-]\d{2}$', value):
        value += ':00'
    try:
        if not re.match(r'\d{4}-\d{2}-\d{2} \d{2}:\d{2}', value):
            raise ValueError('not a date and a time')
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise RecoveryError(
            'target_time %r is not a time' % text,
            "Write it as 'YYYY-MM-DD HH:MM:SS+00' (ISO 8601 with a time zone), for example '2026-11-24 03:12:00+00'",
            code='INVALID_TARGET',
        ) from None
    if parsed.tzinfo is None:
        raise RecoveryError(
            "target_time %r has no time zone: PostgreSQL would read it in the server's time zone" % text,
            "Add the zone, for example '%s+00' for UTC" % text,
            code='INVALID_TARGET',
        )
    return parsed


def the_target(params: Mapping[str, Any]) -> Tuple[Optional[str], Any]:
    """(kind, value) of the one target given, or (None, None) for the end of the archive."""
    given = [k for k in TARGET_KINDS if params.get(k) not in (None, False, '')]
    if len(given) > 1:
        raise RecoveryError(
            'several recovery targets given: %s' % ', '.join(given),
            'PostgreSQL takes one: keep one of target_time, target_xid, target_name, target_lsn, target_immediate',
            code='INVALID_TARGET',
        )
    if not given:
        return None, None
    kind = given[0]
    value = params[kind]
    if kind == 'target_time':
        return kind, parse_target_time(value)
    if kind == 'target_lsn':
        try:
            return kind, wal.parse_lsn(value)
        except ValueError as error:
            raise RecoveryError(
                str(error), 'Write an LSN as PostgreSQL prints it, for example 0/5000028', code='INVALID_TARGET'
            ) from None
    if kind == 'target_xid' and not re.match(r'[0-9]+\Z', str(value)):
        raise RecoveryError(
            'target_xid %r is not a transaction id' % value,
            'Use a number, as txid_current() returns',
            code='INVALID_TARGET',
        )
    return kind, value


def choose_backup(
    infos: Mapping[str, Dict[str, Any]], kind: Optional[str], value: Any, backup_id: Optional[str] = None
) -> Tuple[str, Dict[str, Any]]:
    """The backup to restore: the given one, or the newest DONE one that ends before the target."""
    done = [(i, infos[i]) for i in infofile.done_backup_ids(infos)]
    if not done:
        raise RecoveryError(
            'there is no DONE backup of this server', 'Take one first (playbooks/backup.yml)', code='NO_DONE_BACKUP'
        )
    if backup_id in (None, '', 'latest', 'last'):
        candidates = done
        if kind == 'target_time':
            candidates = [(i, info) for i, info in done if info['end_time'] < value]
        elif kind == 'target_lsn':
            candidates = [(i, info) for i, info in done if wal.parse_lsn(info['end_xlog']) <= value]
        if not candidates:
            oldest = done[0][1]
            raise RecoveryError(
                'the target %s is before the end of the oldest backup (%s ended at %s, LSN %s)'
                % (_target_shown(kind, value), done[0][0], oldest['end_time'], oldest['end_xlog']),
                'A backup can only be recovered to a point after its end: choose a later target',
                code='TARGET_BEFORE_BACKUP',
            )
        return candidates[-1]
    if backup_id in infofile.SHORTCUTS:
        backup_id = infofile.shortcut_backup_id(infos, backup_id, statuses=(infofile.DONE,)) or backup_id
    if backup_id not in infos:
        raise RecoveryError(
            'there is no backup %s of this server' % backup_id,
            'Known backups: %s' % ', '.join('%s (%s)' % (i, info['status']) for i, info in infos.items()),
            code='NO_SUCH_BACKUP',
        )
    info = infos[backup_id]
    if info['status'] != infofile.DONE:
        raise RecoveryError(
            'backup %s is %s, not DONE: it cannot be recovered' % (backup_id, info['status']),
            'Choose a DONE backup, or none to take the newest that fits the target',
            code='BACKUP_NOT_DONE',
        )
    if kind == 'target_time' and value <= info['end_time']:
        raise RecoveryError(
            'the target %s is before the end of backup %s (%s)'
            % (_target_shown(kind, value), backup_id, info['end_time']),
            'Choose a later target or an older backup',
            code='TARGET_BEFORE_BACKUP',
        )
    if kind == 'target_lsn' and value < wal.parse_lsn(info['end_xlog']):
        raise RecoveryError(
            'the target LSN %s is before the end of backup %s (LSN %s)'
            % (wal.format_lsn(value), backup_id, info['end_xlog']),
            'Choose a later target or an older backup',
            code='TARGET_BEFORE_BACKUP',
        )
    return backup_id, info


def _target_shown(kind, value):
    if kind == 'target_lsn':
        return 'LSN %s' % wal.format_lsn(value)
    return '%s %s' % (kind.replace('target_', ''), value)


def wal_needed_for_target(
    wal_archive: WalArchive, info: Mapping[str, Any], kind: Optional[str], value: Any
) -> Tuple[Dict[str, Any], int]:
    """Check that the WAL from the backup's begin_wal up to the target (or the newest) is all archived;
    the archive's continuity and the last segment number recovery needs."""
    segment_size = info['xlog_segment_size']
    continuity = wal_archive.continuity(segment_size, info['begin_wal'])
    newest = continuity['last']
    if newest is None or wal.segment_number(newest, segment_size) < wal.segment_number(info['end_wal'], segment_size):
        raise RecoveryError(
            'the archive does not reach the end of the backup (%s); it ends at %s' % (info['end_wal'], newest),
            'Check archiving (pg_wal_archive check): the backup is not usable until its WAL is archived',
            code='ARCHIVE_GAP',
        )
    needed_until = wal.segment_number(newest, segment_size)
    if kind == 'target_immediate':  # consistent at the backup's end: a kept standalone backup needs no more
        needed_until = wal.segment_number(info['end_wal'], segment_size)
    if kind == 'target_lsn':
        needed_until = wal.segment_number(wal.lsn_segment_name(value, 1, segment_size), segment_size)
        newest_end = wal.segment_start_lsn(newest, segment_size) + segment_size
        if value > newest_end:
            raise RecoveryError(
                'the target LSN %s is past the newest archived WAL (%s ends at LSN %s)'
                % (wal.format_lsn(value), newest, wal.format_lsn(newest_end)),
                'Recover to an earlier LSN, or archive the current WAL first (pg_wal_archive check switches it)',
                code='TARGET_AFTER_ARCHIVE',
            )
    if kind == 'target_time':
        newest_time = _archived_time(wal_archive, newest)
        if newest_time is not None and value.timestamp() > newest_time:
            raise RecoveryError(
                'the target time %s is past the newest archived WAL (%s, archived at %s)'
                % (value, newest, datetime.datetime.fromtimestamp(newest_time, datetime.timezone.utc)),
                'Recover to an earlier time, or archive the current WAL first (pg_wal_archive check switches it)',
                code='TARGET_AFTER_ARCHIVE',
            )
    gaps = [r for r in continuity['missing'] if wal.segment_number(r[0], segment_size) <= needed_until]
    if gaps:
        raise RecoveryError(
            'WAL is missing from the archive between the backup and the target: %s'
            % ', '.join('%s..%s' % tuple(r) for r in gaps),
            'Recovery would stop at the gap: choose a target before %s, or restore the missing files' % gaps[0][0],
            code='ARCHIVE_GAP',
        )
    return continuity, needed_until


def minimum_end_lsn(
    info: Mapping[str, Any], kind: Optional[str], value: Any, newest: str, inclusive: bool = True
) -> int:
    """The LSN recovery must at least reach before the copy may be called recovered: into the newest
    archived segment with no target (a fetch that failed must not pass for the archive's end), an
    inclusive target LSN (an exclusive one stops at the end of the record before it, padding short),
    else the backup's end (PostgreSQL itself refuses to end before any target it was given)."""
    if kind is None:
        return wal.segment_start_lsn(newest, info['xlog_segment_size']) + 1
    if kind == 'target_lsn' and inclusive:
        return value
    return wal.parse_lsn(info['end_xlog'])


def _archived_time(wal_archive, name):
    path = wal_archive.locate(name)
    return os.stat(path).st_mtime if path else None


# -- the destination ------------------------------------------------------------------------------

# Fetched WAL is recycled at each restartpoint: the copy holds about max_wal_size of it at a time.
FETCHED_WAL_ALLOWANCE = 1024 * 1024 * 1024
# For each path: the filesystem it is on (its nearest existing parent), as df prints it.
_DF_SCRIPT = 'for p do while [ ! -e "$p" ]; do p=$(dirname -- "$p"); done; df -P -B1 -- "$p" | tail -n 1; done'
# How a recovery words a failed copy (remote.RSYNC_FAILURE is how a backup does).
_COPY_FAILURE = 'copying %(what)s failed (rsync exit %(code)d, %(meaning)s): %(stderr)s'


class Destination:
    """The host and directory to recover into: over SSH as the PostgreSQL OS user, or local."""

    def __init__(self, params: Mapping[str, Any], directory: str, control_path: Optional[str]) -> None:
        self.directory = os.path.normpath(directory)
        target = None
        if params.get('destination_host'):
            target = ssh.validate_ssh_target(
                params['destination_user'], params['destination_host'], params.get('destination_port')
            )
        self.host = remote.Remote(target, control_path)

    def run(self, argv: Sequence[str]) -> Tuple[int, str]:
        """Run argv there; (exit code, stdout)."""
        code, out, _err = self.host.run(argv)
        return code, out

    def rsync(self, source: str, destination: str, what: str, **kwargs: Any) -> Dict[str, Optional[int]]:
        """Copy a local source to ``destination`` there; rsync's statistics. Every file must arrive."""
        stats, _seconds = self.host.rsync(
            source,
            self.host.path(destination),
            '%s to %s' % (what, destination),
            vanished_ok=False,
            failure=_COPY_FAILURE,
            **kwargs,
        )
        return stats

    def first_entry(self, directory: str) -> str:
        """The first entry of directory, '' when it is empty or absent."""
        code, out = self.run(['sh', '-c', 'if [ -e "$1" ]; then ls -A -- "$1" | head -n 1; fi', 'sh', directory])
        if code != 0:
            raise RecoveryError('cannot look into %s on the destination' % directory, code='SSH_FAILED')
        return out.strip()

    def filesystems(self, paths: Sequence[str]) -> Dict[str, Tuple[str, int]]:
        """{path: (mount point, free bytes)} of the filesystem each path is (or would be) on."""
        code, out = self.run(['sh', '-c', _DF_SCRIPT, 'sh'] + list(paths))
        lines = out.splitlines()
        if code != 0 or len(lines) != len(paths):
            raise RecoveryError(
                'cannot read the free space of %s on the destination (df exit %d)' % (', '.join(paths), code),
                'Check that df (coreutils) works there for the PostgreSQL OS user',
                code='SSH_FAILED',
            )
        found = {}
        for path, line in zip(paths, lines):
            fields = line.split(None, 5)
            found[path] = (fields[5], int(fields[3]))
        return found

    def unlink_pg_wal_link(self) -> None:
        """Remove the link (never what it points at) where an existing directory's pg_wal is one: the
        copy gets a pg_wal of its own, and a delta copy must not reach through the link."""
        link = os.path.join(self.directory, 'pg_wal')
        code, _out = self.run(['sh', '-c', 'if [ -L "$1" ]; then rm -f -- "$1"; fi', 'sh', link])
        if code != 0:
            raise RecoveryError('cannot remove the link %s on the destination' % link, code='SSH_FAILED')

    def close(self) -> None:
        self.host.close()


def destination_directory(params: Mapping[str, Any], info: Mapping[str, Any], now: Optional[float] = None) -> str:
    """The PGDATA to create: the original's in place, else the one given, else a new directory beside the
    original's (its path on the destination host), named by the time of the call so that it is new."""
    if params.get('in_place'):
        return os.path.normpath(info['pgdata'])
    if params.get('destination_directory'):
        return os.path.normpath(params['destination_directory'])
    stamp = time.strftime('%Y%m%dT%H%M%S', time.gmtime(time.time() if now is None else now))
    return '%s.recovered-%s' % (os.path.normpath(info['pgdata']), stamp)


def tablespace_locations(
    info: Mapping[str, Any], params: Mapping[str, Any], directory: Optional[str] = None
) -> Dict[int, Tuple[str, str]]:
    """{oid: (name, new location)}: tablespace_map by name or oid, else the original location when the
    destination is the original PGDATA, else a directory beside the destination."""
    directory = os.path.normpath(directory or params['destination_directory'])
    chosen = params.get('tablespace_map') or {}
    in_place = directory == os.path.normpath(info['pgdata'])
    locations = {}
    for tablespace in info['tablespaces'] or []:
        location = chosen.get(tablespace.name) or chosen.get(str(tablespace.oid))
        if not location:
            location = tablespace.location if in_place else '%s.tblspc/%s' % (directory, tablespace.name)
        locations[tablespace.oid] = (tablespace.name, os.path.normpath(location))
    return locations


def check_destination(
    destination: Destination, params: Mapping[str, Any], locations: Mapping[int, Tuple[str, str]]
) -> None:
    """Refuse to recover over anything: a non-empty directory without delta, a running server."""
    for directory in [destination.directory] + [loc for _name, loc in locations.values()]:
        entry = destination.first_entry(directory)
        if entry and not params['delta']:
            raise RecoveryError(
                '%s is not empty (it holds %s): recovery never overwrites data' % (directory, entry),
                'Recover into a new directory, set delta to copy only what differs into this one, or recover in '
                'place (recover.yml -e recover_in_place=true), which moves the old directory aside',
                code='DESTINATION_NOT_EMPTY',
            )
    code, _out = destination.run(['test', '-e', os.path.join(destination.directory, 'postmaster.pid')])
    if code == 0:
        raise RecoveryError(
            'a PostgreSQL server uses %s (postmaster.pid is there)' % destination.directory,
            'Stop it first; recover.yml does so with recover_in_place=true',
            code='DESTINATION_IN_USE',
        )


def space_needed(
    layout: catalog.ServerLayout,
    backup_id: str,
    locations: Mapping[int, Tuple[str, str]],
    directory: str,
    wal_bytes: int,
) -> Dict[str, int]:
    """{destination path: bytes it receives}: the backup's data directory plus the WAL recovery will
    hold there, and each tablespace."""
    needs = {directory: disk_usage(layout.backup_data_dir(backup_id))[0] + wal_bytes}
    for oid, (_name, location) in locations.items():
        needs[location] = needs.get(location, 0) + disk_usage(layout.backup_tablespace_dir(backup_id, oid))[0]
    return needs


def check_free_space(
    filesystems: Mapping[str, Tuple[str, int]], needs: Mapping[str, int], original_pgdata: str, in_place: bool
) -> List[str]:
    """Refuse when a destination filesystem cannot hold what goes there; warnings for a copy that would
    share the live server's filesystem. ``filesystems`` maps each path (and the original PGDATA) to
    (mount point, free bytes)."""
    per_mount = {}
    for path, need in needs.items():
        mount, free = filesystems[path]
        total, free, paths = per_mount.get(mount, (0, free, []))
        per_mount[mount] = (total + need, free, paths + [path])
    for mount, (need, free, paths) in sorted(per_mount.items()):
        if need > free:
            raise RecoveryError(
                'the filesystem %s on the destination has %d MiB free, and recovering into %s needs %d MiB '
                '(the backup plus the WAL recovery holds)' % (mount, free >> 20, ', '.join(sorted(paths)), need >> 20),
                'Free space there, or recover into a directory on a larger filesystem (recover_dir, '
                'recover_tablespaces); nothing was copied',
                code='NOT_ENOUGH_SPACE',
                needed_bytes=need,
                free_bytes=free,
            )
    warnings = []
    live_mount = filesystems.get(original_pgdata, (None, 0))[0]
    if not in_place and live_mount in per_mount:
        warnings.append(
            'the copy goes to the filesystem %s, where %s also lives on that host: if the copy fills it, '
            'a server running there stops too' % (live_mount, original_pgdata)
        )
    return warnings


def check_staging_space(catalog_root: str, wal_bytes: int) -> None:
    """Refuse WAL copied along (get_wal off) that would leave the catalog's filesystem with less than a tenth
    free while it is staged there: the WAL receiver of every server writes there too."""
    stat = os.statvfs(catalog_root)
    free, reserve = stat.f_bavail * stat.f_frsize, stat.f_blocks * stat.f_frsize // 10
    if wal_bytes > free - reserve:
        raise RecoveryError(
            'staging %d MiB of WAL on the backup server (%s) would leave its filesystem less than a tenth free '
            '(%d MiB free): the WAL archive of every server writes there' % (wal_bytes >> 20, catalog_root, free >> 20),
            'Free space on the backup server, or recover with get_wal (WAL fetched as recovery needs it); '
            'nothing was copied',
            code='NOT_ENOUGH_SPACE',
            needed_bytes=wal_bytes,
            free_bytes=free,
        )


def standby_conninfo(params: Mapping[str, Any], kind: Optional[str]) -> Optional[Dict[str, Any]]:
    """For a standby: {primary (its name), conninfo} of the member that is the primary now; None otherwise."""
    if not params.get('standby'):
        return None
    if kind is not None:
        raise RecoveryError(
            'a standby follows its primary to the end of its WAL: a recovery target (%s) does not go with standby'
            % kind,
            'Recover as a standby without a target, or recover to the target without standby',
            code='INVALID_TARGET',
        )
    primary = cluster.find_primary(params) if params.get('members') else None
    if primary is None:
        raise RecoveryError(
            'no member of %s is the primary now (or none was given: members): a standby needs one to stream from'
            % params['server'],
            'Start or promote the primary first, and give the members of the cluster; nothing was copied',
            code='NO_PRIMARY',
        )
    items = [
        ('host', primary['pg_host']),
        ('port', primary['pg_port']),
        ('user', params['standby_user']),
        ('application_name', params.get('standby_name') or params.get('destination_host') or 'standby'),
    ]
    if params.get('standby_passfile'):
        items.append(('passfile', params['standby_passfile']))
    return dict(primary=primary['name'], conninfo=' '.join('%s=%s' % (k, stream_backup.quoted(v)) for k, v in items))


# -- the configuration of the recovered copy ---------------------------------------------------------


def pg_conf_value(value: Any) -> str:
    """A value for postgresql.conf, single-quoted."""
    text = str(value)
    if '\n' in text or '\r' in text:
        raise RecoveryError('a setting value contains a line break: %r' % text, code='INVALID_ARGUMENT')
    return "'%s'" % text.replace('\\', '\\\\').replace("'", "''")


_SETTING_RE = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(=|\s|'|$)")


def neutralised_config(text: str, keep: Container[str] = ()) -> str:
    """postgresql.conf text with the settings that point at the original cluster commented out."""
    lines = []
    for line in text.split('\n'):  # PostgreSQL ends a line at \n only
        match = _SETTING_RE.match(line)
        if match and match.group(1).lower() in SETTINGS_POINTING_AT_THE_ORIGINAL and match.group(1).lower() not in keep:
            line = '#barman.postgresql (recovered copy): ' + line
        lines.append(line)
    text = '\n'.join(lines)
    return text if text.endswith('\n') else text + '\n'


def releases_hold_at_end(params: Mapping[str, Any], standby: Optional[Mapping[str, Any]]) -> bool:
    """Whether the copy releases the recovery's hold itself when its recovery ends: it fetches its WAL (get_wal) and
    needs none after; not a standby, whose hold recover.yml releases once it streams and whose failover must not
    wait on the backup server."""
    return bool(params['get_wal'] and not standby)


def recovery_settings(
    params: Mapping[str, Any],
    backup_id: str,
    kind: Optional[str],
    value: Any,
    standby: Optional[Mapping[str, Any]] = None,
    hold: Optional[str] = None,
) -> str:
    """The lines appended to postgresql.auto.conf of the recovered copy (later lines win). A standby streams from
    ``standby['conninfo']`` once the archive is replayed, and follows the primary's timeline. With get_wal, the
    recovery's ``hold`` is released by the copy itself when its recovery ends (releases_hold_at_end)."""
    if params['get_wal']:
        if not params.get('wal_sender'):
            raise RecoveryError(
                'get_wal needs wal_sender, the WAL sender command on the destination',
                'Give wal_sender, or set get_wal to false to copy the WAL along; nothing was copied',
                code='INVALID_ARGUMENT',
            )
        restore_command = ssh.shell_join(params['wal_sender'] + ['get', '%f', '%p'])
    else:
        restore_command = 'cp barman_wal/%f %p'
    settings = [('restore_command', restore_command)]
    if params['get_wal']:  # the get's look-ahead spool (barman_wal_spool/ of this copy) goes when recovery ends
        release = ['--release-hold', hold] if hold and releases_hold_at_end(params, standby) else []
        settings.append(('recovery_end_command', ssh.shell_join(params['wal_sender'] + ['end-recovery'] + release)))
    if kind == 'target_time':
        settings.append(('recovery_target_time', value.isoformat(' ')))
    elif kind == 'target_lsn':
        settings.append(('recovery_target_lsn', wal.format_lsn(value)))
    elif kind == 'target_xid':
        settings.append(('recovery_target_xid', str(value)))
    elif kind == 'target_name':
        settings.append(('recovery_target_name', value))
    elif kind == 'target_immediate':
        settings.append(('recovery_target', 'immediate'))
    if kind is not None:
        settings.append(('recovery_target_action', params['target_action']))
        if kind in ('target_time', 'target_lsn', 'target_xid'):
            settings.append(('recovery_target_inclusive', 'on' if params['target_inclusive'] else 'off'))
    # immediate means "the backup's own timeline" (pgBackRest does the same since PG 12 defaults to latest).
    timeline = 'current' if kind == 'target_immediate' and params['target_tli'] == 'latest' else params['target_tli']
    if standby:
        timeline = 'latest'
        settings.append(('primary_conninfo', standby['conninfo']))
        if params.get('primary_slot_name'):
            settings.append(('primary_slot_name', params['primary_slot_name']))
    settings.append(('recovery_target_timeline', timeline))
    if not params['archive']:
        settings.append(('archive_mode', 'off'))  # a copy never archives into the original's catalog
        # Nor does it apply the original's subscriptions: their workers would consume its publishers' slots.
        settings.append(('max_logical_replication_workers', '0'))
    if params.get('port'):
        settings.append(('port', str(params['port'])))
    if params.get('listen_addresses') is not None:  # '' is an answer: no TCP address at all
        settings.append(('listen_addresses', params['listen_addresses']))
    settings += sorted((params.get('settings') or {}).items())
    stamp = time.strftime('%Y-%m-%d %H:%M:%S %z')
    lines = ['', '# Recovery of backup %s by barman.postgresql, %s' % (backup_id, stamp)]
    lines += ['%s = %s' % (name, pg_conf_value(setting)) for name, setting in settings]
    return '\n'.join(lines) + '\n'


def configuration_files(
    data: str,
    params: Mapping[str, Any],
    backup_id: str,
    locations: Mapping[int, Tuple[str, str]],
    kind: Optional[str],
    value: Any,
    standby: Optional[Mapping[str, Any]] = None,
    hold: Optional[str] = None,
) -> Dict[str, str]:
    """{name: text} of the files written into the copy after its data: the neutralised configuration,
    the recovery settings, tablespace_map and recovery.signal (standby.signal for a standby)."""

    def read(name):
        path = os.path.join(data, name)
        if not os.path.exists(path):
            return None
        with open(path, 'r', encoding='utf-8', errors='surrogateescape') as handle:
            return handle.read()

    # A copy that replaces the original keeps archiving where the original did.
    keep = ('archive_command', 'archive_library') if params['archive'] else ()
    files = {}
    conf = read('postgresql.conf')
    if conf is not None:
        files['postgresql.conf'] = neutralised_config(conf, keep)
    files['postgresql.auto.conf'] = neutralised_config(read('postgresql.auto.conf') or '', keep) + recovery_settings(
        params, backup_id, kind, value, standby, hold
    )
    if locations:
        files['tablespace_map'] = ''.join('%d %s\n' % (oid, loc) for oid, (_name, loc) in sorted(locations.items()))
    files['standby.signal' if standby else 'recovery.signal'] = ''
    return files


def _write_files(staging, files):
    for name, text in files.items():
        path = os.path.join(staging, name)
        with open(path, 'w', encoding='utf-8', errors='surrogateescape') as handle:
            handle.write(text)
        os.chmod(path, 0o600)
    # pg_wal is never copied from a backup (an old one may hold a link to the original's WAL directory).
    pgdata_layout.make_empty_pg_wal(staging)


# -- the recovery --------------------------------------------------------------------------------------


def plan_recovery(
    params: Mapping[str, Any],
    layout: catalog.ServerLayout,
    wal_archive: WalArchive,
    control_path: Optional[str],
    check_mode: bool = False,
) -> Tuple[Dict[str, Any], Destination, Dict[str, Any]]:
    """Everything decided and checked before a byte moves, as one value: the target, the backup, the
    WAL it needs, the destination (empty, not running, enough free space) and the files to write.
    Check mode returns it; a real run carries it out. Returns (plan, destination, private parts)."""
    kind, value = the_target(params)
    primary_conninfo = standby_conninfo(params, kind)
    infos = infofile.backup_infos(layout)
    backup_id, info = choose_backup(infos, kind, value, params.get('backup_id'))
    backups = chain.ancestry(infos, backup_id)  # an incremental needs its whole chain, refused now if broken
    continuity, needed_until = wal_needed_for_target(wal_archive, info, kind, value)
    directory = destination_directory(params, info)
    locations = tablespace_locations(info, params, directory)
    hold = recovery_hold.new_token(backup_id)  # taken once the plan holds (the copy's settings name it)
    files = configuration_files(
        layout.backup_data_dir(backup_id), params, backup_id, locations, kind, value, primary_conninfo, hold
    )
    warnings = []
    recorded = pgdata_layout.read_layout(layout, backup_id)
    if recorded and recorded['pg_wal']['kind'] == pgdata_layout.SYMLINK:
        warnings.append(
            "the original's pg_wal was a link to %s; the copy's pg_wal is a directory inside its PGDATA (to put "
            'it back on its own disk, stop the copy, move pg_wal there and link it)' % recorded['pg_wal']['target']
        )
    segment_size = info['xlog_segment_size']
    wal_bytes = (needed_until - wal.segment_number(info['begin_wal'], segment_size) + 1) * segment_size
    if params['get_wal']:
        wal_bytes = min(wal_bytes, FETCHED_WAL_ALLOWANCE)
    else:
        check_staging_space(layout.root, wal_bytes)
    destination = Destination(params, directory, control_path)
    try:
        # In place, the playbook moves the old PGDATA aside after this plan (check mode), on that filesystem.
        if not (params['in_place'] and check_mode):
            check_destination(destination, params, locations)
        needs = space_needed(layout, backup_id, locations, directory, wal_bytes)
        if len(backups) > 1:
            # pg_combinebackup must be there before an in-place recovery stops the server (its plan runs first).
            chain.Combined(layout, infos, backups, params.get('pg_bindir')).tool()
            combined = chain.combined_size(layout, infos, backups)
            needs[directory] += combined - disk_usage(layout.backup_data_dir(backup_id))[0]
            if not chain.links_files(info):
                chain.check_combine_space(layout, combined)
        pgdata = os.path.normpath(info['pgdata'])
        filesystems = destination.filesystems(sorted(set(needs) | set([pgdata])))
        warnings += check_free_space(filesystems, needs, pgdata, params['in_place'])
    except BaseException:
        destination.close()
        raise
    plan = dict(
        backup_id=backup_id,
        pgdata=info['pgdata'],
        pg_major=int(info['version']) // 10000,
        backup_tablespaces=dict((t.name, t.location) for t in info['tablespaces'] or []),
        backup_end_time=str(info['end_time']),
        backup_end_lsn=info['end_xlog'],
        target=None if kind is None else {kind: str(value) if kind != 'target_lsn' else wal.format_lsn(value)},
        destination=directory,
        tablespaces=dict((name, location) for name, location in locations.values()),
        newest_wal=continuity['last'],
        minimum_end_lsn=wal.format_lsn(
            minimum_end_lsn(info, kind, value, continuity['last'], params['target_inclusive'])
        ),
        space_needed=sum(needs.values()),
        warnings=warnings,
        chain=backups,
        combine=combine_plan(backups, info),
        standby_of=primary_conninfo and primary_conninfo['primary'],
    )
    parts = dict(
        info=info,
        infos=infos,
        chain=backups,
        kind=kind,
        value=value,
        locations=locations,
        files=files,
        needed_until=needed_until,
        hold=hold,
        released_at_end=releases_hold_at_end(params, primary_conninfo),
    )
    return plan, destination, parts


def recover(
    params: Mapping[str, Any], check_mode: bool = False, extra_files: Optional[Mapping[str, str]] = None
) -> Dict[str, Any]:
    """Plan the recovery and, unless ``check_mode``, carry it out; ``extra_files`` ({name: text}) go into
    the copy's PGDATA with the recovery settings."""
    layout = catalog.ServerLayout(params['barman_home'], params['server'])
    wal_archive = WalArchive(params['barman_home'], params['server'])
    # A connection of its own: a backup of this server running meanwhile must not share (and end) it.
    with ssh.operation_control_path(layout.root) as control_path:
        plan, destination, parts = plan_recovery(params, layout, wal_archive, control_path, check_mode)
        parts['files'].update(extra_files or {})
        try:
            if check_mode:
                return dict(plan, changed=False)
            if params['delta']:
                destination.unlink_pg_wal_link()
            started = time.time()
            plan['hold'] = recovery_hold.take(
                layout,
                plan['backup_id'],
                parts['info']['begin_wal'],
                '%s:%s' % (params.get('destination_host') or 'local', destination.directory),
                params['hold_hours'] * 3600,
                token=parts['hold'],
            )
            plan['hold_released_at_end'] = parts['released_at_end']
            try:
                # A retention that ran between the plan and the hold may have removed WAL: look again.
                wal_needed_for_target(wal_archive, parts['info'], parts['kind'], parts['value'])
                _copy(params, layout, wal_archive, destination, plan['backup_id'], parts)
            except BaseException:
                recovery_hold.release(layout, plan['hold'])
                raise
            return dict(plan, changed=True, duration=round(time.time() - started, 3))
        finally:
            destination.close()


def combine_plan(backups: Sequence[str], info: Mapping[str, Any]) -> Optional[str]:
    """Where and how an incremental's chain becomes a data directory; None for a backup restored as it is."""
    if len(backups) < 2:
        return None
    if chain.links_files(info):
        # Hard links into the chain: no copy and no space on the backup server, and only the combined data goes
        # over the network (combining at the destination would send every backup of the chain).
        return 'on the backup server, pg_combinebackup --link of %d backups, then one copy' % len(backups)
    return 'on the backup server, pg_combinebackup of %d backups into a copy, then one copy' % len(backups)


def _copy(params, layout, wal_archive, destination, backup_id, parts):
    backups = parts['chain']  # the plan's, checked before anything moved
    if len(backups) == 1:
        _copy_from(
            params,
            layout,
            wal_archive,
            destination,
            parts,
            layout.backup_data_dir(backup_id),
            lambda oid: layout.backup_tablespace_dir(backup_id, oid),
        )
        return
    with chain.Combined(layout, parts['infos'], backups, params.get('pg_bindir')) as combined:
        _copy_from(params, layout, wal_archive, destination, parts, combined.data, combined.tablespace_dir)


def _copy_from(params, layout, wal_archive, destination, parts, data, tablespace_dir):
    delta = dict(delete=True, checksum=True) if params['delta'] else {}
    # The pg_tblspc links of the copy point at the original locations: tablespace_map remakes them.
    excludes = ('/pg_tblspc/*', '/recovery.signal', '/standby.signal', '/barman_wal/', '/pg_wal')
    # --mkpath: the parents of a new PGDATA or tablespace directory may not exist yet.
    destination.rsync(
        data + '/', destination.directory + '/', 'the data directory', excludes=excludes, extra=['--mkpath'], **delta
    )
    for oid, (name, location) in sorted(parts['locations'].items()):
        destination.rsync(
            tablespace_dir(oid) + '/',
            location + '/',
            'tablespace %s' % name,
            extra=['--mkpath'],
            **delta,
        )
    staging = tempfile.mkdtemp(prefix='.recover-', dir=layout.root)
    try:
        _write_files(staging, parts['files'])
        if not params['get_wal']:
            _stage_wals(staging, wal_archive, parts['info'], parts['needed_until'])
        destination.rsync(staging + '/', destination.directory + '/', 'the recovery settings')
        if params['delta']:  # WAL left in an existing pg_wal may be of another history: never replay it
            destination.rsync(staging + '/pg_wal/', destination.directory + '/pg_wal/', 'an empty pg_wal', delete=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_wals(staging, wal_archive, info, needed_until):
    """The WAL files recovery needs, decompressed into barman_wal/ of the copy (get_wal off): from the
    backup's first segment to the last the target needs, and every history file."""
    target_dir = os.path.join(staging, 'barman_wal')
    os.mkdir(target_dir, 0o700)
    segment_size = info['xlog_segment_size']
    first = wal.segment_number(info['begin_wal'], segment_size)
    for name in wal_archive.archived_names():
        parsed = wal.parse_wal_name(name)
        segno = wal.segment_number(name, segment_size) if parsed.kind == 'segment' else None
        if parsed.kind == 'history' or (segno is not None and first <= segno <= needed_until):
            with open(os.path.join(target_dir, name), 'wb') as handle:
                copy_decompressed(wal_archive.locate(name), handle)
