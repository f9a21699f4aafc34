#!/usr/bin/python
# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)


DOCUMENTATION = r"""
module: pg_backup_cloud
short_description: Copy a server's backups and WAL into an S3 bucket, keep its retention, stage a recovery from it
description:
  - >-
    The bucket is one more copy of a backup server's catalog, made from the catalog (never from PostgreSQL), in the
    layout C(barman-cloud-backup) and C(barman-cloud-wal-archive) write, so that Barman's cloud tools
    (C(barman-cloud-backup-list), C(barman-cloud-restore), C(barman-cloud-wal-restore)) read it and this module
    reads what they wrote. Under C(<prefix>/<server>/), C(base/<backup_id>/) holds C(data.tar) (or C(data.tar.gz)),
    one C(<oid>.tar) per tablespace and C(backup.info), and C(wals/) the WAL, compressed as the catalog keeps it.
  - >-
    V(sync) runs on the backup server, as the catalog's owner: every DONE backup newer than the bucket's newest
    (all of them into an empty bucket) goes up as multipart uploads, in parts sent O(parallel) at a time, its
    C(backup.info) last, so a backup is listed only once all its data is there; an upload cut short (the endpoint
    gone) is resumed by the next run, the parts already there not sent again. Then the WAL the bucket lacks,
    never writing a name it already holds. The result says how far the bucket's WAL is behind the catalog's.
  - >-
    V(retention) applies the bucket's own policy to the backups there (a keep in the catalog counts), never
    removing the newest one nor the WAL a remaining backup needs. V(check) only reads.
  - >-
    V(stage) runs on the host to recover when no backup server is left: it rebuilds under O(barman_home) a catalog
    of the server from the bucket alone (the backup the target needs, its parents, its WAL up to the target), which
    M(barman.postgresql.pg_recover) then recovers from. A target before every backup, past the newest WAL, or
    beyond a gap is refused before any backup data is fetched.
  - >-
    Before anything is written: the bucket must exist, the credentials must be accepted, and the bucket must not
    hold another cluster's backups (another system identifier) under this server's name. The credentials are never
    shown in a result or log.
version_added: 1.3.0
author: barman.postgresql contributors (@barman-postgresql)
extends_documentation_fragment:
  - barman.postgresql.catalog
  - barman.postgresql.error_codes
requirements:
  - boto3 (Debian's python3-boto3) on the host that runs the module
options:
  action:
    description: What to do; see the description.
    type: str
    choices: [sync, check, retention, stage]
    default: sync
  bucket:
    description: The bucket's name. barman.postgresql never creates a bucket.
    type: str
    required: true
  prefix:
    description: The path inside the bucket under which each server has its C(<server>/) folder.
    type: str
    default: ''
  endpoint_url:
    description: The S3 endpoint (MinIO, Ceph RGW...); AWS's own by default.
    type: str
  region:
    description: The bucket's region.
    type: str
    default: us-east-1
  addressing_style:
    description: How the bucket is named in requests (V(path) for endpoints addressed by IP).
    type: str
    choices: [auto, path, virtual]
    default: auto
  access_key_id:
    description: The access key; without it, boto3's usual chain (environment, C(~/.aws), instance role).
    type: str
  secret_access_key:
    description: The secret key of O(access_key_id).
    type: str
  session_token:
    description: A session token, for temporary credentials.
    type: str
  profile:
    description: A profile of C(~/.aws/credentials) instead of keys.
    type: str
  encryption:
    description: Server-side encryption of what is written.
    type: str
    choices: [none, AES256, aws:kms]
    default: none
  kms_key_id:
    description: The KMS key of O(encryption=aws:kms) (the bucket's default key without it).
    type: str
  storage_class:
    description: The storage class of what is written (STANDARD_IA...); the bucket's default without it.
    type: str
  timeout:
    description: Seconds to wait for the endpoint to connect or answer before a request is retried.
    type: int
    default: 60
  parallel:
    description: Parts or files sent (or fetched) at once.
    type: int
    default: 4
  compression:
    description: How the tars of a backup are written (V(sync)); WAL keeps the catalog's compression.
    type: str
    choices: [none, gzip]
    default: none
  retention_policy:
    description: The bucket's policy, in Barman's words (V(REDUNDANCY 4), V(RECOVERY WINDOW OF 30 DAYS)).
    type: str
  minimum_redundancy:
    description: The fewest DONE backups the bucket keeps whatever the policy.
    type: int
    default: 1
  lag_warning:
    description: V(check) says V(warning) when the bucket's WAL is this many seconds behind the catalog.
    type: int
  lag_critical:
    description: V(check) says V(critical) from this many seconds behind.
    type: int
  backup_id:
    description: V(stage) this backup (default the newest one that ends before the target).
    type: str
  target_time:
    description: V(stage) for a recovery to this time (with a time zone).
    type: str
  target_xid:
    description: V(stage) for a recovery to this transaction id.
    type: str
  target_name:
    description: V(stage) for a recovery to this restore point.
    type: str
  target_lsn:
    description: V(stage) for a recovery to this LSN.
    type: str
  target_immediate:
    description: V(stage) for a recovery to the backup's end.
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: Copy pg1's new backups and WAL into the bucket
  barman.postgresql.pg_backup_cloud:
    server: pg1
    barman_home: /var/lib/barman
    bucket: backups
    prefix: barman
    endpoint_url: https://s3.example.com
    access_key_id: "{{ vault_s3_access_key }}"
    secret_access_key: "{{ vault_s3_secret_key }}"
  become: true
  become_user: barman

- name: Every backup server is gone; fetch what a recovery of pg1 to 03:12 needs
  barman.postgresql.pg_backup_cloud:
    action: stage
    server: pg1
    barman_home: /var/lib/postgresql/barman-cloud-stage
    bucket: backups
    prefix: barman
    target_time: "2026-11-24 03:12:00+00"
  become: true
  become_user: postgres
"""

