# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for plugins/filter/catalog_rules.py: the YAML gets module_utils' answers, word for word."""

import os

import pytest
import yaml
from ansible.errors import AnsibleFilterError

from ansible_collections.barman.postgresql.plugins.filter import catalog_rules
from ansible_collections.barman.postgresql.plugins.module_utils import catalog
from ansible_collections.barman.postgresql.plugins.module_utils.recovery import module_spec

FILTER_DIR = os.path.dirname(catalog_rules.__file__)


@pytest.mark.parametrize('name', ['pg1', 'pg-main.example_1', '1st', 'a' * 64, 'allow', 'barman2'])
def test_a_usable_server_name_has_no_problem(name):
    assert catalog_rules.server_name_problem(name) == ''


@pytest.mark.parametrize(
    'name',
    # The last two passed the regex the common role used to carry; the modules refused them later.
    ['', 'a' * 65, '.hidden', '-x', 'pg/1', 'pg 1', 'pé', 'all', 'barman', 5, None, 'ALL', 'a..b'],
)
def test_an_unusable_server_name_gets_the_catalogs_own_message(name):
    with pytest.raises(catalog.InvalidName) as refused:
        catalog.validate_server_name(name)
    problem = catalog_rules.server_name_problem(name)
    assert problem == str(refused.value)
    assert 'is not valid' in problem and catalog.SERVER_NAME_HINT in problem, problem


def test_catalog_directories_are_the_layouts_parents_first():
    directories = catalog_rules.catalog_directories('pg1', '/var/lib/barman')
    assert directories == catalog.ServerLayout('/var/lib/barman', 'pg1').directories()
    assert directories[0] == '/var/lib/barman/pg1'
    assert all(os.path.dirname(path) == directories[0] for path in directories[1:]), directories


@pytest.mark.parametrize(
    'server, home, message',
    [('pg/1', '/var/lib/barman', 'contains a slash'), ('pg1', 'var/lib/barman', 'not an absolute path')],
)
def test_catalog_directories_refuse_what_the_layout_refuses(server, home, message):
    with pytest.raises(AnsibleFilterError, match=message):
        catalog_rules.catalog_directories(server, home)


def test_recovery_choices_and_default_are_pg_recovers():
    spec = module_spec()['argument_spec']
    assert catalog_rules.recovery_choices('target_action') == list(spec['target_action']['choices'])
    assert catalog_rules.recovery_default('target_action') == spec['target_action']['default']
    assert catalog_rules.recovery_default('target_tli') == spec['target_tli']['default']
    assert catalog_rules.recovery_default('target_time') is None


def test_recovery_choices_of_an_option_without_choices_or_of_no_option_are_errors():
    with pytest.raises(AnsibleFilterError, match='target_time takes any value'):
        catalog_rules.recovery_choices('target_time')
    with pytest.raises(AnsibleFilterError, match="no recovery option 'target_actoin'.*target_action"):
        catalog_rules.recovery_choices('target_actoin')
    with pytest.raises(AnsibleFilterError, match="no recovery option 'target_actoin'"):
        catalog_rules.recovery_default('target_actoin')


def test_every_filter_has_its_documentation_file_beside_the_plugin():
    for name in catalog_rules.FilterModule().filters():
        with open(os.path.join(FILTER_DIR, name + '.yml')) as handle:
            doc = yaml.safe_load(handle)
        assert doc['DOCUMENTATION']['name'] == name
        assert doc['EXAMPLES'].strip() and doc['RETURN']['_value'], name
