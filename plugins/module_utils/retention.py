# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention policies: which backups a policy keeps, and which WAL files the kept backups need.

Pure logic over backup.info dicts and WAL names; server_catalog.py applies the answers to disk.
The classification follows Barman's, so that both tools agree on what a policy keeps.
"""

import collections
import datetime
import re
from typing import Any, Collection, Dict, Iterable, List, Mapping, Optional

from ansible_collections.barman.postgresql.plugins.module_utils import chain, infofile, wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

# Retention statuses, with Barman's names.
VALID = 'VALID'
OBSOLETE = 'OBSOLETE'
POTENTIALLY_OBSOLETE = 'POTENTIALLY_OBSOLETE'
KEEP_FULL = 'KEEP_FULL'
KEEP_STANDALONE = 'KEEP_STANDALONE'
NONE = 'NONE'
# Ours, not Barman's: a backup the policy makes obsolete while a recovery holds it (recovery_hold.py).
HELD = 'HELD'
# Ours too: the newest backup whose verification PASSED, which the policy makes obsolete while the newer
# ones are unverified or FAILED; it stays until a newer one passes (verifyfile.py).
LAST_VERIFIED = 'LAST_VERIFIED'
# Ours too: the parent (or an older ancestor) of an incremental backup that stays (kept, held, the last verified)
# while the policy makes its chain obsolete: the incremental cannot be restored without it. Its WAL stays too, so
# that the archive stays continuous from the oldest backup on.
NEEDED_BY_CHILD = 'NEEDED_BY_CHILD'
# Ours too: a backup the policy makes obsolete on a primary backup server that a mirror has not copied yet
# (barman_mirror_wait): it stays, with its WAL, until every mirror has it.
WAITING_FOR_MIRROR = 'WAITING_FOR_MIRROR'

KEEP_TARGETS = ('full', 'standalone')
POLICY_HINT = (
    'Write REDUNDANCY n (keep the n newest backups) or RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS '
    '(keep what recovers to any time in that window), for example "RECOVERY WINDOW OF 7 DAYS"'
)
PERIOD_HINT = 'Write a number and a unit, for example "26 HOURS", "1 DAYS" or "2 WEEKS"'

_UNIT_DAYS = {'DAY': 1, 'WEEK': 7, 'MONTH': 31}
_PERIOD_UNITS = {'MINUTE': 60, 'HOUR': 3600, 'DAY': 86400, 'WEEK': 7 * 86400, 'MONTH': 31 * 86400}
_REDUNDANCY_RE = re.compile(r'\s*REDUNDANCY\s+([0-9]+)\s*\Z', re.IGNORECASE)
_WINDOW_RE = re.compile(r'\s*RECOVERY\s+WINDOW\s+OF\s+([0-9]+)\s+(DAY|WEEK|MONTH)S?\s*\Z', re.IGNORECASE)
_PERIOD_RE = re.compile(r'\s*([0-9]+)\s*(MINUTE|HOUR|DAY|WEEK|MONTH)S?\s*\Z', re.IGNORECASE)

Policy = collections.namedtuple('Policy', 'kind value unit')


class InvalidPolicy(BarmanError, ValueError):
    """A retention policy, minimum redundancy or age that does not parse."""

    code = 'INVALID_POLICY'


def parse_policy(text: str) -> Policy:
    """Policy('redundancy', n, None) or Policy('window', n, 'DAYS'|'WEEKS'|'MONTHS') from Barman's syntax."""
    if not isinstance(text, str):
        raise InvalidPolicy('The retention policy %r is not text' % (text,), POLICY_HINT, policy=text)
    match = _REDUNDANCY_RE.match(text)
    if match:
        value = int(match.group(1))
        if value < 1:
            raise InvalidPolicy(
                'The retention policy %r keeps no backup at all' % text,
                'Use REDUNDANCY 1 or more; to keep everything, set no policy',
                policy=text,
            )
        return Policy('redundancy', value, None)
    match = _WINDOW_RE.match(text)
    if match:
        value = int(match.group(1))
        if value < 1:
            raise InvalidPolicy('The recovery window of %r is empty' % text, POLICY_HINT, policy=text)
        return Policy('window', value, match.group(2).upper() + 'S')
    raise InvalidPolicy('The retention policy %r is not one Barman understands' % text, POLICY_HINT, policy=text)


