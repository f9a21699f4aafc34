#!/usr/bin/python
# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
module: pg_wal_archive
short_description: Check, process and re-index the WAL archive of a PostgreSQL server
description:
  - Runs on the backup server, as the user that owns the catalog (C(barman)).
  - >-
    V(check) proves that archiving works. It makes PostgreSQL switch to a new WAL segment, waits until
    the closed segment arrives in the archive, then checks that the archive is continuous from the
    first WAL of the oldest backup kept for point-in-time recovery (or the oldest archived segment) to
    the newest one, following timeline switches. It fails when a segment does not arrive or a segment
    is missing, and says which.
  - >-
    As in Barman, an older backup kept C(standalone) needs only its own WAL (retention removes the WAL
    after it): its WAL is an island, reported in RV(islands) and checked on its own, not a gap.
  - >-
    V(check) also removes what killed processes left behind, once nothing has changed it for an hour:
    temporary files in C(incoming/) and C(wals/), and the C(base/.<backup_id>.deleting) directory of an
    interrupted delete (only when no backup or catalog change runs). V(process) removes such temporary
    files too.
  - >-
    V(process) moves WAL files delivered to C(incoming/) (by the WAL receiver, or by a plain rsync
    C(archive_command)) into C(wals/), compressed and indexed in C(xlog.db); a file that differs from
    the archived file of the same name is moved to C(errors/), never over it.
  - V(rebuild) rewrites C(xlog.db) from the files in C(wals/).
version_added: 1.0.0
author: barman.postgresql contributors (@barman-postgresql)
extends_documentation_fragment:
  - barman.postgresql.catalog
  - barman.postgresql.postgres
  - barman.postgresql.error_codes
options:
  action:
    description:
      - What to do.
    type: str
    choices: [check, process, rebuild]
    default: check
  compression:
    description:
      - Compression of the files V(process) stores in C(wals/). V(zstd) and V(lz4) need those programs.
    type: str
    choices: [gzip, zstd, lz4, none]
    default: gzip
  switch_wal:
    description:
      - With V(check), switch WAL on the server and wait for the segment. Needs O(pg_host).
      - Without it (or without O(pg_host)), only the archive on disk is checked.
    type: bool
    default: true
  timeout:
    description:
      - Seconds V(check) waits for the switched segment to arrive.
    type: int
    default: 60
  segment_size:
    description:
      - WAL segment size in bytes. Discovered from the server when O(pg_host) is given.
    type: int
  first_wal:
    description:
      - Check continuity from this segment rather than from the oldest archived one.
    type: str
  fail_on_problem:
    description:
      - Fail when V(check) finds a problem. With V(false) the problems are only returned.
    type: bool
    default: true
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      V(check) is read-only (the WAL switch and the removal of leftovers are skipped); V(process) and
      V(rebuild) report what they would do.
notes:
  - The restricted SSH key of each PostgreSQL server delivers to the WAL receiver, which validates each
    file (name, size, header, system identifier, sha256), stores it durably in C(incoming/) and processes
    it in the background; V(process) is for what a plain rsync C(archive_command) delivers, and repairs.
  - >-
    The receiver refuses a file PostgreSQL would not archive next, and stores nothing of it: WAL more than
    64 GiB past the newest WAL that the archive holds or a backup recorded, or WAL of a timeline whose
    history file the archive does not hold (PostgreSQL archives it first). After a real jump (archiving
    was off while the server wrote that much), a backup vouches for the new position.
"""

EXAMPLES = r"""
- name: Prove that pg1 archives (switch WAL, wait for it, check continuity)
  barman.postgresql.pg_wal_archive:
    server: pg1
    pg_host: 127.0.0.11
    pg_port: 5432
  become: true
  become_user: barman

- name: Compress and index what a plain rsync archive_command delivered
  barman.postgresql.pg_wal_archive:
    server: pg1
    action: process
    compression: zstd

