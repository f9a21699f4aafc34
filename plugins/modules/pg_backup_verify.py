#!/usr/bin/python
# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
module: pg_backup_verify
short_description: Prove a backup restorable, by restoring it, starting it and checking it
description:
  - >-
    Runs on the backup server, as the user that owns the catalog (C(barman)). The copy runs on O(host) over SSH
    as O(user), an OS user of its own that can read neither the catalog nor any key (C(setup.yml) makes it,
    on the backup server itself too): the database's own code may run in a copy. Without O(host) the copy runs
    on this host as the module's own user, which only suits a disposable catalog.
  - >-
    Verifies O(backup_id), or the newest DONE backup without a passing verification (nothing to do when every
    DONE backup passed). The steps, each recorded: the backup's files against its C(backup_manifest)
    (C(pg_verifybackup), and size and checksum of the tablespace files, or of every file where the binary is
    missing) and every WAL from its begin to its end in the archive, which stop before anything is copied
    when they fail (a missing or unreadable manifest fails the step but does not stop the copy); a recovery
    into a new directory under O(directory), to the backup's end or, with O(replay=all), through the whole
    archive, started with C(pg_ctl); C(pg_checksums --check) on the cleanly stopped copy when data checksums
    are on; then, started again, C(pg_amcheck --all) and O(queries).
  - >-
    The outcome goes into C(meta/<backup_id>-verification.json) beside the backup's C(backup.info) (Barman
    ignores it), which C(pg_backup_catalog) list, check and retention read. The copy is then stopped and its
    directory removed, unless it failed and O(keep_failed) is set (a C(KEPT) file marks it). A copy left running
    by an earlier run that died (and not kept) is stopped and removed first.
  - >-
    The copy listens on its socket only, in its scratch directory, trusts that socket with a pg_hba file of its
    own, never archives and runs no subscription. The backup and the original server are never changed.
  - A failed verification fails the task with error code C(VERIFICATION_FAILED) and the whole outcome.
version_added: 1.1.0
author: barman.postgresql contributors (@barman-postgresql)
extends_documentation_fragment:
  - barman.postgresql.catalog
  - barman.postgresql.error_codes
options:
  backup_id:
    description:
      - The backup to verify (or V(latest), V(oldest)). Default is the newest DONE backup without a passing
        verification.
    type: str
  replay:
    description:
      - V(immediate) recovers to the backup's end (the first consistent point); V(all) replays every archived WAL
        after it too.
    type: str
    choices: [immediate, all]
    default: immediate
  directory:
    description:
      - The scratch directory on the verification host; each verification makes a new directory in it.
      - Must neither be nor contain the original data directory.
    type: path
    required: true
  port:
    description: The port of the copy (its socket's name; it listens on no TCP address). Not the original's.
    type: int
    required: true
  original_port:
    description: The original server's port, which the copy must not take.
    type: int
  host:
    description:
      - The verification host, reached over SSH as O(user); the backup server's own address to run the copy
        there (C(verify.yml) does). Without it, the copy runs as the module's own user on this host.
    type: str
  user:
    description: The OS user that runs the copy on O(host).
    type: str
    default: barman-verify
  ssh_port:
    description: The SSH port of O(host).
    type: int
  pg_bindir:
    description:
      - Where the PostgreSQL binaries of the backup's major version are on the verification host (C(pg_ctl),
        C(pg_controldata), C(pg_checksums), C(pg_amcheck), C(psql), and C(pg_verifybackup) when used).
      - Default is C(/usr/lib/postgresql/<major>/bin), the Debian and PGDG layout.
    type: path
  superuser:
    description: The superuser role of the original cluster, which the checks connect as.
    type: str
    default: postgres
  heapallindexed:
    description: Also check that every heap tuple has its index entries (C(pg_amcheck --heapallindexed), slower).
    type: bool
    default: false
  queries:
    description:
      - The user's own checks, run on the started copy; each must print exactly O(queries[].expect).
    type: list
    elements: dict
    default: []
    suboptions:
      sql:
        description: One SQL statement whose output (unaligned, tuples only) is compared.
        type: str
        required: true
      expect:
        description: The expected output, for example V(t) for C(SELECT count(*) > 0 FROM orders).
        type: raw
        required: true
      database:
        description: The database to run it in.
        type: str
        default: postgres
      name:
        description: A name for the check in the outcome.
        type: str
  settings:
    description:
      - Settings of the copy's C(postgresql.auto.conf) over the module's own, which give it no TCP address,
        no preloaded library, no autovacuum, C(huge_pages=try) and 128MB of C(shared_buffers).
    type: dict
    default: {}
  keep_failed:
    description: Keep the copy's directory (stopped) after a failed verification, for a human to look at.
    type: bool
    default: false
  timeout:
    description:
      - Seconds that C(pg_ctl) may take to start the copy, and again to see its recovery end; and to stop it.
    type: int
    default: 3600
  hold_hours:
    description: Hours that the verification holds the backup and its WAL against retention at most.
    type: int
    default: 24
