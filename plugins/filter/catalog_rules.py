# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jinja filters that let roles and playbooks ask module_utils for the catalog's and recovery's rules,
instead of writing them again in YAML."""

# Each filter is documented in a file of its own beside this one (server_name_problem.yml,
# catalog_directories.yml, recovery_choices.yml and recovery_default.yml): ansible-doc reads such a
# file only when the plugin file holds no DOCUMENTATION.

from ansible.errors import AnsibleFilterError
from ansible_collections.barman.postgresql.plugins.module_utils import catalog
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def server_name_problem(name):
    """'' when name can be a server's catalog name, else why not and what to use instead."""
    try:
        catalog.validate_server_name(name)
    except catalog.InvalidName as error:
        return str(error)
    return ''


def catalog_directories(server, barman_home):
    """The directories of a server's catalog under barman_home, parents first."""
    try:
        return catalog.ServerLayout(barman_home, server).directories()
    except BarmanError as error:
        raise AnsibleFilterError(str(error)) from None


def _recovery_option(option):
    # Imported here: recovery pulls in most of module_utils, and each task's worker process imports a filter's module
    # afresh; a task that only checks a server name must not pay for it (~0.07 s).
    from ansible_collections.barman.postgresql.plugins.module_utils.recovery import module_spec  # noqa: PLC0415

    spec = module_spec()['argument_spec']
    if option not in spec:
        raise AnsibleFilterError(
            'pg_recover has no recovery option %r; they are %s' % (option, ', '.join(sorted(spec)))
        )
    return spec[option]


def recovery_choices(option):
    """The values pg_recover accepts for an option with a fixed set of them."""
    choices = _recovery_option(option).get('choices')
    if choices is None:
        raise AnsibleFilterError('pg_recover option %s takes any value of its type, not one of a list' % option)
    return list(choices)


def recovery_default(option):
    """pg_recover's default for an option (None when it has none)."""
    return _recovery_option(option).get('default')


def listed_backup_ids(result, server):
    """The backup ids of ``server`` in a registered pg_backup_catalog V(list) result; none when that task failed
    or its host was unreachable (retention then waits for the copies it cannot see)."""
    if not isinstance(result, dict) or result.get('failed') or result.get('unreachable'):
        return []
    for entry in result.get('servers') or []:
        if entry.get('server') == server:
            return [backup['backup_id'] for backup in entry.get('backups') or []]
    return []


class FilterModule:
    def filters(self):
        return dict(
            server_name_problem=server_name_problem,
            catalog_directories=catalog_directories,
            recovery_choices=recovery_choices,
            recovery_default=recovery_default,
            listed_backup_ids=listed_backup_ids,
        )
