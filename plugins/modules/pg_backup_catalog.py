#!/usr/bin/python
# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
module: pg_backup_catalog
short_description: List, show, keep, delete and prune backups, and check the health of a server's archive
description:
  - Runs on the backup server, as the user that owns the catalog (C(barman)). The catalog is the one
    Barman lays out, so Barman and this module read each other's backups.
  - V(list) the backups of one server or of all, with their status, times, WAL range, sizes, the WAL
    archived since each, keep annotation, last verification and, given O(retention_policy), retention status.
  - V(show) one backup, by id or by V(latest)/V(last), V(oldest)/V(first) or V(last-failed).
  - V(keep) a backup (O(target) V(full) keeps every WAL from it on, V(standalone) only what makes it
    consistent) so that retention never removes it; V(release) the annotation.
  - V(delete) one backup and the WAL only it needed. A kept backup, a backup still being taken, and a
    backup whose removal leaves fewer DONE backups than O(minimum_redundancy) (at least one) are refused.
  - V(retention) applies O(retention_policy) (C(REDUNDANCY n) or C(RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS))
    as Barman does. It removes OBSOLETE backups, FAILED backups older than the oldest backup it keeps, and the
    WAL no remaining backup needs, wherever it is in the archive (indexed in C(xlog.db), or delivered to
    C(incoming/) and not compressed yet). Timeline history files are never removed.
  - V(delete) and V(retention) first plan, then remove exactly the plan; in check mode they return the same
    plan (RV(removed_backups), RV(removed_wal_names)) and remove nothing. WAL that arrives meanwhile is never
    removed by a run that did not plan it.
  - A running recovery holds its backup (pg_recover takes the hold, C(recover.yml) releases it when the copy
    has reached its target). Retention keeps a held backup (status C(HELD)) and every WAL file from its
    begin_wal on, and V(delete) refuses it. A hold expires after its time to live; an expired hold protects
    nothing, is reported, and the next V(retention) removes it. V(release-hold) removes a hold by its
    O(hold) token (see RV(servers[].holds)).
  - Retention also keeps the newest backup whose last verification (C(verify.yml)) PASSED while every newer
    DONE backup is unverified or FAILED (status C(LAST_VERIFIED)), with every WAL file from its begin_wal on,
    so that a backup proven to restore always remains. Removing a backup removes its
    verification record.
  - >-
    Block-level incremental backups (C(backup_method=postgres)) form chains: as Barman does, a policy counts full
    backups only and each incremental takes its full backup's status; every ancestor of a backup that stays
    stays too (status C(NEEDED_BY_CHILD), not a Barman status), and V(delete) refuses the parent of
    incrementals (C(BACKUP_HAS_CHILDREN)) unless O(force), which deletes it and every backup built on it.
  - >-
    V(manifest) writes a C(backup_manifest) (PostgreSQL's format, which C(pg_verifybackup) reads) into each DONE
    backup without one, O(backup_id) or every one, for backups taken before manifests existed (every backup
    writes its own since). It records the files as they are now, so it cannot tell a change made before it; the
    restore and checks of C(verify.yml) still can. Idempotent; check mode lists the backups it would write.
  - V(check) the health of one server or all; each check is ok, warning or critical, and a Nagios line
    sums them up. Read-only actions never report a change.
  - The C(verification) check is critical when the newest DONE backup FAILED its last verification, and a
    warning when the newest backup that PASSED one was verified longer ago than O(verify_max_age), or, when
    none ever passed, when the oldest DONE backup ended longer ago than that (a new server has time for its
    first verification).
  - A catalog file that cannot be read is reported by name; V(delete) and V(retention) then refuse to
    change anything, and nothing is ever skipped or deleted because it could not be read.
version_added: 1.0.0
author: barman.postgresql contributors (@barman-postgresql)
extends_documentation_fragment:
  - barman.postgresql.members
  - barman.postgresql.postgres
  - barman.postgresql.error_codes
options:
  action:
    description: What to do.
    type: str
    choices: [list, show, check, keep, release, delete, retention, release-hold, manifest]
    default: list
  server:
    description:
      - The server's name in the catalog. Without it, V(list) and V(check) cover every server; every other
        action, and O(pg_host), need it.
    type: str
  barman_home:
    description: The catalog's root directory.
    type: path
    default: /var/lib/barman
  backup_id:
    description:
      - The backup for V(show), V(keep), V(release) and V(delete), which need it; an id (C(YYYYMMDDTHHMMSS)) or
        V(latest), V(last), V(oldest), V(first), V(last-failed).
    type: str
  target:
    description: What V(keep) keeps.
    type: str
    choices: [full, standalone]
    default: full
  hold:
    description:
      - The token of the recovery hold V(release-hold) removes (it needs one), as pg_recover returned it and
        V(list) shows it, for example C(20261124T031200-0123456789abcdef). Releasing a hold that is not there
        changes nothing.
    type: str
  retention_policy:
    description:
      - C(REDUNDANCY n) or C(RECOVERY WINDOW OF n DAYS|WEEKS|MONTHS). Needed by V(retention); with
        V(list) and V(check) it adds each backup's retention status.
    type: str
  minimum_redundancy:
    description:
      - DONE backups that are never removed, whatever the policy. The newest DONE backup always stays.
    type: int
    default: 1
  last_backup_maximum_age:
    description:
      - V(check) turns critical when the newest DONE backup ended longer ago, for example C(26 HOURS) or
        C(1 WEEKS). Units MINUTES, HOURS, DAYS, WEEKS, MONTHS.
    type: str
  wal_maximum_age:
    description:
      - V(check) turns critical when the newest WAL arrived longer ago (same syntax). Leave it unset
        for servers that can be idle; O(pg_host) detects a failing C(archive_command) anyway.
    type: str
  verify_max_age:
    description:
      - V(check) warns when the newest backup whose verification PASSED was verified longer ago (same syntax);
        a server never verified warns once its oldest DONE backup ended longer ago.
      - An empty string skips this age; a FAILED verification of the newest backup is critical whatever it is.
    type: str
    default: 8 DAYS
  disk_warning_percent:
    description: V(check) warns below this percentage of free space on the catalog's file system.
    type: int
    default: 10
  disk_critical_percent:
    description: V(check) turns critical below this percentage of free space.
    type: int
    default: 5
  query:
    description:
      - A JMESPath expression applied to the result; its answer is returned as RV(query_result).
    type: str
  fail_on_critical:
    description: Fail V(check) when a check is critical (for monitoring); by default only report it.
    type: bool
    default: false
  force:
    description:
      - >-
        With V(delete) of the parent of incremental backups, delete it and every backup built on it (each must be
        deletable: not kept, not held). Without it such a delete is refused.
    type: bool
    default: false
  mirrored:
    description:
      - >-
        With V(retention) on a primary backup server: the backup ids each of its mirrors holds, by mirror name.
        A DONE backup that one of them lacks is not removed (status C(WAITING_FOR_MIRROR)), nor its WAL, until
        that mirror has copied it.
    type: dict
  mirror_lag_warning:
    description: With V(check) on a mirror's catalog, the seconds its WAL may lag behind its primary's before WARNING.
    type: int
    default: 300
  mirror_lag_critical:
    description: With V(check) on a mirror's catalog, the seconds its WAL may lag behind its primary's before CRITICAL.
    type: int
    default: 3600
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: >-
      V(delete), V(retention), V(keep), V(release), V(release-hold) and V(manifest) report exactly what they
      would change; V(delete) and V(retention) return the very plan a real run then removes.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: The list of backups before and after (V(release-hold), the hold; V(manifest), the backups without one).
notes:
  - V(check) reads C(pg_stat_archiver) on the server when O(pg_host) is given (one server at a time).
  - Changes take the server's backup lock (Barman's C(.<server>-backup.lock)); a running backup makes them fail.
    V(delete) and V(retention) also take the C(.<server>-recovery-hold.lock) that a recovery takes to write its
    hold, so that a retention run either ends before a recovery's hold exists, or sees it.
  - Recovery holds are JSON files in C(<barman_home>/<server>/recovery-holds/), a directory Barman ignores.
