# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


class ModuleDocFragment:
    # The members of a replication cluster (module_utils/cluster.py), as the playbooks pass them
    # (the cluster_members filter).
    DOCUMENTATION = r"""
options:
  members:
    description:
      - >-
        The members of the server's replication cluster (a primary and its standbys, which share one catalog), as
        the backup server reaches each; the module asks each whether it is in recovery, so that nothing in the
        inventory says which one is the primary and a failover needs no change. Without it, the one server of
        C(pg_host). The playbooks pass them (the P(barman.postgresql.cluster_members#filter) filter).
      - M(barman.postgresql.pg_basebackup_rsync) copies the member its C(backup_from) chooses;
        M(barman.postgresql.pg_recover) with C(standby) streams from the primary;
        M(barman.postgresql.pg_backup_catalog) C(check) reads the primary's archiver statistics.
    type: list
    elements: dict
    suboptions:
      name:
        description: The member's name (its inventory name), for messages and the record of the source.
        type: str
        required: true
      pg_host:
        description: Its address for libpq.
        type: str
        required: true
      pg_port:
        description: Its port.
        type: int
        default: 5432
      ssh_host:
        description: Its address for SSH (rsync of a backup); default its O(members[].pg_host).
        type: str
"""
