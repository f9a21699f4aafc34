# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libpq side: one psycopg2 session to a PostgreSQL server and the few questions we ask it."""

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

try:
    import psycopg2
    import psycopg2.extras

    PSYCOPG2_IMPORT_ERROR = None
except ImportError as error:  # reported by the module, which knows how to say it
    psycopg2 = None
    PSYCOPG2_IMPORT_ERROR = error

APPLICATION_NAME = 'barman.postgresql'


def connection_argument_spec() -> dict:
    """The connection options every module that talks to PostgreSQL takes (doc fragment: postgres)."""
    return dict(
        pg_host=dict(type='str'),
        pg_port=dict(type='int', default=5432),
        pg_user=dict(type='str', default='barman'),
        pg_password=dict(type='str', no_log=True),
        pg_database=dict(type='str', default='postgres'),
        pg_connect_timeout=dict(type='int', default=10),
    )


class PostgresError(BarmanError):
    """PostgreSQL refused or could not be reached."""

    code = 'BARMAN_ERROR'  # several refusals: each raise names its code


def connect(
    pg_host: Optional[str],
    pg_port: int = 5432,
    pg_user: str = 'barman',
    pg_password: Optional[str] = None,
    pg_database: str = 'postgres',
    pg_connect_timeout: int = 10,
) -> Any:
    """An autocommit session with TCP keepalives, so that a firewall does not drop a long backup's session."""
    if psycopg2 is None:
        raise PostgresError(
            'psycopg2 is not installed for %s' % 'the Python that runs this module',
            'Install python3-psycopg2 (Debian) or psycopg2-binary (pip) on the backup server',
            code='MISSING_DEPENDENCY',
        )
    params = dict(
        host=pg_host,
        port=pg_port,
        user=pg_user,
        dbname=pg_database,
        connect_timeout=pg_connect_timeout,
        application_name=APPLICATION_NAME,
        keepalives=1,
        keepalives_idle=30,
        keepalives_interval=10,
        keepalives_count=6,
    )
    if pg_password:
        params['password'] = pg_password
    try:
        conn = psycopg2.connect(**params)
    except psycopg2.Error as error:
        raise PostgresError(
            'cannot connect to PostgreSQL at %s:%s as %s: %s' % (pg_host, pg_port, pg_user, str(error).strip()),
            'Check that the server runs, listens on that address, that pg_hba.conf admits this host '
            "for that user, and the password in the barman user's ~/.pgpass",
            code='POSTGRES_UNREACHABLE',
            pg_host=pg_host,
            pg_port=pg_port,
        ) from None
    conn.autocommit = True
    return conn


def connect_with(params: Mapping[str, Any]) -> Any:
    """connect() with the pg_* options of a module's parameters (see connection_argument_spec)."""
    return connect(**{k: v for k, v in params.items() if k in connection_argument_spec()})


def query_one(conn: Any, sql: str, params: Optional[Sequence[Any]] = None) -> Optional[Dict[str, Any]]:
    """The first row of a query as a dict."""
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql, params)
            row = cur.fetchone()
    except psycopg2.Error as error:
        raise PostgresError(
            'PostgreSQL refused %s: %s' % (sql.split()[1], str(error).strip()), code='POSTGRES_REFUSED', sql=sql
        ) from None
    return dict(row) if row is not None else None


def server_facts(conn: Any) -> Dict[str, Any]:
    """What a backup needs to know about the server, discovered rather than configured."""
    row = query_one(
        conn,
        "SELECT current_setting('server_version_num')::int AS version, "
        "current_setting('data_directory') AS data_directory, "
        "current_setting('config_file') AS config_file, "
        "current_setting('hba_file') AS hba_file, "
        "current_setting('ident_file') AS ident_file, "
        '(SELECT system_identifier::text FROM pg_control_system()) AS systemid, '
        '(SELECT timeline_id FROM pg_control_checkpoint()) AS timeline, '
        'pg_is_in_recovery() AS in_recovery',
    )
    return row


def wal_segment_size(conn: Any) -> int:
    """wal_segment_size in bytes (SHOW prints it with a unit)."""
    row = query_one(
        conn,
        "SELECT setting::bigint * CASE unit WHEN '8kB' THEN 8192 WHEN 'B' THEN 1 ELSE 1 END "
        "AS size FROM pg_settings WHERE name = 'wal_segment_size'",
    )
    return int(row['size'])


def switch_wal(conn: Any) -> str:
    """Close the current segment and return its name, even on an idle server.

    pg_switch_wal() does nothing when no WAL was written since the last switch, which is why backups
    of idle servers wait forever elsewhere; taking a transaction id writes a commit record first.
    """
    query_one(conn, 'SELECT pg_current_xact_id()')
    row = query_one(conn, 'SELECT pg_walfile_name(pg_switch_wal()) AS name')
    return row['name']


def archiver_stats(conn: Any) -> Dict[str, Any]:
    """pg_stat_archiver as a dict (times as ISO strings)."""
    row = query_one(
        conn,
        'SELECT archived_count, last_archived_wal, last_archived_time::text, failed_count, '
        'last_failed_wal, last_failed_time::text, stats_reset::text FROM pg_stat_archiver',
    )
    return row


def tablespaces(conn: Any) -> List[Tuple[str, int, str]]:
    """[(name, oid, location)] of the user tablespaces (pg_default and pg_global live in PGDATA)."""
    with conn.cursor() as cur:
        cur.execute(
            'SELECT spcname, oid::bigint, pg_tablespace_location(oid) FROM pg_tablespace '
            "WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid"
        )
        return [(name, int(oid), location) for name, oid, location in cur.fetchall()]


def missing_backup_privileges(conn: Any) -> List[str]:
    """What the connected role lacks to take a non-exclusive backup; [] when it can."""
    row = query_one(
        conn,
        "SELECT has_function_privilege('pg_backup_start(text, boolean)', 'EXECUTE') AS start, "
        "has_function_privilege('pg_backup_stop(boolean)', 'EXECUTE') AS stop, "
        "has_function_privilege('pg_switch_wal()', 'EXECUTE') AS switch, "
        "pg_has_role('pg_read_all_settings', 'MEMBER') AS settings",
    )
    names = dict(
        start='pg_backup_start()',
        stop='pg_backup_stop()',
        switch='pg_switch_wal()',
        settings='pg_read_all_settings',
    )
    return [names[key] for key, granted in sorted(row.items()) if not granted]


def checksum_settings(conn: Any) -> Dict[str, Optional[str]]:
    """data_checksums and (PostgreSQL 17+) summarize_wal, as backup.info records them ('on'/'off', or None)."""
    row = query_one(
        conn,
        "SELECT current_setting('data_checksums') AS data_checksums, "
        "current_setting('summarize_wal', true) AS summarize_wal",
    )
    return row


def backup_start(conn: Any, label: str, fast: bool) -> Dict[str, Any]:
    """pg_backup_start() on this session: the start LSN, its timeline and the server time."""
    row = query_one(
        conn,
        'SELECT lsn::text AS lsn, now() AS time, '
        '(SELECT timeline_id FROM pg_control_checkpoint()) AS timeline '
        'FROM pg_backup_start(%s, %s) AS lsn',
        (label, fast),
    )
    return row


def backup_stop(conn: Any) -> Dict[str, Any]:
    """pg_backup_stop() on the same session: end LSN, backup_label and tablespace_map contents, time.

    wait_for_archive is false: the caller waits for the end WAL in the catalog itself.
    """
    row = query_one(
        conn,
        'SELECT lsn::text AS lsn, labelfile, spcmapfile, now() AS time FROM pg_backup_stop(false)',
    )
    return row
