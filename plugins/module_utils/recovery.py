# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery of a backup to a directory of a host, to its end or to a point in time (pg_recover's logic).

Everything that can be refused is refused before anything is copied: the target against the backups
and the archive, the archive's continuity, the destination. Nothing is ever deleted: an existing
PGDATA is refused (or, in place, moved aside by the caller).
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import os
import re
import shutil
import subprocess
import tempfile
import time

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, rsync, ssh, wal
from ansible_collections.barman.postgresql.plugins.module_utils.archive import WalArchive, copy_decompressed
from ansible_collections.barman.postgresql.plugins.module_utils.backup import backup_infos
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

TARGET_KINDS = ('target_time', 'target_xid', 'target_name', 'target_lsn', 'target_immediate')
TARGET_ACTIONS = ('pause', 'promote', 'shutdown')
# Settings of a copied postgresql.conf that point at the original cluster's files: commented out.
SETTINGS_POINTING_AT_THE_ORIGINAL = (
    'data_directory', 'hba_file', 'ident_file', 'external_pid_file', 'include_dir', 'include',
    'include_if_exists', 'archive_command', 'archive_library', 'restore_command', 'primary_conninfo',
    'primary_slot_name', 'stats_temp_directory',
)


class RecoveryError(BarmanError):
    """The recovery was refused or failed; the message says why and what is possible."""


def recovery_argument_spec():
    return dict(
        backup_id=dict(type='str'),
        target_time=dict(type='str'),
        target_xid=dict(type='str'),
        target_name=dict(type='str'),
        target_lsn=dict(type='str'),
        target_immediate=dict(type='bool', default=False),
        target_tli=dict(type='str', default='latest'),
        target_inclusive=dict(type='bool', default=True),
        target_action=dict(type='str', choices=list(TARGET_ACTIONS), default='promote'),
        destination_host=dict(type='str'),
        destination_user=dict(type='str', default='postgres'),
        destination_port=dict(type='int'),
        destination_directory=dict(type='path', required=True),
        tablespace_map=dict(type='dict', default={}),
        delta=dict(type='bool', default=False),
        port=dict(type='int'),
        listen_addresses=dict(type='str'),
        get_wal=dict(type='bool', default=True),
        wal_sender=dict(type='list', elements='str'),
        archive=dict(type='bool', default=False),
    )


# -- the target ----------------------------------------------------------------------------------

_TZ_RE = re.compile(r'(Z|[+-]\d{2}(:?\d{2})?|\s[A-Za-z][A-Za-z_/+-]*)$')


def parse_target_time(text):
    """An aware datetime from 'YYYY-MM-DD HH:MM:SS[.ffffff]+HH[:MM]' (a time zone is required)."""
    text = (text or '').strip()
    value = text.replace('T', ' ', 1)
    if value.endswith('Z'):
        value = value[:-1] + '+00:00'
    if re.search(r'[+-]\d{2}$', value):
        value += ':00'
    try:
        parsed = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise RecoveryError(
            'target_time %r is not a time' % text,
            "Write it as 'YYYY-MM-DD HH:MM:SS+00' (ISO 8601 with a time zone), for example '2026-11-24 03:12:00+00'",
        ) from None
    if parsed.tzinfo is None:
        raise RecoveryError(
            'target_time %r has no time zone: PostgreSQL would read it in the server\\'s time zone' % text,
            "Add the zone, for example '%s+00' for UTC" % text,
        )
    return parsed


