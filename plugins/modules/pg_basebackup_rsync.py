#!/usr/bin/python
# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
module: pg_basebackup_rsync
short_description: Take a base backup of a PostgreSQL server with rsync over SSH
description:
  - Runs on the backup server, as the user that owns the catalog (C(barman)), and pulls the backup.
  - >-
    Opens a session to PostgreSQL, calls C(pg_backup_start()), copies PGDATA and every tablespace
    from the PostgreSQL host with rsync over SSH into C(base/<backup_id>/) of the catalog, copies
    C(global/pg_control) last, calls C(pg_backup_stop()) in the same session and writes its
    C(backup_label) (and C(tablespace_map)) into the copy. Then it waits until the backup's last WAL
    segment is archived and marks the backup DONE.
  - >-
    Files PostgreSQL's documentation says not to copy are excluded (C(pg_wal/) contents, C(postmaster.pid),
    C(pg_replslot/) contents and the rest). Configuration files kept outside PGDATA (Debian) are saved
    in the copy's root.
  - >-
    C(pg_wal) is never copied, be it a directory or a symlink to another disk (C(initdb --waldir)): as with
    C(pg_basebackup), the backup holds an empty C(pg_wal/) with an empty C(archive_status/), so that a
    copy restored from it never writes into the original's WAL. The original's layout is recorded in
    C(base/<backup_id>/pgdata_layout.json) (Barman ignores the file; it goes with the backup).
  - >-
    The copy is synced to disk (one C(syncfs) of the catalog's filesystem) before the backup is marked
    WAITING_FOR_WALS, then DONE.
  - >-
    With O(reuse=link), files unchanged since the previous DONE backup become hard links to it. Files
    modified since one second before that backup started are compared by checksum, never trusted by
    size and modification time alone.
  - >-
    One backup per server at a time (a second is refused); a failure, or a killed rsync, module or
    connection, leaves the backup FAILED, and a FAILED backup is never used for recovery. A backup left
    STARTED by a process that died is marked FAILED by the next run. The cluster's system identifier must
    match the one recorded for the server.
version_added: 1.0.0
author: barman.postgresql contributors (@barman-postgresql)
extends_documentation_fragment:
  - barman.postgresql.members
  - barman.postgresql.catalog
  - barman.postgresql.postgres
  - barman.postgresql.error_codes
options:
  pg_host:
    description:
      - Address of the PostgreSQL server to back up, as the backup server reaches it.
    type: str
    required: true
  ssh_host:
    description:
      - Address of the PostgreSQL host for SSH. Defaults to O(pg_host).
    type: str
  ssh_user:
    description:
      - OS user on the PostgreSQL host that can read PGDATA.
    type: str
    default: postgres
  ssh_port:
    description:
      - SSH port of the PostgreSQL host (default as in the SSH client configuration).
    type: int
  ssh_known_hosts:
    description:
      - known_hosts file with the PostgreSQL host's key. Defaults to the SSH client's.
    type: path
  reuse:
    description:
      - How to reuse the previous DONE backup. V(link) hard-links unchanged files (saves disk and time),
        V(copy) copies them locally instead of over the network, V(off) copies everything.
    type: str
    choices: [link, copy, 'off']
    default: link
  jobs:
    description:
      - Number of rsync workers; files are shared out largest first.
    type: int
    default: 1
  concurrency:
    description:
      - >-
        How many backups may run at once in this O(barman_home) (a backup server's catalog), whatever server,
        run or playbook started them; a backup waits for a free slot (a flock file
        C(.barman-backup-slot-<n>.lock) in O(barman_home)) before its checks and PostgreSQL's backup start,
        at most 6 hours (then C(LOCK_BUSY)). Runs should agree on the value. V(0) means no limit.
    type: int
    default: 0
  immediate_checkpoint:
    description:
      - Ask PostgreSQL for an immediate checkpoint at the start rather than waiting for a spread one.
    type: bool
    default: true
  bandwidth_limit:
    description:
      - Limit of each rsync worker, in KiB/s.
    type: int
  network_compression:
    description:
      - Compress data on the network (rsync C(--compress)); costs CPU on both hosts.
    type: bool
    default: false
  wal_timeout:
    description:
      - Seconds to wait for the backup's last WAL segment to be archived.
      - When it does not arrive in time the module fails and the backup stays WAITING_FOR_WALS; a later
        run marks it DONE once the WAL is there.
    type: int
    default: 120
  label:
    description:
      - Label passed to C(pg_backup_start()) and recorded as the backup's name.
    type: str
  delta_transfer:
    description:
      - >-
        How rsync sends a file changed since the previous backup. Its delta algorithm reads the older copy and
        the new file on both hosts and sends only the blocks that differ: it saves bandwidth on a slow link
        (a WAN) and is slower than sending the file whole on a fast one. Unchanged files are hard-linked
        (or copied locally, O(reuse=copy)) whatever the choice.
      - >-
        V(auto) sends whole files (rsync C(--whole-file)) when an earlier copy measured the link faster than
        the delta algorithm (the newer of the last backups that sent whole files and that used deltas, each
        at least 64 MiB; without a delta measurement, faster than 50 MB/s), the delta algorithm otherwise.
        When no copy measured the link yet, whole files when at least half of the bytes are in files whose
        size or modification time changed. V(always) always uses the delta algorithm, V(never) never does.
      - The choice and why are recorded in the backup's C(copy_stats) (C(transfer), C(transfer_reason)).
    type: str
    choices: [auto, always, never]
    default: auto
  backup_method:
    description:
      - >-
        V(rsync) (the default) takes the backup as described above. V(postgres) streams it with
        C(pg_basebackup) over PostgreSQL's replication protocol from the backup server, as the role
        O(streaming_user), into the same catalog layout (C(base/<backup_id>/data), tablespaces in
        C(base/<backup_id>/<oid>)) with its C(backup_manifest), as Barman's C(backup_method = postgres) does;
        WAL still comes from the archive (C(--wal-method=none), no replication slot). Configuration files kept
        outside PGDATA are copied with rsync over SSH as with V(rsync). O(reuse), O(jobs), O(delta_transfer)
        and O(network_compression) do not apply.
    type: str
    choices: [rsync, postgres]
    default: rsync
  backup_incremental:
    description:
      - >-
        With O(backup_method=postgres) on PostgreSQL 17 or later (C(summarize_wal = on)): a block-level
        incremental against the newest DONE backup taken by C(pg_basebackup) (C(pg_basebackup --incremental)
        with its C(backup_manifest)); only blocks changed since are sent and stored. The backup records its
        C(parent_backup_id) and the parent lists it in C(children_backup_ids) (Barman's fields). A full backup
        is taken instead, and the result says why, when there is no such parent or the chain has
        O(incremental_chain) incrementals already.
      - Refused on PostgreSQL before 17, with O(backup_method=rsync), and with C(summarize_wal) off.
    type: bool
    default: false
  incremental_chain:
    description:
      - After this many incrementals in a row the next backup is full, so that a restore combines a bounded chain.
    type: int
    default: 6
  pg_bindir:
    description:
      - >-
        Directory of C(pg_basebackup) (and C(psql)) on the backup server, of the server's major version or later.
        Default C(/usr/lib/postgresql/<major>/bin) (Debian and PGDG).
    type: path
  streaming_user:
    description:
      - The replication role for O(backup_method=postgres) (C(LOGIN REPLICATION), nothing more; setup.yml creates it).
    type: str
    default: streaming_barman
  streaming_password:
    description:
      - Its password; by default C(~/.pgpass) of the user running the module gives it.
    type: str
  backup_from:
    description:
      - >-
        V(primary) copies the primary. V(standby) copies the standby that replays closest to the primary (its lag
        in bytes measured at the start), refusing when none is up and within O(standby_max_lag)
        (C(NO_HEALTHY_STANDBY)); V(prefer-standby) falls back to the primary then, and says why in
        RV(source). A backup from a standby is non-exclusive on the standby; at its end the primary switches WAL,
        so that the segment the backup ends in is archived. The member copied is recorded in the backup's
        C(copy_stats) (C(source_host), C(source_role)).
    type: str
    choices: [primary, standby, prefer-standby]
    default: primary
  standby_max_lag:
    description:
      - A standby further behind the primary than this many MiB of WAL is not backed up from.
    type: int
    default: 1024
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      Checks connectivity, privileges, archiving, the identity of the cluster, SSH and disk space;
      copies nothing.
notes:
  - The role in PostgreSQL needs EXECUTE on C(pg_backup_start) and C(pg_backup_stop) and membership of
    C(pg_read_all_settings); the wal_archiving role grants them. Its password comes from C(~/.pgpass).
  - Progress is appended to C(<barman_home>/<server>/backup.log).
"""

EXAMPLES = r"""
- name: Back up pg1 (hard links to the previous backup)
  barman.postgresql.pg_basebackup_rsync:
    server: pg1
    pg_host: 10.0.0.11
  become: true
  become_user: barman

- name: A full copy with 4 rsync workers
  barman.postgresql.pg_basebackup_rsync:
    server: pg1
    pg_host: 10.0.0.11
    reuse: 'off'
    jobs: 4

- name: A block-level incremental of a PostgreSQL 18 server, streamed by pg_basebackup
  barman.postgresql.pg_basebackup_rsync:
    server: pg3
    pg_host: 10.0.0.13
    backup_method: postgres
    backup_incremental: true
    pg_bindir: /usr/lib/postgresql/18/bin
"""

RETURN = r"""
error_code:
  description:
    - The stable code of the refusal, one of those listed in the notes (C(msg) says the same in words, which may
      change); playbooks and AWX workflows react to this code.
    - Not returned when Ansible itself refuses the options before the module runs (a missing required option,
      a wrong type or choice); C(msg) says which.
  returned: on failure
  type: str
  sample: LOCK_BUSY
backup_id:
  description: Id of the backup (its start time).
  returned: when a backup was taken
  type: str
  sample: 20261124T031200
status:
  description: C(DONE), or C(WAITING_FOR_WALS) when its last WAL did not arrive in time.
  returned: when a backup was taken
  type: str
reference_backup_id:
  description: The backup reused for unchanged files (rsync), or the parent of an incremental (postgres), if any.
  returned: when a backup was taken
  type: str
backup_method:
  description: V(rsync) or V(postgres).
  returned: when a backup was taken
  type: str
source:
  description: >-
    The member copied (C(host), its inventory name; C(role), primary or standby), C(reason) (why that one, and
    with V(prefer-standby) why not a standby) and C(skipped) (the members passed over, each with why).
  returned: when a backup was taken, and in check mode
  type: dict
backup_type:
  description: C(incremental) (a block-level incremental with a parent) or C(full).
  returned: when a backup was taken
  type: str
parent_backup_id:
  description: The backup an incremental builds on; null for a full backup.
  returned: when a backup was taken
  type: str
begin_wal:
  description: First WAL segment the backup needs.
  returned: when a backup was taken
  type: str
end_wal:
  description: Last WAL segment the backup needs.
  returned: when a backup was taken
  type: str
begin_xlog:
  description: Start LSN.
  returned: when a backup was taken
  type: str
end_xlog:
  description: End LSN; recovery is consistent from there.
  returned: when a backup was taken
  type: str
begin_time:
  description: Start time (server clock).
  returned: when a backup was taken
  type: str
end_time:
  description: End time (server clock).
  returned: when a backup was taken
  type: str
size:
  description: Bytes of the backup's files.
  returned: when a backup was taken
  type: int
deduplicated_size:
  description: Bytes written for this backup (files not shared with the previous one).
  returned: when a backup was taken
  type: int
copy_stats:
  description: >-
    Copy time, sync time (to make the copy durable), total time, workers and bytes transferred;
    C(transfer) (C(whole-file) or C(delta)), how changed files were sent, C(transfer_reason), why, and
    C(throughput), bytes per second of the main copy (what the next backup's O(delta_transfer=auto) reads).
  returned: when a backup was taken
  type: dict
pgdata_layout:
  description: >-
    The original PGDATA's layout, as recorded with the backup: C(pg_wal.kind) is C(directory) or
    C(symlink) (then C(pg_wal.link), the link as written, and C(pg_wal.target), the directory it resolves to).
  returned: when a backup was taken or checked
  type: dict
  sample: {"pg_wal": {"kind": "symlink", "link": "/srv/wal/main", "target": "/srv/wal/main"}}
duration:
  description: Seconds the backup took.
  returned: when a backup was taken
  type: float
settled:
  description: Unfinished backups found and settled first (STARTED -> FAILED, WAITING_FOR_WALS -> DONE).
  returned: always
  type: list
  elements: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.barman.postgresql.plugins.module_utils import backup
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def main():
    module = AnsibleModule(**backup.module_spec(), supports_check_mode=True)
    try:
        result = backup.take_backup(module.params, check_mode=module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
