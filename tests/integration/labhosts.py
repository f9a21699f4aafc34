"""Helpers to act on the lab: run ansible and ansible-playbook from the checkout, SQL on a cluster."""

import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAB = os.path.join(ROOT, 'tests', 'lab', 'lab')
VENV_BIN = os.path.join(ROOT, '.venv', 'bin')

# Where each lab cluster listens (tests/lab/lab and inventory/lab.yml say the same).
CLUSTERS = {
    'pg1': {'host': '127.0.0.11', 'port': 5441},
    'pg2': {'host': '127.0.0.12', 'port': 5442},
}


def run(argv, check=True, **kwargs):
    """Run argv from the checkout; on failure show what ran, its exit code and its output."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(ROOT, 'ansible.cfg'), ANSIBLE_FORCE_COLOR='0')
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


def psql(server, sql, dbname='postgres'):
    """Run SQL as the postgres superuser on a lab cluster, locally over its socket; returns stdout."""
    port = str(CLUSTERS[server]['port'])
    argv = [
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
    return run(argv).stdout.strip()