def the_target(params):
    """(kind, value) of the one target given, or (None, None) for the end of the archive."""
    given = [k for k in TARGET_KINDS if params.get(k) not in (None, False, '')]
    if len(given) > 1:
        raise RecoveryError(
            'several recovery targets given: %s' % ', '.join(given),
            'PostgreSQL takes one: keep one of target_time, target_xid, target_name, target_lsn, target_immediate',
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
            raise RecoveryError(str(error), 'Write an LSN as PostgreSQL prints it, for example 0/5000028') from None
    if kind == 'target_xid' and not str(value).isdigit():
        raise RecoveryError('target_xid %r is not a transaction id' % value, 'Use a number, as txid_current() returns')
    return kind, value


def choose_backup(infos, kind, value, backup_id=None):
    """The backup to restore: the given one, or the newest DONE one that ends before the target."""
    done = [(i, info) for i, info in infos.items() if info['status'] == catalog.DONE]
    if not done:
        raise RecoveryError('there is no DONE backup of this server', 'Take one first (playbooks/backup.yml)')
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
                % (_shown(kind, value), done[0][0], oldest['end_time'], oldest['end_xlog']),
                'A backup can only be recovered to a point after its end: choose a later target',
            )
        return candidates[-1]
    if backup_id in ('oldest', 'first'):
        return done[0]
    if backup_id not in infos:
        raise RecoveryError(
            'there is no backup %s of this server' % backup_id,
            'Known backups: %s' % ', '.join('%s (%s)' % (i, info['status']) for i, info in infos.items()),
        )
    info = infos[backup_id]
    if info['status'] != catalog.DONE:
        raise RecoveryError(
            'backup %s is %s, not DONE: it cannot be recovered' % (backup_id, info['status']),
            'Choose a DONE backup, or none to take the newest that fits the target',
        )
    if kind == 'target_time' and value <= info['end_time']:
        raise RecoveryError(
            'the target %s is before the end of backup %s (%s)' % (_shown(kind, value), backup_id, info['end_time']),
            'Choose a later target or an older backup',
        )
    if kind == 'target_lsn' and value < wal.parse_lsn(info['end_xlog']):
        raise RecoveryError(
            'the target LSN %s is before the end of backup %s (LSN %s)'
            % (wal.format_lsn(value), backup_id, info['end_xlog']),
            'Choose a later target or an older backup',
        )
    return backup_id, info


def _shown(kind, value):
    if kind == 'target_lsn':
        return 'LSN %s' % wal.format_lsn(value)
    return '%s %s' % (kind.replace('target_', ''), value)


def check_archive(wal_archive, info, kind, value):
    """The WAL from the backup's begin_wal up to the target (or the newest) is all there."""
    segment_size = info['xlog_segment_size']
    continuity = wal_archive.continuity(segment_size, info['begin_wal'])
    newest = continuity['last']
    if newest is None or wal.segment_number(newest, segment_size) < wal.segment_number(info['end_wal'], segment_size):
        raise RecoveryError(
            'the archive does not reach the end of the backup (%s); it ends at %s' % (info['end_wal'], newest),
            'Check archiving (pg_wal_archive check): the backup is not usable until its WAL is archived',
        )
    needed_until = wal.segment_number(newest, segment_size)
    if kind == 'target_lsn':
        needed_until = wal.segment_number(wal.lsn_segment_name(value, 1, segment_size), segment_size)
        newest_end = wal.segment_start_lsn(newest, segment_size) + segment_size
        if value > newest_end:
            raise RecoveryError(
                'the target LSN %s is past the newest archived WAL (%s ends at LSN %s)'
                % (wal.format_lsn(value), newest, wal.format_lsn(newest_end)),
                'Recover to an earlier LSN, or archive the current WAL first (pg_wal_archive check switches it)',
            )
    if kind == 'target_time':
        newest_time = _archived_time(wal_archive, newest)
        if newest_time is not None and value.timestamp() > newest_time:
            raise RecoveryError(
                'the target time %s is past the newest archived WAL (%s, archived at %s)'
                % (value, newest, datetime.datetime.fromtimestamp(newest_time, datetime.timezone.utc)),
                'Recover to an earlier time, or archive the current WAL first (pg_wal_archive check switches it)',
            )
    gaps = [r for r in continuity['missing'] if wal.segment_number(r[0], segment_size) <= needed_until]
    if gaps:
        raise RecoveryError(
            'WAL is missing from the archive between the backup and the target: %s'
            % ', '.join('%s..%s' % tuple(r) for r in gaps),
            'Recovery would stop at the gap: choose a target before %s, or restore the missing files' % gaps[0][0],
        )
    return continuity


def _archived_time(wal_archive, name):
    path = wal_archive.locate(name)
    return os.stat(path).st_mtime if path else None
