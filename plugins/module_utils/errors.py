# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one error type that module_utils raise; modules turn it into fail_json."""

from typing import Any, Dict, Optional

# Exit codes of the WAL receiver and sender. PostgreSQL reads a restore_command's code: 1 to 125 is "not in
# the archive" (recovery ends there and, with no target, promotes); above 125 is fatal (the server stops,
# and recovery resumes at its next start). For archive_command any non-zero code means "retry".
EXIT_OK = 0
EXIT_NOT_FOUND = 1  # sender get -> PostgreSQL: not archived (a normal answer to restore_command's probes)
EXIT_REFUSED = 2  # bad request or bad file: sending it again will not help
EXIT_TEMPORARY = 3  # I/O error, lock busy, disk full, host unreachable: try again (put: PostgreSQL; get: the sender)
# receiver get -> sender: the archive does not hold the file. A code of its own (sysexits' EX_NOINPUT),
# which no crash gives (Python exits 1 on an uncaught exception, ssh 255, a shell 126 or 127).
EXIT_NOT_ARCHIVED = 66
# sender get -> PostgreSQL: the file could not be fetched, nor its absence confirmed. Above 125 and no
# 128+signal look-alike: the startup process raises FATAL instead of ending recovery early.
EXIT_STOP_RECOVERY = 200

# The one table of error codes: what each refusal means for the user. A code is stable (playbooks and AWX
# workflows react to it, never to the message, which may be reworded); the doc fragment error_codes shows
# this table in ansible-doc. A new refusal takes the code of what happened, and a new code goes here.
ERROR_CODES = {
    # Generic
    'BARMAN_ERROR': 'a failure without a code of its own, such as a bug: the message says what happened; '
    'please report it',
    'INVALID_ARGUMENT': 'an option or value given to the module cannot be used (the message names it)',
    'INVALID_NAME': 'a server name, backup id, lock operation or hold token is not valid',
    'MISSING_DEPENDENCY': 'a library or program the module needs is not installed on the host that runs it (or is '
    'of the wrong version)',
    # The catalog on the backup server
    'LOCK_BUSY': 'another process holds the lock of this server and operation (another backup, retention run or '
    'hold of the same server is running): wait for it to end and retry',
    'LOCK_FAILED': 'the lock file cannot be opened (its directory is missing, or this user may not write there)',
    'IDENTITY_MISMATCH': 'the PostgreSQL cluster (its system identifier) is not the one whose backups and WAL this '
    'server name holds',
    'NO_SUCH_SERVER': 'the server has no catalog or archive under barman_home (a wrong name, or setup.yml not run)',
    'NO_SUCH_BACKUP': 'the backup named is not, or no longer, in the catalog',
    'BACKUP_NOT_DONE': 'the backup named is not DONE, so it cannot be kept, held or recovered',
    'BACKUP_IN_PROGRESS': 'the backup is still being taken (STARTED or WAITING_FOR_WALS), so it is not deleted',
    'BACKUP_KEPT': 'the backup is kept (action keep), so it is not deleted until released',
    'BACKUP_HELD': 'a recovery holds the backup (it still reads the backup and its WAL), so it is not deleted',
    'BACKUP_HAS_CHILDREN': 'the backup is the parent of incremental backups, which cannot be restored without it: '
    'it is deleted only with force, and its children with it',
    'MINIMUM_REDUNDANCY': 'deleting would leave fewer DONE backups than minimum_redundancy (and never none)',
    'INVALID_POLICY': 'a retention policy, minimum redundancy or age does not parse',
    'CATALOG_DAMAGED': 'a file of the catalog cannot be read or is in the way, so nothing was changed: repair or '
    'move away the file named',
    'MALFORMED_BACKUP_INFO': 'a backup.info file cannot be read back',
    'MALFORMED_XLOG_DB': 'the WAL index (<server>-xlog.db) has a line that cannot be read back',
    'MALFORMED_IDENTITY': 'identity.json (the system identifier of the server directory) cannot be read back',
    'MALFORMED_MANIFEST': "a backup's backup_manifest is not PostgreSQL's manifest format, or its own checksum "
    'does not match its content',
    'MALFORMED_VERIFICATION': 'a verification record (meta/<backup_id>-verification.json) cannot be read back',
    # Reaching the hosts
    'SSH_FAILED': 'an ssh command to a host failed, or the host is unreachable',
    'RSYNC_FAILED': "an rsync copy failed (the message gives rsync's exit code and what it means)",
    'POSTGRES_UNREACHABLE': 'PostgreSQL cannot be connected to (not running, wrong address, pg_hba.conf or password)',
    'POSTGRES_REFUSED': 'PostgreSQL refused a query or function that the operation needs',
    # Backup
    'SERVER_IS_STANDBY': 'the PostgreSQL server changed role (a standby, a primary) between the choice of the member '
    'to back up and the backup: a failover is under way',
    'NO_PRIMARY': 'no member of the cluster is the primary now (or several are): nothing to back up or switch WAL on',
    'NO_HEALTHY_STANDBY': 'backup_from standby, and no standby of the cluster is up and within standby_max_lag',
    'MISSING_PRIVILEGES': 'the PostgreSQL role lacks a privilege that a backup needs (setup.yml grants them)',
    'INCREMENTAL_NOT_SUPPORTED': 'a block-level incremental backup was asked of a PostgreSQL server older than 17',
    'SUMMARIZE_WAL_OFF': 'summarize_wal is off on the PostgreSQL server, so it cannot take an incremental backup '
    '(setup.yml turns it on)',
    'REPLICATION_REFUSED': 'the replication connection of backup_method postgres is refused (pg_hba.conf or '
    'password; setup.yml sets both)',
    'BASEBACKUP_FAILED': 'pg_basebackup failed: the backup is FAILED (the message gives its output)',
    'ARCHIVING_OFF': 'WAL archiving is off on the PostgreSQL server, so a backup could not be restored '
    '(setup.yml turns it on)',
    'INVALID_PGDATA': 'the data directory on the PostgreSQL host is not laid out as PostgreSQL needs it',
    'NOT_ENOUGH_SPACE': 'a filesystem (of the backup server, or of the recovery destination) has less free space '
    'than the copy needs; nothing was copied',
    'DISK_WRITE_FAILED': 'a write or sync to the disk of the backup server failed',
    'WAITING_FOR_WALS': 'the backup is copied but its last WAL did not reach the archive in time: it stays '
    'WAITING_FOR_WALS, not usable until that WAL arrives (the next backup run then marks it DONE)',
    # Recovery
    'INVALID_TARGET': 'the recovery target is not valid (several given, a time without a time zone, an LSN or a '
    'transaction id that does not parse)',
    'NO_DONE_BACKUP': 'the server has no DONE backup to recover from',
    'TARGET_BEFORE_BACKUP': 'the recovery target is before the end of the backup (the oldest one, or the one named): '
    'choose a later target or an older backup',
    'TARGET_AFTER_ARCHIVE': 'the recovery target is past the newest archived WAL',
    'ARCHIVE_GAP': 'WAL needed between the backup and the target is missing from the archive (a gap, the end of '
    'the backup, or a timeline history file)',
    'BROKEN_CHAIN': 'an incremental backup whose parent is missing or not DONE cannot be restored',
    'COMBINE_FAILED': 'pg_combinebackup could not combine an incremental backup with its parents',
    'DESTINATION_NOT_EMPTY': 'the recovery directory is not empty, and recovery never overwrites data',
    'DESTINATION_IN_USE': 'a PostgreSQL server runs in the recovery directory (postmaster.pid is there)',
    # The WAL archive
    'INVALID_WAL_NAME': 'a WAL file name, timeline or segment number that PostgreSQL would not produce',
    'INVALID_WAL_CONTENT': 'the content of a file is not the WAL segment, timeline history or backup history that '
    'its name says',
    'WAL_REFUSED': 'the archive refused a delivered file that cannot be the next file of this server (empty, too '
    'large, unknown timeline, too far ahead); sending it again does not help',
    'WAL_DUPLICATE': 'a different file arrived under the name of one already archived (the new one is kept in errors/)',
    'WAL_DAMAGED': 'a WAL file arrived damaged or cut short: nothing was stored, and PostgreSQL sends it again',
    'WAL_NOT_FOUND': 'the archive does not hold the requested WAL file',
    'COMPRESSION_FAILED': 'a compression program failed, or is not installed on the backup server',
    'REQUEST_REFUSED': 'a forced command (the WAL receiver, or the catalog reader of a mirror) refused a request '
    'that its key does not allow',
    # Verification
    'VERIFICATION_FAILED': 'the backup failed its verification (a file, a WAL, a page, an index or a check of '
    'verify_queries): the result names what failed; the backup itself was not changed',
    'VERIFY_HOST_UNSUITABLE': 'the verification host cannot run the copy: it lacks the PostgreSQL binaries of the '
    "backup's major version, its scratch directory or port is the original server's, or the copy could not be "
    'made, stopped or removed there',
    # Mirrors
    'MIRROR_REFUSED': 'the mirror cannot take a catalog as it is: one written as a primary (e.g. a former primary '
    'come back), or one of another cluster under the same name',
    'MIRROR_COPY_FAILED': 'a backup copied from the primary backup server differs from its manifest (the partial '
    'copy stays hidden, and the next run copies again what differs)',
    # Object storage
    'CLOUD_NO_BUCKET': 'the bucket named does not exist at the endpoint (barman.postgresql never creates one)',
    'CLOUD_ACCESS_DENIED': 'the object store refused the credentials, or they may not read, write, list or delete '
    'there',
    'CLOUD_UNREACHABLE': 'the S3 endpoint did not answer (down, wrong URL, network): what was cut short is resumed '
    'by the next run, and nothing partial is listed',
    'CLOUD_FAILED': 'the object store refused or failed a transfer, or an object is not what a backup holds',
}


