#!/usr/bin/python
# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
module: pg_recover
short_description: Recover a PostgreSQL backup to a directory, to its end or to a point in time
description:
  - Runs on the backup server, as the user that owns the catalog (C(barman)), and pushes the backup to
    the destination host over SSH (or copies it locally when O(destination_host) is not set).
  - >-
    Chooses the newest DONE backup that ends before the target unless O(backup_id) is given, and refuses
    before copying anything when the target is before that backup's end, before the oldest backup, past
    the newest archived WAL, or when WAL is missing between the backup and the target.
  - >-
    At most one target: O(target_time), O(target_xid), O(target_name), O(target_lsn) or O(target_immediate);
    several are refused. A null or blank target counts as not given. Without one, recovery replays every
    archived WAL.
  - >-
    Writes C(recovery.signal) and the recovery settings into C(postgresql.auto.conf) of the copy:
    C(restore_command) (the WAL sender's C(get), or C(cp) from C(barman_wal/) with O(get_wal=false)),
    the target, C(recovery_target_action), C(recovery_target_timeline), the port, and C(archive_mode=off)
    so that the copy never archives into the original's catalog. Settings of a copied
    C(postgresql.conf) that point at the original cluster (C(data_directory), C(hba_file),
    C(external_pid_file), includes, C(archive_command)) are commented out.
  - >-
    Never deletes data. A non-empty destination (or tablespace directory) is refused unless O(delta),
    and a destination where a server runs is always refused. Starting PostgreSQL is the playbook's job
    (recover.yml).
version_added: 1.0.0
author: barman.postgresql contributors (@barman-postgresql)
extends_documentation_fragment:
  - barman.postgresql.members
  - barman.postgresql.catalog
  - barman.postgresql.error_codes
options:
  backup_id:
    description:
      - The backup to recover, or V(latest) / V(oldest). Default is the newest DONE backup that ends
        before the target.
    type: str
  target_time:
    description:
      - Recover up to this time, with its time zone, for example V(2026-11-24 03:12:00+00).
    type: str
  target_xid:
    description: Recover up to this transaction id.
    type: str
  target_name:
    description: Recover up to this restore point (C(pg_create_restore_point())).
    type: str
  target_lsn:
    description: Recover up to this LSN.
    type: str
  target_immediate:
    description: Recover only to the end of the backup (the first consistent point).
    type: bool
    default: false
  target_tli:
    description:
      - Timeline to follow, V(latest), V(current) or a number. With O(target_immediate), V(latest)
        means the backup's own timeline.
    type: str
    default: latest
  target_inclusive:
    description: Stop just after the target (V(true)) or just before it.
    type: bool
    default: true
  target_action:
    description: What PostgreSQL does at the target.
    type: str
    choices: [pause, promote, shutdown]
    default: promote
  destination_host:
    description: Address of the host to recover to, reached over SSH as O(destination_user).
    type: str
  destination_user:
    description:
      - OS user that will own the copy (the one that runs PostgreSQL there), the SSH user on O(destination_host).
        Not used for a local copy.
    type: str
    default: postgres
  destination_port:
    description: SSH port of the destination host. Only with O(destination_host).
    type: int
  destination_directory:
    description:
      - The PGDATA to create. It must be empty or absent unless O(delta).
      - Default (unless O(in_place)), a new directory beside the original PGDATA on the destination host,
        C(<original PGDATA>.recovered-<UTC time of the call>); RV(destination) says which.
    type: path
  in_place:
    description:
      - Recover into the original PGDATA and tablespace locations of the backup (the server's own host;
        the playbook stops the server and moves them aside first). In check mode the destination is
        not required to be empty, since the playbook moves it aside after the plan; its free space is
        still checked (the moved directory stays on that filesystem).
    type: bool
    default: false
  tablespace_map:
    description:
      - New location of each tablespace, by name or oid. Default is the original location when
        O(destination_directory) is the original PGDATA, else C(<destination_directory>.tblspc/<name>).
    type: dict
    default: {}
  delta:
    description: Copy into an existing directory, transferring only files that differ (compared by checksum).
    type: bool
    default: false
  port:
    description: Port of the recovered server.
    type: int
  listen_addresses:
    description: listen_addresses of the recovered server.
    type: str
  settings:
    description:
      - More settings for the recovered server, by name, appended last to its C(postgresql.auto.conf) (so they
        win over the copied configuration), for example C(shared_buffers) on a smaller host.
    type: dict
    default: {}
  get_wal:
    description:
      - Fetch WAL during recovery with the WAL sender (O(wal_sender)) on the destination, which is then
        required. With V(false), the needed WAL is copied into C(barman_wal/) of the copy and fetched from there.
    type: bool
    default: true
  wal_sender:
    description:
      - The WAL sender command on the destination with its options (without C(get %f %p)), for
        C(restore_command). Required when O(get_wal=true), the default.
    type: list
    elements: str
  archive:
    description:
      - >-
        Let the recovered server archive and run its subscriptions (only for a server that replaces the
        original). Otherwise C(archive_mode=off) and C(max_logical_replication_workers=0), so that a copy
        never archives into the original's catalog nor consumes its publishers' replication slots.
    type: bool
    default: false
  hold_hours:
    description:
      - >-
        The recovery holds its backup and the WAL after it against retention and delete for this long,
        unless released earlier: with O(get_wal) (not O(standby)) the copy releases it itself when its recovery
        ends, at promotion (C(recovery_end_command)); recover.yml releases it once recovery reached its target
        (promote, pause, a standby streaming) when the copy's log does not say it did, with
        M(barman.postgresql.pg_backup_catalog) and the hold returned here.
    type: int
    default: 24
  pg_bindir:
    description:
      - >-
        Directory of C(pg_combinebackup) on the backup server, of the backup's major version, for an incremental
        backup (its chain is combined there before the copy; PostgreSQL 18 links the files instead of copying
        them). Default C(/usr/lib/postgresql/<major>/bin).
    type: path
  standby:
    description:
      - >-
        Recover as a standby of the cluster's current primary instead of to a target (the way to rebuild a lost
        replica from a backup rather than from the primary): C(standby.signal) instead of C(recovery.signal),
        C(primary_conninfo) to the member of O(members) that is the primary now (asked at the start), and
        C(recovery_target_timeline = latest); the archive is replayed first, then the standby streams. No
        recovery target may be given.
    type: bool
    default: false
  standby_user:
    description: The replication role the standby logs in as (C(LOGIN REPLICATION)).
    type: str
    default: streaming_barman
  standby_passfile:
    description:
      - The password file on the destination that C(primary_conninfo) names (C(passfile)), holding the password of
        O(standby_user); C(recover.yml) writes the line there. Never a password in the configuration.
    type: path
  standby_name:
    description: The standby's C(application_name) on the primary (C(synchronous_standby_names) uses it).
    type: str
  primary_slot_name:
    description: A replication slot on the primary for the standby (C(primary_slot_name)); it must exist there.
    type: str
  pg_port:
    description: Not used (each member has its port); here because the probe shares the connection options.
    type: int
    default: 5432
  pg_user:
    description: The backup role, which the backup server logs in as to ask each member whether it is the primary.
    type: str
    default: barman
  pg_password:
    description: Its password; by default C(~/.pgpass) of the user running the module.
    type: str
  pg_database:
    description: Database for that probe.
    type: str
    default: postgres
  pg_connect_timeout:
    description: Seconds to wait for each member.
    type: int
    default: 10
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      Builds the same plan a real run carries out (target, backup, WAL, destination, free space,
      settings) and refuses the same way; copies nothing and takes no hold.
