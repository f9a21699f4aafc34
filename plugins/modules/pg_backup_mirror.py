#!/usr/bin/python
# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
module: pg_backup_mirror
short_description: Copy a server's backups from its primary backup server into a mirror's catalog
description:
  - >-
    Runs on the mirror backup server, as the user that owns its catalog. Reads the primary backup server's
    catalog of O(server) through the catalog reader, the forced command of the mirror's key there (it can only
    list and read the backups of the servers it mirrors), and copies each DONE backup newer than the mirror's
    newest copy (all of them into an empty mirror), oldest first, with C(rsync --link-dest) to the mirror's
    previous copy (unchanged files are hard links): never from PostgreSQL.
  - >-
    A copy goes to C(base/.mirror-<backup_id>.partial) (a failed run leaves it for the next one to resume),
    is checked file by file against the backup's C(backup_manifest) (a backup without one, such as one Barman
    took, is compared by content with the primary's by rsync), renamed, and only then gets its C(backup.info),
    the primary's text as it is: a partial copy never appears in the catalog.
  - >-
    WAL is not copied here: the primary's WAL receiver forwards every archived file to its mirrors as it
    arrives (C(barman-wal-forwarder)). The result reports how far the mirror's WAL is behind.
  - >-
    The catalog is marked as a mirror (C(mirror.json)); a catalog written as a primary (with backups or WAL
    of its own, e.g. a former primary come back) is refused. O(action=promote) makes a mirror's catalog a
    primary's when its server archives here from now on.
version_added: 1.2.0
author: barman.postgresql contributors (@barman-postgresql)
extends_documentation_fragment:
  - barman.postgresql.catalog
  - barman.postgresql.error_codes
options:
  action:
    description:
      - V(sync) copies what the mirror lacks; V(claim) only marks the catalog as a mirror of O(primary) (setup.yml,
        before the primary forwards WAL here); V(promote) removes the mirror mark (its server archives here now).
    type: str
    choices: [sync, claim, promote]
    default: sync
  primary:
    description: The inventory name of the primary backup server (recorded in the mirror mark).
    type: str
  primary_ssh:
    description: C(user@address) of the primary backup server's catalog owner.
    type: str
  primary_port:
    description: The SSH port of the primary backup server.
    type: int
    default: 22
  primary_barman_home:
    description: The catalog's root directory on the primary backup server.
    type: path
    default: /var/lib/barman
  identity_file:
    description: The mirror's key, admitted by the primary only for its catalog reader.
    type: path
  known_hosts_file:
    description: The file that holds the primary backup server's host keys (verified, never learnt).
    type: path
  bandwidth_limit:
    description: KiB/s for the copy of a backup (rsync C(--bwlimit)), to spare a link between sites; V(0) for no limit.
    type: int
    default: 0
"""

EXAMPLES = r"""
- name: Copy pg1's new backups from backup1 into this mirror
  barman.postgresql.pg_backup_mirror:
    server: pg1
    barman_home: /var/lib/barman
    primary: backup1
    primary_ssh: barman@backup1.example.com
    primary_barman_home: /var/lib/barman
    identity_file: /var/lib/barman/.ssh/barman_mirror
    known_hosts_file: /var/lib/barman/.ssh/known_hosts
  become: true
  become_user: barman
  delegate_to: backup-dr

- name: The site of backup1 is lost; pg1 archives into backup-dr from now on
  barman.postgresql.pg_backup_mirror:
    server: pg1
    action: promote
"""

RETURN = r"""
error_code:
  description: The stable code of the refusal, one of those listed in the notes; C(msg) says the same in words.
  returned: on failure
  type: str
  sample: MIRROR_REFUSED
server:
  description: The server.
  returned: always
  type: str
mirror_of:
  description: The primary backup server.
  returned: action is sync or claim
  type: str
claimed:
  description: Whether this run marked the catalog as a mirror (first run, or a new primary).
  returned: action is sync
  type: bool
copied:
  description:
    - The backups copied, each with backup_id, bytes, linked_from, seconds and checked_by (V(manifest), or
      V(content) for a backup without a manifest, such as one Barman took, compared file by file with the primary's).
  returned: action is sync
  type: list
  elements: dict
missing:
  description: The DONE backups of the primary still missing here (in check mode, what a run would copy).
  returned: action is sync
  type: list
  elements: str
swept_partials:
  description: Partial copies removed because the primary no longer has their backup.
  returned: action is sync, not in check mode
  type: list
  elements: str
lag:
  description:
    - The mirror's WAL behind the primary's; mirror_of, newest (here), primary_newest, behind_segments and
      behind_seconds (since the oldest segment missing here arrived on the primary).
  returned: action is sync, not in check mode
  type: dict
holds_wal:
  description: Whether the mirror's catalog indexes any WAL yet (none - the primary sends it its whole archive).
  returned: action is claim
  type: bool
was_mirror_of:
  description: The former primary of a promoted catalog (null when it was a primary's already).
  returned: action is promote
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.barman.postgresql.plugins.module_utils import mirror
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def main():
    module = AnsibleModule(**mirror.module_spec(), supports_check_mode=True)
    try:
        result = mirror.run_action(module.params, check_mode=module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