RETURN = r"""
error_code:
  description: The stable code of the refusal, one of those listed in the notes; C(msg) says the same in words.
  returned: on failure
  type: str
  sample: CLOUD_ACCESS_DENIED
server:
  description: The server.
  returned: always
  type: str
bucket:
  description: Where the server's copy is, C(s3://<bucket>/<prefix>/<server>).
  returned: always
  type: str
missing:
  description: The catalog's DONE backups a copy uploads, newer than the bucket's newest (before this run's uploads).
  returned: action is sync or check
  type: list
  elements: str
uploaded:
  description: The backups uploaded, each with backup_id, bytes, parts, parts_sent (fewer when resumed), seconds.
  returned: action is sync
  type: list
  elements: dict
abandoned_uploads:
  description: Unfinished uploads aborted because their backup left the catalog before it was copied.
  returned: action is sync, not in check mode
  type: list
  elements: str
wals_uploaded:
  description: How many WAL files were uploaded (in check mode, would be).
  returned: action is sync
  type: int
lag:
  description: The bucket's WAL behind the catalog's; behind_segments, behind_seconds, newest, catalog_newest.
  returned: action is sync or check
  type: dict
backups:
  description: The backups in the bucket.
  returned: action is check
  type: list
  elements: str
status:
  description: The health of the bucket's copy, V(ok), V(warning) or V(critical), by its WAL lag.
  returned: action is check
  type: str
nagios:
  description: The same in one line, as status.yml shows it (C(BARMAN BUCKET OK - pg1 ...)).
  returned: action is check
  type: str
retention_status:
  description: The retention status of each backup in the bucket.
  returned: action is retention
  type: dict
removed_backups:
  description: The backups removed from the bucket (in check mode, would be).
  returned: action is retention
  type: list
  elements: str
removed_wals:
  description: How many WAL files were removed from the bucket.
  returned: action is retention
  type: int
busy:
  description: Another run was copying this server or applying its retention, so this one did nothing.
  returned: action is sync or retention
  type: bool
backup_id:
  description: The backup staged for the recovery.
  returned: action is stage
  type: str
chain:
  description: The backups staged, the root full backup first (one for a full backup).
  returned: action is stage
  type: list
  elements: str
wals:
  description: How many WAL files were staged.
  returned: action is stage
  type: int
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.barman.postgresql.plugins.module_utils import catalog, cloud, recovery
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError

ACTIONS = dict(sync=cloud.sync, check=cloud.check, retention=cloud.apply_retention, stage=cloud.stage)


def main():
    spec = catalog.catalog_argument_spec()
    spec.update(cloud.bucket_argument_spec())
    spec.update(
        action=dict(type='str', choices=sorted(ACTIONS), default='sync'),
        compression=dict(type='str', choices=sorted(cloud.TAR_SUFFIXES), default='none'),
        retention_policy=dict(type='str'),
        minimum_redundancy=dict(type='int', default=1),
        lag_warning=dict(type='int'),
        lag_critical=dict(type='int'),
    )
    spec.update(recovery.target_argument_spec())
    module = AnsibleModule(
        argument_spec=spec,
        supports_check_mode=True,
        required_if=[('action', 'retention', ['retention_policy'])],
    )
    try:
        if module.params['action'] == 'check':
            result = cloud.check(module.params)
        else:
            result = ACTIONS[module.params['action']](module.params, check_mode=module.check_mode)
    except BarmanError as error:
        module.fail_json(**error.fail_json_kwargs())
    module.exit_json(**result)


if __name__ == '__main__':
    main()