def format_policy(policy: Policy) -> str:
    if policy.kind == 'redundancy':
        return 'REDUNDANCY %d' % policy.value
    return 'RECOVERY WINDOW OF %d %s' % (policy.value, policy.unit)


def parse_period(text: str) -> int:
    """Seconds in a period such as '26 HOURS' or '1 WEEKS' (Barman's last_backup_maximum_age syntax)."""
    match = _PERIOD_RE.match(text) if isinstance(text, str) else None
    if not match:
        raise InvalidPolicy('The period %r does not parse' % (text,), PERIOD_HINT, period=text)
    return int(match.group(1)) * _PERIOD_UNITS[match.group(2).upper()]


def validate_minimum_redundancy(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidPolicy(
            'minimum_redundancy %r is not a count of backups' % (value,),
            'Give 0 or more (1, the default, never lets the last backup go)',
            minimum_redundancy=value,
        )
    return value


def point_of_recoverability(policy: Policy, now: datetime.datetime) -> datetime.datetime:
    """The oldest time a window policy promises to recover to."""
    return now - datetime.timedelta(days=policy.value * _UNIT_DAYS[policy.unit[:-1]])


def classify(
    infos: Mapping[str, Mapping[str, Any]],
    keeps: Mapping[str, str],
    policy: Policy,
    minimum_redundancy: int,
    now: datetime.datetime,
    held: Iterable[str] = (),
    last_verified: Optional[str] = None,
    awaiting_mirror: Collection[str] = (),
) -> Dict[str, str]:
    """Barman's retention status of every backup: {backup_id: status}.

    ``infos`` maps backup ids to backup.info dicts, ``keeps`` backup ids to 'full'/'standalone'.
    Only DONE backups are classified; others are NONE (see obsolete_failures for FAILED ones).
    Kept backups never become OBSOLETE. Whatever the policy says, the ``minimum_redundancy``
    newest DONE backups stay, and so does the newest one. A backup in ``held`` (a recovery is using it)
    that would be OBSOLETE is HELD instead; it does not count towards the policy, so that the hold
    changes nothing else. So is ``last_verified`` (the newest DONE backup whose verification PASSED, so
    every newer one is unverified or FAILED): LAST_VERIFIED instead of OBSOLETE, the last proven one stays.
    A backup in ``awaiting_mirror`` (a mirror lacks it) is WAITING_FOR_MIRROR instead of OBSOLETE.
    Block-level incrementals (Barman's rule): the policy counts full backups only, and an incremental takes its
    full backup's status; every ancestor of a backup that stays stays too (NEEDED_BY_CHILD instead of OBSOLETE).
    """
    report = {}
    by_policy = {}  # the policy's own answer for each full backup, whatever its keep
    valid = 0
    outside_window = False
    horizon = point_of_recoverability(policy, now) if policy.kind == 'window' else None
    # As Barman does: the policy counts full backups only; an incremental takes its full backup's status.
    for backup_id in reversed(infofile.ordered_backup_ids(infos)):
        info = infos[backup_id]
        if chain.is_incremental(info):
            continue
        if info['status'] != infofile.DONE:
            report[backup_id] = NONE
            continue
        kept = {'full': KEEP_FULL, 'standalone': KEEP_STANDALONE}.get(keeps.get(backup_id))
        if policy.kind == 'redundancy':
            by_policy[backup_id] = VALID if valid < max(policy.value, minimum_redundancy, 1) else OBSOLETE
            valid += 1
        elif not outside_window:
            by_policy[backup_id] = VALID
            valid += 1
            # The newest backup that ends before the horizon is the one that recovers to it.
            outside_window = info['end_time'] is not None and info['end_time'] < horizon
        elif valid < max(minimum_redundancy, 1):
            by_policy[backup_id] = POTENTIALLY_OBSOLETE
            valid += 1
        else:
            by_policy[backup_id] = OBSOLETE
        report[backup_id] = kept or by_policy[backup_id]
    for backup_id, info in infos.items():
        if chain.is_incremental(info):
            report[backup_id] = _incremental_status(infos, keeps, by_policy, backup_id)
    for backup_id in held:
        if report.get(backup_id) == OBSOLETE:
            report[backup_id] = HELD
    if report.get(last_verified) == OBSOLETE:
        report[last_verified] = LAST_VERIFIED
    for backup_id in awaiting_mirror:
        if report.get(backup_id) == OBSOLETE:
            report[backup_id] = WAITING_FOR_MIRROR
    for backup_id, info in infos.items():
        if report.get(backup_id) != OBSOLETE and (report.get(backup_id) != NONE or _in_progress(info)):
            _protect_ancestors(infos, report, backup_id)
    return report


def _incremental_status(infos, keeps, by_policy, backup_id):
    """An incremental's status: its own keep, else VALID under a full backup kept in full, else what the policy
    says of its full backup (NONE when not DONE or when its chain is broken)."""
    if infos[backup_id]['status'] != infofile.DONE:
        return NONE
    kept = {'full': KEEP_FULL, 'standalone': KEEP_STANDALONE}.get(keeps.get(backup_id))
    if kept:
        return kept
    try:
        root = chain.ancestry(infos, backup_id)[0]
    except chain.ChainError:
        return NONE
    return VALID if keeps.get(root) == 'full' else by_policy.get(root, NONE)


def _in_progress(info):
    return info['status'] in (infofile.STARTED, infofile.WAITING_FOR_WALS)


def _protect_ancestors(infos, report, backup_id):
    """Every ancestor of a backup that stays stays too (NEEDED_BY_CHILD instead of OBSOLETE)."""
    parent, seen = infos[backup_id].get('parent_backup_id'), set()
    while parent in infos and parent not in seen:
        seen.add(parent)
        if report.get(parent) == OBSOLETE:
            report[parent] = NEEDED_BY_CHILD
        parent = infos[parent].get('parent_backup_id')


def obsolete_failures(infos: Mapping[str, Mapping[str, Any]], statuses: Mapping[str, str]) -> List[str]:
    """FAILED backups older than the oldest backup the policy keeps: outside what the catalog keeps,
    they go with it. Newer ones stay, with their error, until then."""
    kept = [b for b, status in statuses.items() if status not in (OBSOLETE, NONE)]
    if not kept:
        return []
    order = infofile.ordered_backup_ids(infos)
    first = min(order.index(b) for b in kept)
    return [b for b in order[:first] if infos[b]['status'] == infofile.FAILED]


def _segno(name, segment_size):
    return wal.segment_number(name[:24], segment_size)


def removable_wals(
    names: Iterable[str],
    infos: Mapping[str, Mapping[str, Any]],
    statuses: Mapping[str, str],
    segment_size: int,
    needed_from: Iterable[str] = (),
) -> List[str]:
    """The archived WAL names that no backup left after retention needs, in the order of ``names``.

    A full backup (VALID, POTENTIALLY_OBSOLETE, KEEP_FULL, HELD, LAST_VERIFIED, any backup still in
    progress, and always the newest DONE one) needs every segment from its begin_wal on, on any timeline
    (the last proven backup stays a start for point-in-time recovery; health warns when no newer one passes
    for verify_max_age); a KEEP_STANDALONE backup needs only begin_wal..end_wal.
    Every segment from each WAL name in ``needed_from`` on is needed too (a running recovery fetches
    them, even of a backup gone from ``infos``). Timeline history files are never removed. Without a
    DONE backup left, nothing is removed: the WAL is then all there is.
    """
    done = infofile.done_backup_ids(infos)
    if not done:
        return []
    full_from = []
    ranges = []
    for backup_id, info in infos.items():
        status = statuses.get(backup_id, NONE)
        in_progress = _in_progress(info)
        if status in (OBSOLETE, NONE) and not in_progress:
            continue
        if not info.get('begin_wal'):
            return []  # a backup that does not say where it starts: keep everything
        begin = _segno(info['begin_wal'], segment_size)
        if status == KEEP_STANDALONE and backup_id != done[-1] and info.get('end_wal'):
            ranges.append((begin, _segno(info['end_wal'], segment_size)))
        else:
            full_from.append(begin)
    full_from += [_segno(name, segment_size) for name in needed_from]
    first_needed = min(full_from) if full_from else None
    removable = []
    for name in names:
        if wal.parse_wal_name(name).kind == 'history':
            continue
        segno = _segno(name, segment_size)
        if first_needed is not None and segno >= first_needed:
            continue
        if any(low <= segno <= high for low, high in ranges):
            continue
        removable.append(name)
    return removable
