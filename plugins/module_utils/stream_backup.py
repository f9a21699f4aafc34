# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_method postgres: the base backup streamed by ``pg_basebackup`` over the replication protocol,
run on the backup server into the catalog's usual layout (``base/<id>/data``, ``base/<id>/<oid>``), as
Barman's ``backup_method = postgres`` lays it out. WAL still comes from the archive (``--wal-method=none``).

On PostgreSQL 17+ a backup may be a block-level incremental (``--incremental`` against its parent's
``backup_manifest``): only the blocks the WAL summaries say changed are sent.
"""

import os
import re
import subprocess
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    chain,
    infofile,
    manifest,
    pgtools,
    postgres,
    verifyfile,
    wal,
)
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

INCREMENTAL_MAJOR = 17


class StreamError(BarmanError):
    """The streamed backup was refused or failed."""

    code = 'BARMAN_ERROR'


def quoted(value: Any) -> str:
    """A value of a libpq connection string, quoted."""
    return "'%s'" % str(value).replace('\\', '\\\\').replace("'", "\\'")


def conninfo(params: Mapping[str, Any]) -> str:
    """pg_basebackup's connection string (libpq's key=value; values quoted). No password: ~/.pgpass or the
    PGPASSWORD environment variable carry it, never the command line."""
    items = [
        ('host', params['pg_host']),
        ('port', params['pg_port']),
        ('user', params['streaming_user']),
        ('application_name', postgres.APPLICATION_NAME),
        ('connect_timeout', params['pg_connect_timeout']),
    ]
    return ' '.join('%s=%s' % (key, quoted(value)) for key, value in items)


def environment(params: Mapping[str, Any]) -> Dict[str, str]:
    env = dict(os.environ)
    if params.get('streaming_password'):
        env['PGPASSWORD'] = params['streaming_password']
    return env


def choose_parent(
    infos: Mapping[str, Mapping[str, Any]],
    layout: catalog.ServerLayout,
    incremental: bool,
    chain_max: int,
    facts: Optional[Mapping[str, Any]] = None,
) -> Tuple[Optional[str], str]:
    """(parent backup id or None, why): an incremental builds on the newest DONE backup taken by
    pg_basebackup, when it has its manifest, the chain is shorter than ``chain_max`` incrementals, and nothing
    PostgreSQL does not check could make the combined copy wrong: the server is still on the chain's timeline
    (a recovery in place or a promotion since starts a new one) with the same data_checksums, and no backup of
    the chain failed its verification."""
    if not incremental:
        return None, 'full backup asked for'
    done = infofile.done_backup_ids(infos)
    if not done:
        return None, 'full: no earlier backup to build on'
    newest = done[-1]
    if infos[newest].get('mode') != chain.POSTGRES_MODE:
        return None, 'full: the newest backup %s was taken by rsync, not pg_basebackup' % newest
    if not os.path.exists(layout.manifest_path(newest)):
        return None, 'full: the newest backup %s has no backup_manifest' % newest
    try:
        ancestors = chain.ancestry(infos, newest)
    except chain.ChainError as error:
        return None, 'full: %s' % error.message
    if len(ancestors) > chain_max:
        return None, 'full: the chain of %s already has %d incrementals (incremental_chain %d)' % (
            newest,
            len(ancestors) - 1,
            chain_max,
        )
    facts = facts or {}
    if facts.get('timeline') is not None and infos[newest].get('timeline') != facts['timeline']:
        return None, 'full: the server is on timeline %s, the newest backup %s on %s' % (
            facts['timeline'],
            newest,
            infos[newest].get('timeline'),
        )
    changed = [
        b
        for b in ancestors
        if facts.get('data_checksums')
        and infos[b].get('data_checksums')
        and infos[b]['data_checksums'] != facts['data_checksums']
    ]
    if changed:
        return None, 'full: data_checksums is %s now, %s in backup %s' % (
            facts['data_checksums'],
            infos[changed[0]]['data_checksums'],
            changed[0],
        )
    failed = [
        b for b in ancestors if (verifyfile.read_verification(layout, b) or {}).get('result') == verifyfile.FAILED
    ]
    if failed:
        return None, 'full: backup %s of the chain failed its verification' % failed[0]
    return newest, 'incremental on %s (chain of %d)' % (newest, len(ancestors) + 1)


def preflight(params: Mapping[str, Any], conn: Any, facts: Mapping[str, Any], incremental: bool) -> str:
    """Refuse before anything is written what would make pg_basebackup fail half-way; the program's path."""
    major = int(facts['version']) // 10000
    if incremental and major < INCREMENTAL_MAJOR:
        raise StreamError(
            'block-level incremental backups need PostgreSQL %d or later; %s runs PostgreSQL %d'
            % (INCREMENTAL_MAJOR, params['pg_host'], major),
            'Set barman_backup_incremental false for this server (rsync backups are incremental by hard links), '
            'or upgrade it',
            code='INCREMENTAL_NOT_SUPPORTED',
        )
    if incremental:
        row = postgres.query_one(conn, "SELECT current_setting('summarize_wal') AS summarize")
        if row['summarize'] != 'on':
            raise StreamError(
                'summarize_wal is off on %s: PostgreSQL cannot tell which blocks changed since the last backup'
                % params['pg_host'],
                'Run setup.yml with barman_backup_incremental true (it sets summarize_wal = on), or '
                'ALTER SYSTEM SET summarize_wal = on and reload; then take a full backup first',
                code='SUMMARIZE_WAL_OFF',
            )
    role = postgres.query_one(
        conn,
        'SELECT rolreplication OR rolsuper AS replication, rolcanlogin AS login FROM pg_roles WHERE rolname = %s',
        (params['streaming_user'],),
    )
    if not role or not role['replication'] or not role['login']:
        raise StreamError(
            'the PostgreSQL role %s %s on %s: pg_basebackup streams over a replication connection'
            % (
                params['streaming_user'],
                'does not exist'
                if not role
                else 'may not open a replication connection (it lacks %s)'
                % ' and '.join(
                    n for n, ok in (('LOGIN', role['login']), ('REPLICATION', role['replication'])) if not ok
                ),
                params['pg_host'],
            ),
            'Run setup.yml (with barman_backup_method postgres it creates the role), or ALTER ROLE %s LOGIN '
            'REPLICATION; nothing was copied' % params['streaming_user'],
            code='MISSING_PRIVILEGES',
        )
    tool = pgtools.local_tool(
        pgtools.bindir(params.get('pg_bindir'), major), 'pg_basebackup', major, 'backup_method postgres'
    )
    _probe_replication(params, tool)
    return tool