"""

EXAMPLES = r"""
# pg1 runs at 10.0.0.11, the backup server at 10.0.0.21; pg_recover runs on the backup server as barman.

- name: Recover pg1 as it was at 03:12 UTC into a new directory on another host, on port 5433
  barman.postgresql.pg_recover:
    server: pg1
    target_time: '2026-11-24 03:12:00+00'
    destination_host: 10.0.0.12
    destination_user: postgres
    destination_directory: /var/lib/postgresql/15/pg1-recovered
    port: 5433
    listen_addresses: localhost
    get_wal: false  # that host has no key to the WAL receiver: the WAL needed goes along with the copy
  become: true
  become_user: barman

- name: Show the plan first (backup chosen, WAL needed, space), copying nothing
  barman.postgresql.pg_recover:
    server: pg1
    target_time: '2026-11-24 03:12:00+00'
    destination_host: 10.0.0.12
    destination_directory: /var/lib/postgresql/15/pg1-recovered
    get_wal: false
  check_mode: true
  register: plan

- name: Say what it would do
  ansible.builtin.debug:
    msg: >-
      backup {{ plan.backup_id }} (ended {{ plan.backup_end_time }}), WAL up to {{ plan.newest_wal }},
      {{ plan.space_needed }} bytes to {{ plan.destination }}

