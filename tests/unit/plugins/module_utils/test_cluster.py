# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which member of a replication cluster a backup copies: pure logic over what each member answered."""

import pytest

from ansible_collections.barman.postgresql.plugins.filter.cluster import cluster_members
from ansible_collections.barman.postgresql.plugins.module_utils import cluster

MIB = 1024 * 1024


def member(name, in_recovery=False, lsn='0/50000000', systemid='7000', up=True, problem=None, timeline=2):
    found = dict(name=name, pg_host=name, pg_port=5432, ssh_host=name, up=up, problem=problem)
    if up:
        found.update(in_recovery=in_recovery, lsn=lsn, systemid=systemid, timeline=timeline)
    return found


def choose(probes, backup_from, max_lag=16):
    return cluster.choose(probes, backup_from, max_lag, 'ha')


def test_primary_is_copied_by_default_whatever_the_order():
    chosen = choose([member('ha2', True), member('ha1')], 'primary')
    assert chosen['source']['name'] == chosen['primary']['name'] == 'ha1'


def test_the_standby_that_lags_least_is_chosen():
    probes = [member('ha1', lsn='0/50000000'), member('ha2', True, '0/4F000000'), member('ha3', True, '0/4FF00000')]
    chosen = choose(probes, 'standby')
    assert chosen['source']['name'] == 'ha3' and chosen['source']['lag_bytes'] == MIB
    assert chosen['primary']['name'] == 'ha1'


def test_a_standby_too_far_behind_or_down_is_skipped_and_prefer_standby_says_why():
    probes = [
        member('ha1', lsn='0/50000000'),
        member('ha2', True, '0/30000000'),
        member('ha3', up=False, problem='connection refused'),
    ]
    chosen = choose(probes, 'prefer-standby')
    assert chosen['source']['name'] == 'ha1'
    assert 'no standby is healthy' in chosen['reason'] and 'ha2: replays 512 MiB behind' in chosen['reason']
    assert 'ha3: connection refused' in chosen['reason']
    with pytest.raises(cluster.ClusterError) as refused:
        choose(probes, 'standby')
    assert refused.value.code == 'NO_HEALTHY_STANDBY' and 'standby_max_lag (16 MiB)' in str(refused.value)


@pytest.mark.parametrize(
    'probes, code, words',
    [
        ([member('ha1'), member('ha2', True, systemid='7999')], 'IDENTITY_MISMATCH', 'ha2 has system identifier 7999'),
        ([member('ha1', up=False, problem='down'), member('ha2', True)], 'NO_PRIMARY', 'no primary now'),
        ([member('ha1'), member('ha2')], 'NO_PRIMARY', '2 primaries'),
    ],
)
def test_refusals_name_the_members(probes, code, words):
    with pytest.raises(cluster.ClusterError) as refused:
        choose(probes, 'prefer-standby')
    assert refused.value.code == code and words in str(refused.value)


def test_members_default_to_the_one_server_given():
    params = dict(pg_host='10.0.0.11', pg_port=5441, ssh_host=None, members=None)
    assert cluster.members_of(params) == [
        dict(name='10.0.0.11', pg_host='10.0.0.11', pg_port=5441, ssh_host='10.0.0.11')
    ]


def test_the_inventory_filter_groups_hosts_by_server_name():
    hostvars = {
        'pg1': dict(ansible_host='10.0.0.11'),
        'ha1': dict(ansible_host='10.0.0.15', barman_server_name='ha', barman_pg_port=5445),
        'ha2': dict(ansible_host='10.0.0.16', barman_server_name='ha', barman_address='10.1.0.16'),
    }
    assert cluster_members(['pg1', 'ha1', 'ha2'], hostvars, 'ha') == [
        dict(name='ha1', pg_host='10.0.0.15', pg_port=5445, ssh_host='10.0.0.15'),
        dict(name='ha2', pg_host='10.1.0.16', pg_port=5432, ssh_host='10.1.0.16'),
    ]
    assert [m['name'] for m in cluster_members(['pg1', 'ha1', 'ha2'], hostvars, 'pg1')] == ['pg1']


def test_a_standby_of_another_history_is_never_the_source():
    probes = [
        member('ha2', lsn='0/50000000'),
        member('ha1', True, '0/51000000', timeline=1),  # the old primary, restarted as a standby without pg_rewind
        member('ha3', True, '0/52000000'),  # probed after the primary, under load: past what it had written then
    ]
    chosen = choose(probes, 'standby')
    assert chosen['source']['name'] == 'ha3' and chosen['source']['lag_bytes'] == 0
    assert 'ha1: is on timeline 1' not in chosen['reason']
    chosen = choose(probes[:2], 'prefer-standby')
    assert chosen['source']['name'] == 'ha2' and 'ha1: is on timeline 1 at 0/51000000' in chosen['reason']
