# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The modules' argument specs and the rules between options, checked by Ansible's own validator."""

import pytest
from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.barman.postgresql.plugins.module_utils import (
    archive_actions,
    backup,
    catalog_actions,
    recovery,
)

# Each module's spec sits beside its backend.
SPECS = dict(
    pg_basebackup_rsync=backup.module_spec,
    pg_wal_archive=archive_actions.module_spec,
    pg_backup_catalog=catalog_actions.module_spec,
    pg_recover=recovery.module_spec,
)
WAL_SENDER = ['/usr/local/lib/barman-postgresql/bin/barman-wal-sender', '--ssh', 'barman@10.0.0.21']


def errors(module, **given):
    return ArgumentSpecValidator(**SPECS[module]()).validate(given).error_messages


@pytest.mark.parametrize('module', sorted(SPECS))
def test_each_spec_is_what_ansible_module_takes(module):
    spec = SPECS[module]()
    assert set(spec) <= {'argument_spec', 'required_if', 'required_together', 'required_by', 'mutually_exclusive'}
    ArgumentSpecValidator(**spec)  # raises on a malformed spec


def test_a_base_backup_needs_the_address_of_what_it_backs_up():
    assert errors('pg_basebackup_rsync', server='pg1') == ['missing required arguments: pg_host']
    assert errors('pg_basebackup_rsync', server='pg1', pg_host='10.0.0.11') == []


def test_the_wal_archive_can_be_checked_on_disk_alone():
    assert errors('pg_wal_archive', server='pg1', switch_wal=True) == []


@pytest.mark.parametrize(
    'given, missing',
    [
        (dict(action='show'), 'server, backup_id'),
        (dict(action='delete', server='pg1'), 'backup_id'),
        (dict(action='retention', server='pg1'), 'retention_policy'),
        (dict(action='release-hold', server='pg1'), 'hold'),
    ],
)
def test_each_catalog_action_names_what_it_needs(given, missing):
    assert errors('pg_backup_catalog', **given) == [
        'action is %s but all of the following are missing: %s' % (given['action'], missing)
    ]


def test_the_catalog_lists_and_checks_every_server_but_asks_postgresql_of_one():
    assert errors('pg_backup_catalog') == []
    assert errors('pg_backup_catalog', action='check') == []
    assert errors('pg_backup_catalog', action='check', pg_host='10.0.0.11') == [
        "missing parameter(s) required by 'pg_host': server"
    ]


def test_fetching_wal_during_recovery_needs_the_wal_sender():
    assert errors('pg_recover', server='pg1', destination_directory='/srv/copy') == [
        'get_wal is True but all of the following are missing: wal_sender'
    ]
    assert errors('pg_recover', server='pg1', destination_directory='/srv/copy', wal_sender=WAL_SENDER) == []
    assert errors('pg_recover', server='pg1', destination_directory='/srv/copy', get_wal=False) == []


def test_an_ssh_port_needs_a_destination_host():
    given = dict(server='pg1', destination_directory='/srv/copy', get_wal=False, destination_port=2222)
    assert errors('pg_recover', **given) == ["missing parameter(s) required by 'destination_port': destination_host"]
    assert errors('pg_recover', destination_host='10.0.0.12', **given) == []


def test_recover_yml_passing_every_target_and_destination_option_null_or_false_is_accepted():
    # Ansible counts a null option as given for mutually_exclusive: the one-target rule stays in recovery.
    given = dict(
        server='pg1',
        barman_home='/var/lib/barman',
        backup_id=None,
        target_time='2026-11-24 03:12:00+00',
        target_xid=None,
        target_name=None,
        target_lsn=None,
        target_immediate=False,
        target_tli='latest',
        target_action='promote',
        destination_host='10.0.0.11',
        destination_user='postgres',
        destination_directory=None,
        in_place=True,
        tablespace_map={},
        get_wal=True,
        wal_sender=WAL_SENDER,
        archive=True,
        hold_hours=24,
    )
    assert errors('pg_recover', **given) == []
    beside = dict(given)
    beside.update(in_place=False, get_wal=False, wal_sender=None)
    assert errors('pg_recover', **beside) == []