def _probe_replication(params, tool):
    """A replication connection as the streaming role, the way pg_basebackup will open it (pg_hba.conf, the
    password), with a command that changes nothing: IDENTIFY_SYSTEM through pg_receivewal's sibling, psql."""
    psql = os.path.join(os.path.dirname(tool), 'psql')
    argv = [psql, '-XAtq', '-d', conninfo(params) + " replication='true'", '-c', 'IDENTIFY_SYSTEM']
    try:
        proc = _run(argv, params)
    except OSError as error:
        raise StreamError('cannot run %s: %s' % (psql, error), code='MISSING_DEPENDENCY') from None
    if proc.returncode != 0:
        raise StreamError(
            'the replication connection to %s:%s as %s is refused: %s'
            % (
                params['pg_host'],
                params['pg_port'],
                params['streaming_user'],
                proc.stderr.decode('utf-8', 'replace').strip(),
            ),
            'pg_hba.conf must admit "host replication %s <backup server>" and the barman user\'s ~/.pgpass hold its '
            'password: run setup.yml with barman_backup_method postgres; nothing was copied' % params['streaming_user'],
            code='REPLICATION_REFUSED',
        )


def _run(argv, params):
    """A PostgreSQL program as the streaming role (its password, if given, in the environment only)."""
    return subprocess.run(
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=environment(params),
        stdin=subprocess.DEVNULL,
        check=False,
    )


