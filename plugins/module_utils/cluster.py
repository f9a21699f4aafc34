# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Replication clusters: the members of one server (inventory hosts that share barman_server_name and so one
catalog), which of them is the primary now, and which one a backup is taken from.

Nothing about roles is written in the inventory: each run asks every member (``pg_is_in_recovery()``), so that
after a failover the next run backs up the new primary, into the same catalog, with no change.
"""

from typing import Any, Dict, List, Mapping, Optional

from ansible_collections.barman.postgresql.plugins.module_utils import postgres, wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

PRIMARY, STANDBY, PREFER_STANDBY = 'primary', 'standby', 'prefer-standby'
BACKUP_FROM = (PRIMARY, STANDBY, PREFER_STANDBY)
MIB = 1024 * 1024


class ClusterError(BarmanError):
    """No member of the cluster can be backed up as asked; nothing was written."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


def members_spec() -> Dict[str, Any]:
    """The ``members`` option: each member as the backup server reaches it."""
    return dict(
        type='list',
        elements='dict',
        options=dict(
            name=dict(type='str', required=True),
            pg_host=dict(type='str', required=True),
            pg_port=dict(type='int', default=5432),
            ssh_host=dict(type='str'),
        ),
    )


def members_of(params: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """The members given, else the one server of pg_host/pg_port."""
    if params.get('members'):
        return [dict(m, ssh_host=m.get('ssh_host') or m['pg_host']) for m in params['members']]
    host = params['pg_host']
    return [dict(name=host, pg_host=host, pg_port=params['pg_port'], ssh_host=params.get('ssh_host') or host)]


def probe(params: Mapping[str, Any], member: Mapping[str, Any]) -> Dict[str, Any]:
    """What a member is now: up or not (and why), in recovery, its system identifier, and its WAL position
    (the primary's current LSN, a standby's last replayed LSN)."""
    found = dict(member, up=False, problem=None)
    try:
        conn = postgres.connect(
            member['pg_host'],
            member['pg_port'],
            params['pg_user'],
            params.get('pg_password'),
            params['pg_database'],
            params['pg_connect_timeout'],
        )
    except postgres.PostgresError as error:
        text = error.message
        if 'hot standby mode is disabled' in text.lower():
            text = 'hot_standby is off: nothing can connect to it, so nothing can be backed up from it'
        found['problem'] = text
        return found
    try:
        row = postgres.query_one(
            conn,
            'SELECT pg_is_in_recovery() AS in_recovery, '
            '(SELECT system_identifier::text FROM pg_control_system()) AS systemid, '
            'CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END::text AS lsn, '
            # The timeline it writes, or (a standby) receives or last replayed a checkpoint of.
            'CASE WHEN pg_is_in_recovery() THEN coalesce((SELECT received_tli FROM pg_stat_wal_receiver), '
            '(SELECT timeline_id FROM pg_control_checkpoint())) '
            "ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS timeline",
        )
    except postgres.PostgresError as error:
        found['problem'] = error.message
        return found
    finally:
        conn.close()
    found.update(
        up=True, in_recovery=row['in_recovery'], systemid=row['systemid'], lsn=row['lsn'], timeline=row['timeline']
    )
    return found


def _describe(member):
    if not member['up']:
        return '%s (%s)' % (member['name'], member['problem'])
    return '%s (%s)' % (member['name'], 'standby' if member['in_recovery'] else 'primary')


def choose(probes: List[Dict[str, Any]], backup_from: str, max_lag_mib: int, server: str) -> Dict[str, Any]:
    """{source, primary, reason, skipped}: the member to back up and the primary (whose WAL switch ends a backup
    taken on a standby). A standby must be up and replay within ``max_lag_mib`` of the primary; of several, the
    one that lags least. Refuses members of different clusters, no primary or two, and (backup_from standby)
    no healthy standby."""
    up = [p for p in probes if p['up']]
    systemids = sorted(set(p['systemid'] for p in up))
    if len(systemids) > 1:
        raise ClusterError(
            'the members of %s are not one cluster: %s'
            % (server, ', '.join('%s has system identifier %s' % (p['name'], p['systemid']) for p in up)),
            'Give each cluster its own barman_server_name in the inventory; nothing was copied',
            code='IDENTITY_MISMATCH',
        )
    primaries = [p for p in up if not p['in_recovery']]
    if len(primaries) != 1:
        raise ClusterError(
            '%s has %s: %s'
            % (
                server,
                'no primary now' if not primaries else '%d primaries' % len(primaries),
                ', '.join(_describe(p) for p in probes),
            ),
            'Start or promote one member (and only one: two primaries are a split brain to fix first); nothing '
            'was copied',
            code='NO_PRIMARY',
        )
    primary = primaries[0]
    skipped = [dict(name=p['name'], why=p['problem']) for p in probes if not p['up']]
    healthy = []
    for standby in (p for p in up if p['in_recovery']):
        # Probed one after the other: under load a standby may have replayed past what the primary wrote when it
        # was asked a moment before, so a negative lag is no lag, not a divergence.
        standby['lag_bytes'] = max(0, wal.parse_lsn(primary['lsn']) - wal.parse_lsn(standby['lsn']))
        # A standby of another history (the old primary restarted without pg_rewind, one still following a dead
        # primary) is not a copy of this primary, whatever its position.
        if standby.get('timeline') != primary.get('timeline'):
            skipped.append(
                dict(
                    name=standby['name'],
                    why='is on timeline %s at %s, the primary on timeline %s at %s: it does not follow the primary'
                    % (standby.get('timeline'), standby['lsn'], primary.get('timeline'), primary['lsn']),
                )
            )
        elif standby['lag_bytes'] > max_lag_mib * MIB:
            skipped.append(
                dict(
                    name=standby['name'],
                    why='replays %d MiB behind the primary, more than '
                    'standby_max_lag (%d MiB)' % (standby['lag_bytes'] // MIB, max_lag_mib),
                )
            )
        else:
            healthy.append(standby)
    why_not = '; '.join('%s: %s' % (s['name'], s['why']) for s in skipped) or 'the cluster has no standby'
    if backup_from == PRIMARY:
        source, reason = primary, 'the primary %s (backup_from primary)' % primary['name']
    elif healthy:
        source = min(healthy, key=lambda s: (s['lag_bytes'], s['name']))
        reason = 'the standby %s, %d bytes of WAL behind the primary %s' % (
            source['name'],
            source['lag_bytes'],
            primary['name'],
        )
    elif backup_from == STANDBY:
        raise ClusterError(
            'no standby of %s can be backed up from: %s' % (server, why_not),
            'Fix the standby (start it, let it catch up), or use backup_from prefer-standby (the primary when no '
            'standby is healthy) or primary; nothing was copied',
            code='NO_HEALTHY_STANDBY',
        )
    else:
        source, reason = primary, 'the primary %s: no standby is healthy (%s)' % (primary['name'], why_not)
    return dict(source=source, primary=primary, reason=reason, skipped=skipped)


def find_primary(params: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The member that is the primary now, or None (none reachable, or not one): for checks that ask it."""
    primaries = [p for p in (probe(params, m) for m in members_of(params)) if p['up'] and not p['in_recovery']]
    return primaries[0] if len(primaries) == 1 else None
