# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Each role documents its variables once, in meta/argument_specs.yml: every default is declared there with
the same value, its README shows them as declared (scripts/role-readmes), and the choices the collection's
Python also knows are the Python's."""

import os
import re

import pytest
import yaml

from ansible_collections.barman.postgresql.plugins.module_utils import backup, wal_store
from ansible_collections.barman.postgresql.scripts import role_readmes

ROLES = role_readmes.role_names()
# Defaults that are deliberately not options; each must be named, with the reason, in its spec's description.
# These are computed from barman_backup_host, which backup servers lack, and the spec check templates
# every option it declares on every host.
NOT_OPTIONS = {'common': {'barman_backup_server_home', 'barman_backup_server_user', 'barman_backup_server_address'}}


def spec(role):
    return role_readmes.load_yaml(role, 'meta', 'argument_specs.yml')['argument_specs']['main']


def templated(value):
    return isinstance(value, str) and '{{' in value


def test_the_four_roles_are_all_checked():
    assert ROLES == ['backup_server', 'common', 'ssh_keys', 'wal_archiving']


@pytest.mark.parametrize('role', ROLES)
def test_every_default_is_declared_in_the_spec_with_the_same_value(role):
    defaults = role_readmes.load_yaml(role, 'defaults', 'main.yml')
    options = spec(role)['options']
    undeclared = sorted(set(defaults) - set(options) - NOT_OPTIONS.get(role, set()))
    assert not undeclared, 'roles/%s/defaults/main.yml sets %s, which meta/argument_specs.yml does not declare' % (
        role,
        ', '.join(undeclared),
    )
    for name in set(defaults) & set(options):
        if templated(defaults[name]):
            # Evaluated per host, so described in words instead of given.
            assert 'default' not in options[name], '%s: a templated default is described, not given' % name
        else:
            assert 'default' in options[name], '%s: the spec lacks the default %r' % (name, defaults[name])
            assert options[name]['default'] == defaults[name], (name, options[name]['default'], defaults[name])


@pytest.mark.parametrize('role', sorted(NOT_OPTIONS))
def test_defaults_left_out_of_the_spec_are_explained_in_it(role):
    defaults = role_readmes.load_yaml(role, 'defaults', 'main.yml')
    description = ' '.join(spec(role)['description'])
    for name in sorted(NOT_OPTIONS[role]):
        assert name in defaults, '%s is no default of %s any more: drop it from NOT_OPTIONS' % (name, role)
        assert name not in spec(role)['options'], '%s is an option of %s now: drop it from NOT_OPTIONS' % (name, role)
        assert 'C(%s)' % name in description, 'the spec of %s does not say why %s is not an option' % (role, name)


@pytest.mark.parametrize('role', ROLES)
def test_the_readme_is_up_to_date_with_the_spec(role):
    path = os.path.join(role_readmes.ROLES_DIR, role, 'README.md')
    assert os.path.isfile(path), 'roles/%s has no README.md: run scripts/role-readmes' % role
    with open(path) as handle:
        current = handle.read()
    assert current.count(role_readmes.BEGIN) == 1 and current.count(role_readmes.END) == 1, path
    assert role_readmes.wanted_readme(role, current) == current, (
        'roles/%s/README.md is not what meta/argument_specs.yml says: run scripts/role-readmes' % role
    )


@pytest.mark.parametrize('role', ROLES)
def test_the_readme_shows_every_option_with_its_default(role):
    with open(os.path.join(role_readmes.ROLES_DIR, role, 'README.md')) as handle:
        rows = [re.split(r'(?<!\\) \| ', line.strip()[2:-2]) for line in handle if line.startswith('| `')]
    shown = {cells[0].strip('`'): cells[2] for cells in rows}
    defaults = role_readmes.load_yaml(role, 'defaults', 'main.yml')
    for name, option in spec(role)['options'].items():
        assert name in shown, 'roles/%s/README.md does not show %s' % (role, name)
        if 'default' in option:
            assert shown[name].startswith('`'), (name, shown[name])
            assert yaml.safe_load(shown[name].strip('`')) == option['default'], (name, shown[name], option['default'])
        else:
            wanted = 'required' if option.get('required') else 'computed' if templated(defaults.get(name)) else 'unset'
            assert shown[name] == wanted, (name, shown[name], wanted)


def test_choices_the_collections_python_knows_are_the_pythons():
    options = spec('common')['options']
    assert options['barman_compression']['choices'] == list(wal_store.COMPRESSIONS)
    assert options['barman_backup_reuse']['choices'] == list(backup.REUSE_MODES)
    assert options['barman_backup_delta_transfer']['choices'] == list(backup.DELTA_TRANSFER_MODES)
