"""The lab answers like real hosts: SSH with verified host keys, become, PostgreSQL over TCP."""

import json
import secrets

from labhosts import CLUSTERS, ansible, psql


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
    for server in CLUSTERS:
        psql(server, "DROP ROLE IF EXISTS lab_probe; CREATE ROLE lab_probe LOGIN PASSWORD '%s'" % password)
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
        for server in CLUSTERS:
            psql(server, 'DROP ROLE IF EXISTS lab_probe')


def test_pg1_has_a_tablespace_outside_pgdata_and_pg2_keeps_config_in_etc(lab):
    assert psql('pg1', "SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'lab_tbs'") == (
        '/srv/barman-lab/pg1/tblspc'
    )
    assert psql('pg2', 'SHOW config_file').startswith('/etc/postgresql/15/')
    assert psql('pg1', 'SHOW data_directory') == '/srv/barman-lab/pg1/data'


def test_pg3_is_postgresql_18_with_data_checksums(lab):
    assert psql('pg3', 'SHOW server_version').startswith('18.6')
    assert psql('pg3', 'SHOW data_checksums') == 'on'