requirements:
  - jmespath on the backup server, for O(query)
"""

EXAMPLES = r"""
- name: List pg1's backups with their retention status
  barman.postgresql.pg_backup_catalog:
    server: pg1
    retention_policy: RECOVERY WINDOW OF 7 DAYS
  become: true
  become_user: barman
  register: catalog

- name: Ids of the DONE backups of every server
  barman.postgresql.pg_backup_catalog:
    query: "servers[].backups[?status=='DONE'].backup_id"
  register: done

- name: Keep the newest backup for ever (with all WAL after it)
  barman.postgresql.pg_backup_catalog:
    server: pg1
    action: keep
    backup_id: latest

- name: What would the policy remove? (check mode shows it, removes nothing)
  barman.postgresql.pg_backup_catalog:
    server: pg1
    action: retention
    retention_policy: REDUNDANCY 3
    minimum_redundancy: 2
  check_mode: true

- name: Release a recovery's hold on its backup (recover.yml does it when the copy reached its target)
  barman.postgresql.pg_backup_catalog:
    server: pg1
    action: release-hold
    hold: 20261124T031200-0123456789abcdef

- name: Health, failing when something is critical
  barman.postgresql.pg_backup_catalog:
    server: pg1
    action: check
    last_backup_maximum_age: 26 HOURS
    verify_max_age: 8 DAYS
    pg_host: 10.0.0.11
    fail_on_critical: true