- name: Stop just before a bad transaction, and pause there to look before going on
  barman.postgresql.pg_recover:
    server: pg1
    target_xid: '734213'
    target_inclusive: false
    target_action: pause  # then SELECT pg_wal_replay_resume() to promote, or recover again elsewhere
    destination_host: 10.0.0.11
    destination_directory: /var/lib/postgresql/15/pg1-before-734213
    port: 6432
    get_wal: false

- name: Recover to a restore point made with pg_create_restore_point('before_upgrade')
  barman.postgresql.pg_recover:
    server: pg1
    target_name: before_upgrade
    destination_host: 10.0.0.11
    destination_directory: /var/lib/postgresql/15/pg1-before-upgrade
    port: 6432
    get_wal: false

- name: Recover up to an LSN and shut down there, for a copy to be started later
  barman.postgresql.pg_recover:
    server: pg1
    target_lsn: 16/B374D848
    target_action: shutdown
    destination_host: 10.0.0.11
    destination_directory: /srv/copies/pg1-16-B374D848
    get_wal: false

- name: The oldest backup, only to its end (the first consistent point), on its own timeline
  barman.postgresql.pg_recover:
    server: pg1
    backup_id: oldest
    target_immediate: true
    destination_host: 10.0.0.12
    destination_directory: /srv/copies/pg1-oldest
    get_wal: false

- name: A given backup, replaying every archived WAL after it
  barman.postgresql.pg_recover:
    server: pg1
    backup_id: 20261124T010000
    destination_host: 10.0.0.12
    destination_directory: /srv/copies/pg1-latest
    get_wal: false

- name: Put the tablespaces elsewhere (by name or oid); by default they go beside the new PGDATA
  barman.postgresql.pg_recover:
    server: pg1
    target_time: '2026-11-24 03:12:00+00'
    destination_host: 10.0.0.12
    destination_directory: /srv/copies/pg1
    tablespace_map:
      fast_ts: /srv/ssd/pg1-fast_ts
      '16390': /srv/hdd/pg1-archive_ts
    get_wal: false

- name: Refresh an earlier copy, sending only the files that differ
  barman.postgresql.pg_recover:
    server: pg1
    destination_host: 10.0.0.12
    destination_directory: /srv/copies/pg1-latest
    delta: true
    get_wal: false

- name: Keep the backup and its WAL from retention for three days while the copy is examined
  barman.postgresql.pg_recover:
    server: pg1
    target_name: before_upgrade
    destination_host: 10.0.0.12
    destination_directory: /srv/copies/pg1-before-upgrade
    get_wal: false
    hold_hours: 72
  register: recovered

- name: Release that hold once done with the copy
  barman.postgresql.pg_backup_catalog:
    server: pg1
    action: release-hold
    hold: "{{ recovered.hold }}"