class BarmanError(Exception):
    """A refusal with what went wrong, how to fix it, its code, and the data behind it.

    module_utils never call fail_json: they raise this (or a subclass) and the module reports
    ``msg`` (message plus hint), ``error_code`` and ``data`` as they are. ``code`` is a key of
    ERROR_CODES: a subclass that means one thing declares it as its default; a subclass that covers
    several refusals keeps the generic default, and each of its raises names the code of what happened.
    """

    code = 'BARMAN_ERROR'

    def __init__(self, message: str, hint: Optional[str] = None, code: Optional[str] = None, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code or type(self).code
        if self.code not in ERROR_CODES:
            raise ValueError('%s is not an error code of errors.ERROR_CODES' % shown(self.code))
        self.data = data

    def __str__(self) -> str:
        if self.hint:
            return '%s. %s' % (self.message.rstrip('.'), self.hint)
        return self.message

    def fail_json_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for AnsibleModule.fail_json()."""
        result = dict(msg=str(self), error_code=self.code)
        if self.hint:
            result['hint'] = self.hint
        result.update(self.data)
        return result


def shown(value: Any) -> str:
    """A value for an error message: names come from user input and directory listings, so a hostile
    value must not flood the message."""
    text = repr(value)
    return text if len(text) <= 100 else text[:97] + '...'


def is_int(value: Any) -> bool:
    """An int, and not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)