"""

RETURN = r"""
error_code:
  description:
    - The stable code of the refusal, one of those listed in the notes (C(msg) says the same in words, which may
      change); playbooks and AWX workflows react to this code.
    - Not returned when Ansible itself refuses the options before the module runs (a missing required option,
      a wrong type or choice); C(msg) says which.
    - Not returned when V(check) fails for a critical check (O(fail_on_critical)); RV(status) and RV(nagios) say why.
  returned: on failure
  type: str
  sample: MINIMUM_REDUNDANCY
servers:
  description: One entry per server (V(list), V(check)).
  returned: with list and check
  type: list
  elements: dict
  contains:
    server:
      description: Server name.
      type: str
    backups:
      description: >-
        Oldest first: backup_id, status, begin_time, end_time, begin_wal, end_wal, begin_xlog, end_xlog,
        timeline, size, deduplicated_size, wal_size and wal_count (WAL from this backup to the next),
        keep, holds (tokens of the recovery holds on it), retention_status, error, and verification: null
        when never verified, else the last verification's result (PASSED or FAILED), verified_at (UTC,
        C(YYYY-MM-DDTHH:MM:SSZ)), duration (seconds), failure_count and first_failure (C(step: message)).
      type: list
      elements: dict
    wal_count:
      description: WAL files in the archive index.
      type: int
    wal_size:
      description: Their bytes on disk.
      type: int
    holds:
      description: >-
        With V(list), the recovery holds, oldest first: token, backup_id, begin_wal, destination, started,
        expires, and stale (true once expired: it protects nothing any more). Each backup lists the tokens
        of the holds on it in its own C(holds).
      type: list
      elements: dict
    malformed:
      description: >-
        Catalog files that could not be read (recovery holds and verification records too), each with path
        and error.
      type: list
      elements: dict
    last_verified:
      description: >-
        The newest DONE backup whose last verification PASSED: backup_id and verified_at; null when none has.
      type: dict
    latest_verification:
      description: >-
        The newest DONE backup (backup_id) and its last verification: result (PASSED, FAILED, or null when
        never verified), verified_at, first_failure; null without a DONE backup.
      type: dict
    checks:
      description: With V(check), each with name, status (ok, warning, critical) and message.
      type: list
      elements: dict
    status:
      description: With V(check), the worst check.
      type: str
    nagios:
      description: With V(check), a Nagios-style line.
      type: str
    window:
      description: >-
        With V(check), the recoverable window: first_recoverable_time, last_wal, last_wal_time, and
        gaps (first, last, after_time, before_time).
      type: dict
