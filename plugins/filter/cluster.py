# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The members of a replication cluster in the inventory: the pg_servers hosts that share a barman_server_name
(one catalog), each as the backup server reaches it. Documented in cluster_members.yml beside this file."""


def _value(host_vars, name, default):
    try:
        value = host_vars[name]
    except KeyError:
        return default
    return default if value is None or value == '' else value


def cluster_members(hosts, hostvars, server):
    """[{name, pg_host, pg_port, ssh_host}] of the ``hosts`` whose barman_server_name (default: their inventory
    name) is ``server``, in inventory order."""
    members = []
    for name in hosts or []:
        host_vars = hostvars[name]
        if _value(host_vars, 'barman_server_name', name) != server:
            continue
        address = _value(host_vars, 'barman_address', _value(host_vars, 'ansible_host', name))
        members.append(
            dict(name=name, pg_host=address, pg_port=int(_value(host_vars, 'barman_pg_port', 5432)), ssh_host=address)
        )
    return members


def served_servers(hosts, hostvars, backup_host):
    """The sorted server (catalog) names of the ``hosts`` whose barman_backup_host is ``backup_host``."""
    return sorted(
        set(
            _value(hostvars[name], 'barman_server_name', name)
            for name in hosts or []
            if _value(hostvars[name], 'barman_backup_host', None) == backup_host
        )
    )


def server_var(hosts, hostvars, server, name, default=None):
    """The inventory variable ``name`` of the first of ``hosts`` that is a member of ``server`` and sets it, else
    ``default``."""
    for host in hosts or []:
        if _value(hostvars[host], 'barman_server_name', host) == server:
            try:
                return hostvars[host][name]
            except KeyError:
                continue
    return default


class FilterModule:
    def filters(self):
        return dict(cluster_members=cluster_members, served_servers=served_servers, server_var=server_var)
