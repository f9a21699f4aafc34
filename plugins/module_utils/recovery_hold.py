# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A running recovery's hold on a server's catalog.

pg_recover returns long before the copy has replayed its WAL: restore_command keeps fetching from the
archive until the target. While a hold exists, retention keeps the held backup and every WAL file from
its begin_wal on, and delete refuses the backup.

A hold is one small JSON file, written atomically, in a directory of our own inside the server's
directory, ``<barman_home>/<server>/recovery-holds/<token>.json``: it moves and goes with the server's
catalog, and Barman, which only reads the directories it knows (meta, base, wals, incoming, errors,
streaming), ignores it. A hold expires (``expires``): a stale one protects nothing and is reported.

Holds are taken under the server's ``recovery-hold`` lock, which retention and delete hold while they
plan and remove (inside the backup lock): a retention run either ends before the hold exists, or sees
it. The hold does not take the backup lock itself, so that a recovery never waits for a backup.
"""

import datetime
import json
import os
import re
import secrets
from typing import Any, Dict, List, Mapping, Optional, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, lockfile, wal
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

HOLDS_DIR = 'recovery-holds'
LOCK = 'recovery-hold'
DEFAULT_TTL_SECONDS = 24 * 3600
# A retention run holds the lock while it removes backups (an rmtree can take minutes on a large one).
DEFAULT_WAIT_SECONDS = 600
_TOKEN_RE = re.compile(r'[0-9]{8}T[0-9]{6}-[0-9a-f]{16}\Z')
_SUFFIX = '.json'


class HoldError(BarmanError):
    """A hold that cannot be taken, released or read."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


def holds_dir(layout: catalog.ServerLayout) -> str:
    return os.path.join(layout.root, HOLDS_DIR)


def validate_token(token: str) -> str:
    if not isinstance(token, str) or not _TOKEN_RE.match(token):
        raise HoldError(
            'Hold token %r is not one pg_recover gives' % (token,),
            'A token is the backup id, "-" and 16 hex digits, for example 20261124T031200-0123456789abcdef; '
            'list the holds (pg_backup_catalog action list, key holds) to see them',
            code='INVALID_NAME',
            hold=token,
        )
    return token


def hold_path(layout: catalog.ServerLayout, token: str) -> str:
    return os.path.join(holds_dir(layout), validate_token(token) + _SUFFIX)


def _iso(value):
    return value.astimezone(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _parse_time(text):
    value = datetime.datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError('%r has no time zone' % text)
    return value


def new_token(backup_id: str) -> str:
    """A token for a hold of ``backup_id``, made before the hold when the copy's settings must name it."""
    return '%s-%s' % (backup_id, secrets.token_hex(8))


def take(
    layout: catalog.ServerLayout,
    backup_id: str,
    begin_wal: str,
    destination: str,
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    now: Optional[datetime.datetime] = None,
    wait_seconds: Optional[float] = None,
    token: Optional[str] = None,
) -> str:
    """Hold ``backup_id`` (which starts at ``begin_wal``) for a recovery into ``destination`` (text naming
    the host and directory, for people) for ``ttl_seconds``; returns the hold's token (``token`` when given,
    one of new_token's).

    Refuses a backup that is not (any more) a DONE backup of the catalog: a retention that ran first may
    have removed it, and the recovery must then choose again.
    """
    catalog.validate_backup_id(backup_id)
    wal.parse_wal_name(begin_wal)
    if token is not None and not validate_token(token).startswith(backup_id + '-'):
        raise HoldError(
            'Hold token %s is not one of backup %s' % (token, backup_id),
            'Make it with new_token of the backup held',
            code='INVALID_NAME',
            hold=token,
        )
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise HoldError(
            'A hold of %r seconds is not a duration' % (ttl_seconds,),
            'Give a positive number of seconds (default %d, a day)' % DEFAULT_TTL_SECONDS,
            code='INVALID_ARGUMENT',
            ttl_seconds=ttl_seconds,
        )
    if not isinstance(destination, str) or not destination.strip():
        raise HoldError(
            'A hold needs the destination of the recovery (host and directory)',
            code='INVALID_ARGUMENT',
            destination=destination,
        )
    wait = DEFAULT_WAIT_SECONDS if wait_seconds is None else wait_seconds
    with lockfile.ServerLock(layout, LOCK, wait_seconds=wait):
        path = layout.backup_info_path(backup_id)
        try:
            info = infofile.read_backup_info(path)
        except FileNotFoundError:
            raise HoldError(
                'Backup %s of %s is no longer in the catalog: it cannot be held for a recovery'
                % (backup_id, layout.server),
                'Retention or delete removed it before the recovery started; run the recovery again to choose '
                'a backup that is there',
                code='NO_SUCH_BACKUP',
                backup_id=backup_id,
            ) from None
        if info['status'] != infofile.DONE or info.get('begin_wal') != begin_wal:
            raise HoldError(
                'Backup %s of %s is %s and begins at %s, not a DONE backup beginning at %s: it is not held'
                % (backup_id, layout.server, info['status'], info.get('begin_wal'), begin_wal),
                'Hold the DONE backup the recovery copies, with the begin_wal of its backup.info',
                code='BACKUP_NOT_DONE',
                backup_id=backup_id,
            )
        started = now or catalog.now_utc()
        token = token or new_token(backup_id)
        hold = dict(
            token=token,
            server=layout.server,
            backup_id=backup_id,
            begin_wal=begin_wal,
            destination=destination,
            started=_iso(started),
            expires=_iso(started + datetime.timedelta(seconds=ttl_seconds)),
        )
        directory = holds_dir(layout)
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o700)
            catalog.fsync_dir(layout.root)
        catalog.atomic_write(hold_path(layout, token), json.dumps(hold, sort_keys=True) + '\n', 0o600)
    return token