status:
  description: Worst status over all servers (V(check)).
  returned: with check
  type: str
  sample: critical
nagios:
  description: One Nagios line per server (V(check)).
  returned: with check
  type: str
  sample: "BARMAN OK - pg1: 8 checks ok"
backup:
  description: >-
    Every backup.info field of the backup, and what V(list) shows of it (V(show)); its verification also has
    the host, replay, steps (name, result, detail) and failures (step, message, ...) of the record.
  returned: with show
  type: dict
backup_id:
  description: The backup acted on.
  returned: with show, keep, release and delete
  type: str
keep:
  description: The keep annotation after V(keep) or V(release).
  returned: with keep and release
  type: str
removed_backups:
  description: Backups removed (or that would be, in check mode).
  returned: with delete and retention
  type: list
  elements: str
removed_wals:
  description: How many WAL files were removed (or would be).
  returned: with delete and retention
  type: int
removed_wal_names:
  description: >-
    The WAL files removed (or that would be), in name order: the plan, the same in check mode and in the
    real run on the same archive.
  returned: with delete and retention
  type: list
  elements: str
removed_wal_size:
  description: Their bytes.
  returned: with delete and retention
  type: int
first_removed_wal:
  description: Oldest WAL file removed.
  returned: with delete and retention
  type: str
last_removed_wal:
  description: Newest WAL file removed.
  returned: with delete and retention
  type: str
retention_status:
  description: >-
    The retention status of every backup before the removal; C(HELD) (not a Barman status) for a backup the
    policy makes obsolete while a recovery holds it, C(LAST_VERIFIED) (not a Barman status either) for the
    newest backup that PASSED its verification, kept while every newer one is unverified or FAILED;
    C(NEEDED_BY_CHILD) (ours too) for the parent of an incremental backup that stays.
  returned: with retention
  type: dict
holds:
  description: >-
    With V(delete) and V(retention), the recovery holds that were respected (token, backup_id, begin_wal,
    destination, started, expires).
  returned: with delete and retention
  type: list
  elements: dict
removed_stale_holds:
  description: Tokens of expired recovery holds removed (or that would be).
  returned: with delete and retention
  type: list
  elements: str
hold:
  description: The token V(release-hold) acted on.
  returned: with release-hold
  type: str
released:
  description: Whether that hold existed (and was removed, outside check mode).
  returned: with release-hold
  type: bool
manifests_written:
  description: The backups that got a C(backup_manifest) (or would, in check mode).
  returned: with manifest
  type: list
  elements: str
written:
  description: Per backup written, C(files), C(bytes), C(hashed_bytes) and C(seconds).
  returned: with manifest
  type: dict
query_result:
  description: The answer of O(query).
  returned: when query is given
  type: raw
"""

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible_collections.barman.postgresql.plugins.module_utils import catalog_actions
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

try:
    import jmespath
except ImportError:
    jmespath = None
    JMESPATH_IMPORT_ERROR = traceback.format_exc()
else:
    JMESPATH_IMPORT_ERROR = None


def main():
    module = AnsibleModule(**catalog_actions.module_spec(), supports_check_mode=True)
    params = module.params
    if params['query'] and jmespath is None:
        module.fail_json(msg=missing_required_lib('jmespath'), exception=JMESPATH_IMPORT_ERROR)
    try:
        result = catalog_actions.run_action(params, check_mode=module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    if not module._diff:
        result.pop('diff', None)
    if params['query']:
        try:
            result['query_result'] = jmespath.search(params['query'], result)
        except jmespath.exceptions.JMESPathError as exc:
            module.fail_json(msg='The query %r is not valid JMESPath: %s' % (params['query'], exc))
    if params['action'] == 'check' and params['fail_on_critical'] and result['status'] == 'critical':
        module.fail_json(msg=result['nagios'], **result)
    module.exit_json(**result)


if __name__ == '__main__':
    main()