- name: Report gaps without failing
  barman.postgresql.pg_wal_archive:
    server: pg1
    switch_wal: false
    fail_on_problem: false
  register: archive

- name: Show them
  ansible.builtin.debug:
    msg: "{{ archive.continuity.missing }}"
"""

RETURN = r"""
error_code:
  description:
    - The stable code of the refusal, one of those listed in the notes (C(msg) says the same in words, which may
      change); playbooks and AWX workflows react to this code.
    - Not returned when Ansible itself refuses the options before the module runs (a missing required option,
      a wrong type or choice); C(msg) says which.
    - Not returned when V(check) fails for the problems it found (O(fail_on_problem)); RV(problems) lists them.
  returned: on failure
  type: str
  sample: NO_SUCH_SERVER
switched_wal:
  description: The segment closed by the WAL switch (V(check)).
  returned: when a switch was made
  type: str
  sample: 000000010000000000000007
arrival_seconds:
  description: How long the switched segment took to arrive.
  returned: when a switch was made
  type: float
mirror:
  description:
    - On a mirror backup server (a catalog marked as a copy of its primary's), how far its WAL is behind the
      primary's, asked of the primary's catalog reader; mirror_of, newest (here), primary_newest,
      behind_segments, and behind_seconds (since the oldest segment missing here arrived on the primary).
  returned: with V(check) on a mirror's catalog
  type: dict
continuity:
  description: The archive from its first to its last segment.
  returned: with V(check)
  type: dict
  contains:
    first:
      description: First segment checked.
      type: str
    last:
      description: Newest archived segment on the newest timeline.
      type: str
    timeline:
      description: Newest timeline.
      type: int
    segments:
      description: Segments present between first and last.
      type: int
    missing:
      description: Missing ranges, each a list of its first and last segment.
      type: list
      elements: list
    ok:
      description: No segment is missing.
      type: bool
islands:
  description: >-
    The backups kept C(standalone) that are older than the oldest backup kept for point-in-time recovery:
    each one's own WAL, and whether it is all in the archive.
  returned: with V(check)
  type: list
  elements: dict
  contains:
    backup_id:
      description: The backup.
      type: str
    begin_wal:
      description: Its first segment.
      type: str
    end_wal:
      description: Its last segment.
      type: str
    segments:
      description: Segments of the range present.
      type: int
    missing:
      description: Missing ranges, each a list of its first and last segment.
      type: list
      elements: list
    ok:
      description: The backup's WAL is all there.
      type: bool
swept:
  description: >-
    Leftovers of killed processes that V(check) removed (paths): stale temporary files and half-deleted
    backup directories.
  returned: with V(check)
  type: list
  elements: str
incoming_backlog:
  description: Files delivered but not yet compressed into C(wals/).
  returned: with V(check)
  type: list
  elements: str
archiver:
  description: PostgreSQL's C(pg_stat_archiver) (counts of archived and failed WAL files).
  returned: with V(check) when O(pg_host) is given
  type: dict
problems:
  description: What V(check) found wrong, one sentence each.
  returned: with V(check)
  type: list
  elements: str
archived:
  description: Files V(process) moved into C(wals/).
  returned: with V(process)
  type: list
  elements: str
errors:
  description: Files V(process) moved to C(errors/), with the reason.
  returned: with V(process)
  type: list
  elements: dict
added:
  description: Files V(rebuild) added to C(xlog.db).
  returned: with V(rebuild)
  type: list
  elements: str
removed:
  description: Entries V(rebuild) removed from C(xlog.db) (no file behind them).
  returned: with V(rebuild)
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.barman.postgresql.plugins.module_utils import archive_actions
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def main():
    module = AnsibleModule(**archive_actions.module_spec(), supports_check_mode=True)
    try:
        result = archive_actions.run_action(module.params, module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    if result.get('problems') and module.params['fail_on_problem']:
        module.fail_json(msg=' '.join(result['problems']), **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