# What PostgreSQL says when it cannot take an incremental on a parent (its WAL summaries are missing, or the
# parent is of a timeline the server has left): a full can still be taken.
_PARENT_REFUSALS = ('wal summar', 'manifest requires wal', "not in this server's history")


def parent_refused(error: BarmanError) -> bool:
    """pg_basebackup failed because the server cannot take an incremental on that parent."""
    text = error.message.lower()
    return error.code == 'BASEBACKUP_FAILED' and any(words in text for words in _PARENT_REFUSALS)


def argv(
    tool: str,
    params: Mapping[str, Any],
    layout: catalog.ServerLayout,
    backup_id: str,
    tablespaces: List[Tuple[str, int, str]],
    parent_id: Optional[str],
) -> List[str]:
    """pg_basebackup's command line: plain format into the catalog, no WAL, no slot, tablespaces beside."""
    command = [
        tool,
        '--dbname=%s' % conninfo(params),
        '--pgdata=%s' % layout.backup_data_dir(backup_id),
        '--format=plain',
        '--wal-method=none',  # the archive has the WAL; a slot would hold WAL on the server for nothing
        '--no-slot',
        '--no-password',
        '--checkpoint=%s' % ('fast' if params['immediate_checkpoint'] else 'spread'),
        '--label=%s' % (params.get('label') or 'barman.postgresql %s' % backup_id),
        '--verbose',
    ]
    for _name, oid, location in tablespaces:
        command.append(
            '--tablespace-mapping=%s=%s'
            % (location.replace('=', '\\='), layout.backup_tablespace_dir(backup_id, oid).replace('=', '\\='))
        )
    if params.get('bandwidth_limit'):
        # pg_basebackup takes 32 kB/s to 1 GB/s.
        command.append('--max-rate=%dk' % min(max(32, params['bandwidth_limit']), 1024 * 1024))
    if parent_id:
        command.append('--incremental=%s' % layout.manifest_path(parent_id))
    return command


def copy(
    params: Mapping[str, Any],
    layout: catalog.ServerLayout,
    backup_id: str,
    facts: Mapping[str, Any],
    tool: str,
    parent_id: Optional[str],
    progress: Callable[[str], None],
) -> Dict[str, Any]:
    """Run pg_basebackup; returns what backup.info needs of its start and end, read from what it wrote
    (backup_label, and backup_manifest's WAL range for the end)."""
    command = argv(tool, params, layout, backup_id, facts['tablespaces'], parent_id)
    progress('pg_basebackup %s' % ('incremental on %s' % parent_id if parent_id else 'full'))
    proc = _run(command, params)
    output = (proc.stdout + proc.stderr).decode('utf-8', 'replace').strip()
    for line in output.splitlines()[-20:]:
        progress(line)
    if proc.returncode != 0:
        raise StreamError(
            'pg_basebackup failed (exit %d): %s' % (proc.returncode, output[-2000:]),
            'Read the message above and backup.log; the backup is FAILED and the next run starts a new one',
            code='BASEBACKUP_FAILED',
        )
    data = layout.backup_data_dir(backup_id)
    with open(os.path.join(data, 'backup_label'), encoding='utf-8', errors='replace') as handle:
        label = handle.read()
    # The start as backup_label says it; the end from the manifest's WAL ranges (whatever their order).
    start_lsn = re.search(r'^START WAL LOCATION: ([0-9A-Fa-f]+/[0-9A-Fa-f]+)', label, re.M).group(1)
    start_tli = int(re.search(r'^START TIMELINE: ([0-9]+)', label, re.M).group(1))
    end_tli, _start, end_lsn = max(manifest.read(layout.manifest_path(backup_id))['wal_ranges'], key=lambda r: r[2])
    return dict(
        labelfile=label,
        start_lsn=wal.format_lsn(start_lsn),
        start_timeline=start_tli,
        end_lsn=wal.format_lsn(end_lsn),
        end_timeline=end_tli,
    )