def release(layout: catalog.ServerLayout, token: str) -> bool:
    """Remove a hold; returns True if it existed. No lock: removing a hold only lets retention do more
    on its next run, never less."""
    path = hold_path(layout, token)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    catalog.fsync_dir(os.path.dirname(path))
    return True


def _load(path, token):
    with open(path, 'r', encoding='utf-8') as handle:
        hold = json.load(handle)
    if not isinstance(hold, dict):
        raise ValueError('not a JSON object')
    for key in ('backup_id', 'begin_wal', 'destination', 'started', 'expires'):
        if not isinstance(hold.get(key), str):
            raise ValueError('no %s' % key)
    catalog.validate_backup_id(hold['backup_id'])
    wal.parse_wal_name(hold['begin_wal'])
    _parse_time(hold['started'])
    _parse_time(hold['expires'])
    hold['token'] = token
    return hold


def read_all(layout: catalog.ServerLayout) -> Tuple[List[Dict[str, Any]], List[Dict[str, str]]]:
    """(holds, damaged): every hold file's content (token, backup_id, begin_wal, destination, started,
    expires), and dict(path, error) for each file that cannot be read, which callers must not ignore."""
    directory = holds_dir(layout)
    try:
        entries = sorted(os.listdir(directory))
    except FileNotFoundError:
        return [], []
    holds, damaged = [], []
    for entry in entries:
        if entry.startswith('.') or not entry.endswith(_SUFFIX):
            continue  # atomic_write's temporary files
        path = os.path.join(directory, entry)
        token = entry[: -len(_SUFFIX)]
        try:
            validate_token(token)
            holds.append(_load(path, token))
        except (OSError, ValueError, BarmanError) as exc:
            damaged.append(dict(path=path, error='recovery hold %s cannot be read: %s' % (path, exc)))
    return holds, damaged


def is_stale(hold: Mapping[str, Any], now: datetime.datetime) -> bool:
    return _parse_time(hold['expires']) <= now


def survey(layout: catalog.ServerLayout, now: Optional[datetime.datetime] = None) -> Dict[str, List[Dict[str, Any]]]:
    """dict(active, stale, damaged): the holds that protect, the expired ones (ignored), the unreadable."""
    now = now or catalog.now_utc()
    holds, damaged = read_all(layout)
    return dict(
        active=[h for h in holds if not is_stale(h, now)],
        stale=[h for h in holds if is_stale(h, now)],
        damaged=damaged,
    )


def active(layout: catalog.ServerLayout, now: Optional[datetime.datetime] = None) -> List[Dict[str, Any]]:
    """The holds that have not expired at ``now`` (an aware datetime, default the current time)."""
    return survey(layout, now)['active']


def describe(hold: Mapping[str, Any]) -> str:
    """One line for people: what holds the backup, since when, until when."""
    return 'a recovery to %s since %s (hold %s, expires %s)' % (
        hold['destination'],
        hold['started'],
        hold['token'],
        hold['expires'],
    )


def release_hint(layout: catalog.ServerLayout, hold: Mapping[str, Any]) -> str:
    return (
        'Wait for the recovery to reach its target (recover.yml then releases the hold); if no recovery runs '
        'any more, release it: pg_backup_catalog action=release-hold server=%s hold=%s' % (layout.server, hold['token'])
    )
