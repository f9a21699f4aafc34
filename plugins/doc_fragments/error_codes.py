# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # The error codes of module_utils/errors.py, the one table (tests/unit/.../test_errors.py checks that this
    # list is that table). ansible-core has no RETURN fragments: each module documents error_code in its
    # RETURN and extends this fragment for the list. ansible-test wants a plain string here, not one built
    # from the table at import.
    DOCUMENTATION = r"""
options: {}
notes:
- 'A failure returns RV(error_code), the stable code of the refusal, besides C(msg) and C(hint): playbooks
  and AWX workflows react to the code, never to the wording of the message. The codes are:'
- 'C(BARMAN_ERROR): a failure without a code of its own, such as a bug: the message says what happened; please
  report it.'
- 'C(INVALID_ARGUMENT): an option or value given to the module cannot be used (the message names it).'
- 'C(INVALID_NAME): a server name, backup id, lock operation or hold token is not valid.'
- 'C(MISSING_DEPENDENCY): a library or program the module needs is not installed on the host that runs it (or is
  of the wrong version).'
- 'C(LOCK_BUSY): another process holds the lock of this server and operation (another backup, retention run or
  hold of the same server is running): wait for it to end and retry.'
- 'C(LOCK_FAILED): the lock file cannot be opened (its directory is missing, or this user may not write there).'
- 'C(IDENTITY_MISMATCH): the PostgreSQL cluster (its system identifier) is not the one whose backups and WAL
  this server name holds.'
- 'C(NO_SUCH_SERVER): the server has no catalog or archive under barman_home (a wrong name, or setup.yml not
  run).'
- 'C(NO_SUCH_BACKUP): the backup named is not, or no longer, in the catalog.'
- 'C(BACKUP_NOT_DONE): the backup named is not DONE, so it cannot be kept, held or recovered.'
- 'C(BACKUP_IN_PROGRESS): the backup is still being taken (STARTED or WAITING_FOR_WALS), so it is not deleted.'
- 'C(BACKUP_KEPT): the backup is kept (action keep), so it is not deleted until released.'
- 'C(BACKUP_HELD): a recovery holds the backup (it still reads the backup and its WAL), so it is not deleted.'
- 'C(BACKUP_HAS_CHILDREN): the backup is the parent of incremental backups, which cannot be restored without it:
  it is deleted only with force, and its children with it.'
- 'C(MINIMUM_REDUNDANCY): deleting would leave fewer DONE backups than minimum_redundancy (and never none).'
- 'C(INVALID_POLICY): a retention policy, minimum redundancy or age does not parse.'
- 'C(CATALOG_DAMAGED): a file of the catalog cannot be read or is in the way, so nothing was changed: repair or
  move away the file named.'
- 'C(MALFORMED_BACKUP_INFO): a backup.info file cannot be read back.'
- 'C(MALFORMED_XLOG_DB): the WAL index (<server>-xlog.db) has a line that cannot be read back.'
- 'C(MALFORMED_IDENTITY): identity.json (the system identifier of the server directory) cannot be read back.'
- 'C(MALFORMED_MANIFEST): a backup''s backup_manifest is not PostgreSQL''s manifest format, or its own checksum
  does not match its content.'
- 'C(MALFORMED_VERIFICATION): a verification record (meta/<backup_id>-verification.json) cannot be read back.'
- 'C(SSH_FAILED): an ssh command to a host failed, or the host is unreachable.'
- 'C(RSYNC_FAILED): an rsync copy failed (the message gives rsync''s exit code and what it means).'
- 'C(POSTGRES_UNREACHABLE): PostgreSQL cannot be connected to (not running, wrong address, pg_hba.conf or
  password).'
- 'C(POSTGRES_REFUSED): PostgreSQL refused a query or function that the operation needs.'
- 'C(SERVER_IS_STANDBY): the PostgreSQL server changed role (a standby, a primary) between the choice of the
  member to back up and the backup: a failover is under way.'
- 'C(NO_PRIMARY): no member of the cluster is the primary now (or several are): nothing to back up or switch WAL
  on.'
- 'C(NO_HEALTHY_STANDBY): backup_from standby, and no standby of the cluster is up and within standby_max_lag.'
- 'C(MISSING_PRIVILEGES): the PostgreSQL role lacks a privilege that a backup needs (setup.yml grants them).'
- 'C(INCREMENTAL_NOT_SUPPORTED): a block-level incremental backup was asked of a PostgreSQL server older than
  17.'
- 'C(SUMMARIZE_WAL_OFF): summarize_wal is off on the PostgreSQL server, so it cannot take an incremental backup
  (setup.yml turns it on).'
- 'C(REPLICATION_REFUSED): the replication connection of backup_method postgres is refused (pg_hba.conf or
  password; setup.yml sets both).'
- 'C(BASEBACKUP_FAILED): pg_basebackup failed: the backup is FAILED (the message gives its output).'
- 'C(ARCHIVING_OFF): WAL archiving is off on the PostgreSQL server, so a backup could not be restored (setup.yml
  turns it on).'
- 'C(INVALID_PGDATA): the data directory on the PostgreSQL host is not laid out as PostgreSQL needs it.'
- 'C(NOT_ENOUGH_SPACE): a filesystem (of the backup server, or of the recovery destination) has less free space
  than the copy needs; nothing was copied.'
- 'C(DISK_WRITE_FAILED): a write or sync to the disk of the backup server failed.'
- 'C(WAITING_FOR_WALS): the backup is copied but its last WAL did not reach the archive in time: it stays
  WAITING_FOR_WALS, not usable until that WAL arrives (the next backup run then marks it DONE).'
- 'C(INVALID_TARGET): the recovery target is not valid (several given, a time without a time zone, an LSN or a
  transaction id that does not parse).'
- 'C(NO_DONE_BACKUP): the server has no DONE backup to recover from.'
- 'C(TARGET_BEFORE_BACKUP): the recovery target is before the end of the backup (the oldest one, or the one
  named): choose a later target or an older backup.'
- 'C(TARGET_AFTER_ARCHIVE): the recovery target is past the newest archived WAL.'
- 'C(ARCHIVE_GAP): WAL needed between the backup and the target is missing from the archive (a gap, the end of
  the backup, or a timeline history file).'
- 'C(BROKEN_CHAIN): an incremental backup whose parent is missing or not DONE cannot be restored.'
- 'C(COMBINE_FAILED): pg_combinebackup could not combine an incremental backup with its parents.'
- 'C(DESTINATION_NOT_EMPTY): the recovery directory is not empty, and recovery never overwrites data.'
- 'C(DESTINATION_IN_USE): a PostgreSQL server runs in the recovery directory (postmaster.pid is there).'
- 'C(INVALID_WAL_NAME): a WAL file name, timeline or segment number that PostgreSQL would not produce.'
- 'C(INVALID_WAL_CONTENT): the content of a file is not the WAL segment, timeline history or backup history that
  its name says.'
- 'C(WAL_REFUSED): the archive refused a delivered file that cannot be the next file of this server (empty, too
  large, unknown timeline, too far ahead); sending it again does not help.'
- 'C(WAL_DUPLICATE): a different file arrived under the name of one already archived (the new one is kept in
  errors/).'
- 'C(WAL_DAMAGED): a WAL file arrived damaged or cut short: nothing was stored, and PostgreSQL sends it again.'
- 'C(WAL_NOT_FOUND): the archive does not hold the requested WAL file.'
- 'C(COMPRESSION_FAILED): a compression program failed, or is not installed on the backup server.'
- 'C(REQUEST_REFUSED): a forced command (the WAL receiver, or the catalog reader of a mirror) refused a request
  that its key does not allow.'
- 'C(VERIFICATION_FAILED): the backup failed its verification (a file, a WAL, a page, an index or a check of
  verify_queries): the result names what failed; the backup itself was not changed.'
- 'C(VERIFY_HOST_UNSUITABLE): the verification host cannot run the copy: it lacks the PostgreSQL binaries of the
  backup''s major version, its scratch directory or port is the original server''s, or the copy could not be
  made, stopped or removed there.'
- 'C(MIRROR_REFUSED): the mirror cannot take a catalog as it is: one written as a primary (e.g. a former primary
  come back), or one of another cluster under the same name.'
- 'C(MIRROR_COPY_FAILED): a backup copied from the primary backup server differs from its manifest (the partial
  copy stays hidden, and the next run copies again what differs).'
- 'C(CLOUD_NO_BUCKET): the bucket named does not exist at the endpoint (barman.postgresql never creates one).'
- 'C(CLOUD_ACCESS_DENIED): the object store refused the credentials, or they may not read, write, list or delete
  there.'
- 'C(CLOUD_UNREACHABLE): the S3 endpoint did not answer (down, wrong URL, network): what was cut short is
  resumed by the next run, and nothing partial is listed.'
- 'C(CLOUD_FAILED): the object store refused or failed a transfer, or an object is not what a backup holds.'
"""
