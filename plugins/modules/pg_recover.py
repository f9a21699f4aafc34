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
  - barman.postgresql.catalog
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
    description: OS user that will own the copy (the one that runs PostgreSQL there).
    type: str
    default: postgres
  destination_port:
    description: SSH port of the destination host.
    type: int
  destination_directory:
    description:
      - The PGDATA to create. It must be empty or absent unless O(delta). Required unless O(in_place), or in
        check mode, where without it the plan leaves out the destination's checks.
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
  get_wal:
    description:
      - Fetch WAL during recovery with the WAL sender (O(wal_sender)) on the destination. With V(false),
        the needed WAL is copied into C(barman_wal/) of the copy and fetched from there.
    type: bool
    default: true
  wal_sender:
    description:
      - The WAL sender command on the destination with its options (without C(get %f %p)), for
        C(restore_command).
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
        unless released earlier (recover.yml releases it once recovery reached its target, with
        M(barman.postgresql.pg_backup_catalog) and the hold returned here).
    type: int
    default: 24
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      Builds the same plan a real run carries out (target, backup, WAL, destination, free space,
      settings) and refuses the same way; copies nothing and takes no hold.
"""

EXAMPLES = r"""
- name: Recover pg1 as it was at 03:12 UTC into a new directory, on port 5433
  barman.postgresql.pg_recover:
    server: pg1
    target_time: '2026-11-24 03:12:00+00'
    destination_host: 10.0.0.11
    destination_directory: /var/lib/postgresql/15/pg1-recovered
    port: 5433
    get_wal: false
  become: true
  become_user: barman
"""

RETURN = r"""
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
  description: The directory recovered to.
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
duration:
  description: Seconds the copy took.
  returned: when copied
  type: float
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.barman.postgresql.plugins.module_utils import catalog, recovery
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def main():
    spec = recovery.recovery_argument_spec()
    spec.update(catalog.catalog_argument_spec())
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    try:
        result = recovery.recover(module.params, check_mode=module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    for warning in result.pop('warnings'):
        module.warn(warning)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
