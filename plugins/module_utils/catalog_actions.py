# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup_catalog's actions: each run on the catalog, with the before/after diff of what it changes.

Plain values in (the module's parameters), a result dict out, BarmanError on a refusal; the module adds
only what is Ansible's (the diff only in diff mode, the query, failing on a critical check).
"""

import contextlib
import datetime
import os
from typing import Any, Dict, Mapping, Optional

from ansible_collections.barman.postgresql.plugins.module_utils import (
    catalog,
    cluster,
    health,
    lockfile,
    manifest,
    postgres,
    retention,
    server_catalog,
)

ACTIONS = ('list', 'show', 'check', 'keep', 'release', 'delete', 'retention', 'release-hold', 'manifest')


def module_spec() -> Dict[str, Any]:
    """pg_backup_catalog's AnsibleModule keyword arguments: one server, or every one for list and check;
    what each action needs."""
    spec = dict(
        action=dict(type='str', choices=list(ACTIONS), default='list'),
        backup_id=dict(type='str'),
        target=dict(type='str', choices=['full', 'standalone'], default='full'),
        hold=dict(type='str'),
        retention_policy=dict(type='str'),
        minimum_redundancy=dict(type='int', default=1),
        last_backup_maximum_age=dict(type='str'),
        wal_maximum_age=dict(type='str'),
        verify_max_age=dict(type='str', default='8 DAYS'),
        disk_warning_percent=dict(type='int', default=10),
        disk_critical_percent=dict(type='int', default=5),
        query=dict(type='str'),
        fail_on_critical=dict(type='bool', default=False),
        force=dict(type='bool', default=False),
        mirrored=dict(type='dict'),
        mirror_lag_warning=dict(type='int', default=300),
        mirror_lag_critical=dict(type='int', default=3600),
        members=cluster.members_spec(),
    )
    spec.update(catalog.catalog_argument_spec())
    spec['server'] = dict(type='str')  # optional here: list and check cover every server without it
    spec.update(postgres.connection_argument_spec())
    return dict(
        argument_spec=spec,
        required_if=[
            ('action', 'show', ['server', 'backup_id']),
            ('action', 'keep', ['server', 'backup_id']),
            ('action', 'release', ['server', 'backup_id']),
            ('action', 'delete', ['server', 'backup_id']),
            ('action', 'retention', ['server', 'retention_policy']),
            ('action', 'release-hold', ['server', 'hold']),
            ('action', 'manifest', ['server']),
        ],
        # pg_stat_archiver is asked of one server at a time.
        required_by=dict(pg_host=('server',)),
    )


def run_action(
    params: Mapping[str, Any], check_mode: bool = False, now: Optional[datetime.datetime] = None
) -> Dict[str, Any]:
    """The result of ``params['action']``: ``changed``, what the action reports and, for the actions that
    change the catalog, ``diff``. In check mode nothing changes and the result is what a real run would do."""
    action = params['action']
    if action not in ACTIONS:
        raise ValueError('unknown pg_backup_catalog action %r' % (action,))
    home = params['barman_home']
    policy = retention.parse_policy(params['retention_policy']) if params['retention_policy'] else None
    minimum = retention.validate_minimum_redundancy(params['minimum_redundancy'])
    names = [params['server']] if params['server'] else server_catalog.server_names(home)
    layouts = [server_catalog.server_layout(home, name) for name in names]
    if action == 'list':
        servers = [server_catalog.ServerCatalog(layout).summary(policy, minimum, now) for layout in layouts]
        return dict(changed=False, servers=servers)
    if action == 'check':
        return _check(params, layouts, policy, minimum, now)
    layout = layouts[0]
    if action == 'release-hold':
        return _release_hold(layout, params['hold'], check_mode)
    if action in ('delete', 'retention'):
        return _removal(params, layout, policy, minimum, check_mode, now)
    if action == 'manifest':
        return _manifests(params, layout, check_mode)
    return _annotation(params, layout, check_mode)


def _check(params, layouts, policy, minimum, now):
    options = dict((k, v) for k, v in params.items() if k.startswith(('pg_', 'disk_', 'mirror_lag_')))
    if params.get('members'):
        # The archiver that counts is the primary's, whichever member it is now.
        found = cluster.find_primary(params)
        if found:
            options.update(pg_host=found['pg_host'], pg_port=found['pg_port'])
    options['minimum_redundancy'] = minimum
    for name in ('last_backup_maximum_age', 'wal_maximum_age', 'verify_max_age'):
        options[name] = retention.parse_period(params[name]) if params[name] else None
    servers = [health.check_server(layout, options, policy, now) for layout in layouts]
    return dict(
        changed=False,
        servers=servers,
        status=health.worst(s['status'] for s in servers),
        nagios='\n'.join(s['nagios'] for s in servers),
    )


def _release_hold(layout, token, check_mode):
    result = server_catalog.release_hold(layout, token, dry_run=check_mode)
    held = 'hold %s\n' % token if result['released'] else ''
    return dict(result, changed=result['released'], diff=dict(before=held, after=''))


def _removal(params, layout, policy, minimum, check_mode, now):
    """delete or retention; the diff is the list of backup ids before and after."""
    if params['action'] == 'retention' and policy is None:
        raise retention.InvalidPolicy('action retention needs retention_policy', retention.POLICY_HINT)
    before = sorted(server_catalog.ServerCatalog(layout).infos)
    if params['action'] == 'retention':
        result = server_catalog.apply_retention(
            layout, policy, minimum, now=now, dry_run=check_mode, mirrored=params['mirrored']
        )
    else:
        result = server_catalog.delete_backup(
            layout, params['backup_id'], minimum, dry_run=check_mode, now=now, force=params['force']
        )
    after = [b for b in before if b not in result['removed_backups']]
    result['changed'] = bool(result['removed_backups'] or result['removed_wals'] or result.get('removed_stale_holds'))
    result['diff'] = dict(before='\n'.join(before) + '\n', after='\n'.join(after) + '\n')
    return result


def _annotation(params, layout, check_mode):
    """show, keep and release of one backup, by id or shortcut; the diff is its keep annotation."""
    server = server_catalog.ServerCatalog(layout)
    backup_id = server.resolve(params['backup_id'])
    if params['action'] == 'show':
        return dict(changed=False, backup_id=backup_id, backup=server.details(backup_id))
    before = '%s keep=%s\n' % (backup_id, server.keeps.get(backup_id))
    if params['action'] == 'keep':
        changed = server.keep(backup_id, params['target'], dry_run=check_mode)
    else:
        changed = server.release(backup_id, dry_run=check_mode)
    after = '%s keep=%s\n' % (backup_id, server.keeps.get(backup_id))
    return dict(
        changed=changed,
        backup_id=backup_id,
        keep=server.keeps.get(backup_id),
        diff=dict(before=before, after=after),
    )


def _manifests(params, layout, check_mode):
    """manifest: a backup_manifest for each DONE backup without one (the one named, or every one), as its
    files are now; the backups taken before manifests existed can then be checked file by file. The diff
    lists the backups without a manifest."""
    # As every change, never beside a backup or retention run; the catalog is read under the lock.
    with contextlib.nullcontext() if check_mode else lockfile.ServerLock(layout, 'backup'):
        server = server_catalog.ServerCatalog(layout)
        done = server.done_ids()
        chosen = [server.resolve(params['backup_id'])] if params['backup_id'] else done
        for backup_id in chosen:
            if backup_id not in done:
                raise catalog.CatalogError(
                    'backup %s is %s: only a DONE backup gets a manifest'
                    % (backup_id, server.infos[backup_id]['status']),
                    'Name a DONE backup (action=list), or leave out backup_id for every DONE backup without one',
                    code='BACKUP_NOT_DONE',
                )
        without = [b for b in done if not os.path.exists(layout.manifest_path(b))]
        missing = [b for b in chosen if b in without]
        written = {}
        for backup_id in [] if check_mode else missing:
            info = server.infos[backup_id]
            # Oldest first: files hard-linked to the previous backup take their checksums from its manifest.
            previous = done[done.index(backup_id) - 1] if done.index(backup_id) > 0 else None
            written[backup_id] = manifest.write_manifest(layout, backup_id, info, info['end_xlog'], previous)
    return dict(
        changed=bool(missing),
        manifests_written=missing,
        written=written,
        diff=dict(
            before=''.join('%s no backup_manifest\n' % b for b in without),
            after=''.join('%s no backup_manifest\n' % b for b in without if b not in missing),
        ),
    )
