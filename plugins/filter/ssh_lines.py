# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Jinja filters for the ssh_keys role, so that roles build SSH lines with module_utils/ssh.py."""


# Each filter is documented in a file of its own beside this one (authorized_keys_line.yml and known_hosts_lines.yml):
# ansible-doc reads such a file only when the plugin file holds no DOCUMENTATION.

from ansible.errors import AnsibleFilterError
from ansible_collections.barman.postgresql.plugins.module_utils import ssh
from ansible_collections.barman.postgresql.plugins.module_utils.errors import BarmanError


def authorized_keys_line(public_key, forced_command, comment=None):
    try:
        return ssh.authorized_keys_line(public_key, forced_command, comment)
    except BarmanError as error:
        raise AnsibleFilterError(str(error)) from None


def known_hosts_lines(host_facts, address=None, port=None):
    """known_hosts lines for every host key type found in a host's facts (hostvars[host]).

    ``address`` defaults to the one the common role published for the host (barman_host.address).
    """
    address = address or host_facts['barman_host']['address']
    lines = []
    for kind in ('ed25519', 'ecdsa', 'rsa'):
        key = host_facts.get('ansible_ssh_host_key_%s_public' % kind)
        if key:
            key_type = host_facts.get('ansible_ssh_host_key_%s_public_keytype' % kind) or 'ssh-%s' % kind
            lines.append(ssh.known_hosts_line(address, port, key_type, key))
    if not lines:
        raise AnsibleFilterError(
            'no SSH host key in the facts of %s: gather facts (the ssh_host_pub_keys subset) before '
            'building known_hosts' % address
        )
    return lines


class FilterModule:
    def filters(self):
        return dict(authorized_keys_line=authorized_keys_line, known_hosts_lines=known_hosts_lines)