notes:
  - Supports check mode, which chooses the backup and checks the verification host without copying anything.
"""

EXAMPLES = r"""
- name: Verify the newest unverified backup of pg1 on the backup server
  barman.postgresql.pg_backup_verify:
    server: pg1
    host: 192.0.2.21  # the backup server itself: the copy runs as barman-verify there
    directory: /var/lib/barman-verify/pg1
    port: 7432
    original_port: 5432
    queries:
      - sql: SELECT count(*) > 0 FROM orders
        database: shop
        expect: t
  become: true
  become_user: barman

- name: Verify a given backup on another host, replaying the whole archive after it
  barman.postgresql.pg_backup_verify:
    server: pg1
    backup_id: 20261124T021500
    replay: all
    host: 192.0.2.30
    directory: /var/lib/barman-verify/pg1
    port: 7432
    keep_failed: true
"""

RETURN = r"""
error_code:
  description:
    - The stable code of the refusal, one of those listed in the notes (C(msg) says the same in words, which may
      change); playbooks and AWX workflows react to this code. V(VERIFICATION_FAILED) when the backup failed.
    - Not returned when Ansible itself refuses the options before the module runs (a missing required option,
      a wrong type or choice); C(msg) says which.
  returned: on failure
  type: str
  sample: VERIFICATION_FAILED
result:
  description: V(PASSED), V(FAILED), or V(SKIPPED) when every DONE backup has passed already (null in check mode).
  returned: always
  type: str
  sample: PASSED
backup_id:
  description: The backup verified (null when skipped).
  returned: always
  type: str
why:
  description: Why this backup was chosen, or why none was.
  returned: always
  type: str
verified_at:
  description: When the verification ended, UTC, C(YYYY-MM-DDTHH:MM:SSZ).
  returned: when verified
  type: str
duration:
  description: Seconds the verification took.
  returned: when verified
  type: float
steps:
  description: Each step that ran, in order, with C(name), C(result) (PASSED, FAILED, SKIPPED) and C(detail).
  returned: when verified
  type: list
  elements: dict
failures:
  description:
    - What failed, each with C(step), C(message), and where known C(file), C(block), C(relation), C(wal), or
      C(query), C(expected) and C(got).
  returned: when verified
  type: list
  elements: dict
directory:
  description: In check mode, the directory the copy would go to.
  returned: in check mode
  type: str
pg_bindir:
  description: The binaries used on the verification host.
  returned: in check mode, and when verified
  type: str
kept:
  description: The directory of the copy kept after a failure (O(keep_failed)), else null.
  returned: when verified
  type: str
removed_leftovers:
  description:
    - Copies of earlier runs that died before their end (still running in the scratch directory, not kept), which
      this run stopped and removed.
  returned: when verified
  type: list
  elements: str
record:
  description: The file the outcome was recorded in.
  returned: when verified
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.barman.postgresql.plugins.module_utils import verify
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def main():
    module = AnsibleModule(**verify.module_spec(), supports_check_mode=True)
    try:
        result = verify.verify(module.params, check_mode=module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    if result['result'] == 'FAILED':
        module.fail_json(**verify.failed_verification(result).fail_json_kwargs())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