# In place replaces pg1 itself. playbooks/recover.yml does these steps (recover_in_place=true) and asks
# for the confirmation below; by hand, stop pg1 and move its PGDATA and tablespaces aside between them.
- name: Refuse unless the operator named the server and its host
  ansible.builtin.assert:
    that: recover_in_place_confirm | default('') == 'pg1@10.0.0.11'
    fail_msg: >-
      Recovering pg1 in place stops it and moves its data aside: confirm with recover_in_place_confirm=pg1@10.0.0.11

- name: Plan the in-place recovery (the target, the WAL, the free space) before stopping anything
  barman.postgresql.pg_recover:
    server: pg1
    target_time: '2026-11-24 03:12:00+00'
    in_place: true
    destination_host: 10.0.0.11
    wal_sender: &wal_sender
      - /usr/local/lib/barman-postgresql/bin/barman-wal-sender
      - --ssh
      - barman@10.0.0.21
      - --identity-file
      - /var/lib/postgresql/.ssh/barman_pg1
      - --known-hosts
      - /var/lib/postgresql/.ssh/barman_known_hosts
  check_mode: true

- name: Recover into the original PGDATA, fetching WAL with pg1's own WAL sender; the copy archives again
  barman.postgresql.pg_recover:
    server: pg1
    target_time: '2026-11-24 03:12:00+00'
    in_place: true
    archive: true
    destination_host: 10.0.0.11
    wal_sender: *wal_sender
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
  sample: TARGET_BEFORE_BACKUP
chain:
  description: The backups the recovery restores, oldest first (the full backup, then each incremental); one for a full.
  returned: always
  type: list
  elements: str
combine:
  description: Where and how an incremental's chain is combined into one data directory; null for a full backup.
  returned: always
  type: str
standby_of:
  description: With O(standby), the member the standby streams from (the primary now); null otherwise.
  returned: always
  type: str
backup_id:
  description: The backup recovered.
  returned: always
  type: str
pgdata:
  description: The PGDATA the backup was taken from.
  returned: always
  type: str
pg_major:
  description: PostgreSQL major version of the backup.
  returned: always
  type: int
backup_tablespaces:
  description: The tablespaces of the backup and their original locations, by name.
  returned: always
  type: dict
backup_end_time:
  description: When that backup ended; recovery is consistent from there.
  returned: always
  type: str
backup_end_lsn:
  description: The LSN where that backup ended.
  returned: always
  type: str
target:
  description: The target, as given (none for the end of the archive).
  returned: always
  type: dict
destination:
  description: The directory recovered to (in check mode, the one it would be).
  returned: always
  type: str
tablespaces:
  description: Where each tablespace went, by name.
  returned: always
  type: dict
newest_wal:
  description: The newest archived WAL segment at the time of the recovery.
  returned: always
  type: str
minimum_end_lsn:
  description:
    - >-
      The LSN recovery must at least reach before the copy counts as recovered (into the newest
      archived segment with no target, an inclusive target LSN, else the backup's end). recover.yml
      compares it with where recovery ended.
  returned: always
  type: str
space_needed:
  description: Bytes the destination receives (the backup, and the WAL recovery holds there).
  returned: always
  type: int
hold:
  description: The hold this recovery keeps on its backup and WAL against retention and delete.
  returned: when copied
  type: str
hold_released_at_end:
  description: >-
    Whether the copy releases the hold itself when its recovery ends (O(get_wal), not O(standby): its
    C(recovery_end_command) asks the backup server over the WAL key). A copy that pauses or shuts down at its
    target ends its recovery later, when promoted. The copy's log says whether the release succeeded.
  returned: when copied
  type: bool
duration:
  description: Seconds the copy took.
  returned: when copied
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.barman.postgresql.plugins.module_utils import recovery
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def main():
    module = AnsibleModule(**recovery.module_spec(), supports_check_mode=True)
    try:
        result = recovery.recover(module.params, check_mode=module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    for warning in result.pop('warnings'):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
