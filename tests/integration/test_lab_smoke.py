"""The lab answers like real hosts: SSH with verified host keys, become, PostgreSQL over TCP."""

import json
import secrets
import time

from labhosts import CLUSTERS, ansible, cluster_members, in_recovery, primary, psql, servers


def test_every_lab_host_answers_ping_over_ssh(lab):
    out = ansible('all', '-m', 'ansible.builtin.ping').stdout
    for host in sorted(CLUSTERS) + ['backup1']:
        assert '%s | SUCCESS' % host in out, out


def test_become_gives_root_on_every_host(lab):
    out = ansible('all', '-b', '-m', 'ansible.builtin.command', '-a', 'id -u').stdout
    hosts = len(CLUSTERS) + 1
    assert out.count('CHANGED') == hosts and out.count('\n0') == hosts, out


def test_psycopg2_from_backup1_reaches_every_cluster(lab):
    password = secrets.token_hex(16)
    # Roles are made on each server's primary; its standbys get them by replication.
    primaries = [primary(server) for server in servers()]
    for host in primaries:
        psql(host, "DROP ROLE IF EXISTS lab_probe; CREATE ROLE lab_probe LOGIN PASSWORD '%s'" % password)
    for host in CLUSTERS:
        wait_for(lambda host=host: psql(host, "SELECT count(*) FROM pg_roles WHERE rolname = 'lab_probe'") == '1')
    try:
        for server, where in sorted(CLUSTERS.items()):
            code = (
                'import json, psycopg2; '
                'c = psycopg2.connect(host=%r, port=%d, user="lab_probe", password=%r, dbname="postgres"); '
                "cur = c.cursor(); cur.execute(\"SELECT current_setting('server_version_num'), "
                'inet_server_addr()::text"); print(json.dumps(cur.fetchone()))'
            ) % (where['host'], where['port'], password)
            out = ansible(
                'backup1',
                '-m',
                'ansible.builtin.command',
                '-a',
                json.dumps({'argv': ['python3', '-c', code]}),
            ).stdout
            version, address = json.loads(out.strip().splitlines()[-1])
            assert int(version) // 10000 == where['major'], (server, version)
            assert address.split('/')[0] == where['host'], (server, address)
    finally:
        for host in primaries:
            psql(host, 'DROP ROLE IF EXISTS lab_probe')


def wait_for(condition, timeout=30):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, 'not true after %d s' % timeout
        time.sleep(0.2)


def test_pg1_has_a_tablespace_outside_pgdata_and_pg2_keeps_config_in_etc(lab):
    assert psql('pg1', "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'lab_tbs'") == (
        '/srv/barman-lab/pg1/tblspc'
    )
    assert psql('pg2', 'SHOW config_file').startswith('/etc/postgresql/15/')
    assert psql('pg1', 'SHOW data_directory') == '/srv/barman-lab/pg1/data'


def test_pg3_is_postgresql_18_with_data_checksums(lab):
    assert psql('pg3', 'SHOW server_version').startswith('18.6')
    assert psql('pg3', 'SHOW data_checksums') == 'on'


def test_the_ha_pair_is_a_primary_and_its_streaming_standby(lab):
    """The lab makes ha2 a standby of ha1; test_ha.py leaves them failed over (ha2 primary, ha1 its standby)."""
    assert cluster_members('ha') == ['ha1', 'ha2']
    source = primary('ha')
    standby = 'ha2' if source == 'ha1' else 'ha1'
    assert in_recovery(standby) is True
    assert psql(standby, 'SELECT status FROM pg_stat_wal_receiver') == 'streaming'
    assert psql(source, 'SELECT state FROM pg_stat_replication') == 'streaming'
    identity = 'SELECT system_identifier FROM pg_control_system()'
    assert psql(source, identity) == psql(standby, identity)
    assert psql(standby, 'SHOW hot_standby') == 'on' and psql(standby, 'SHOW data_checksums') == 'on'
    assert psql(standby, 'SHOW data_directory') == '/srv/barman-lab/%s/data' % standby
    marker = secrets.token_hex(8)
    psql(source, 'DROP TABLE IF EXISTS lab_smoke; CREATE TABLE lab_smoke (marker text)')
    psql(source, "INSERT INTO lab_smoke VALUES ('%s')" % marker)
    wait_for(lambda: psql(standby, "SELECT to_regclass('lab_smoke') IS NOT NULL") == 't')
    wait_for(lambda: psql(standby, 'SELECT marker FROM lab_smoke') == marker)
    psql(source, 'DROP TABLE lab_smoke')
