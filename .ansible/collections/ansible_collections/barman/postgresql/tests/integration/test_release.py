"""What users install: the collection as ansible-galaxy builds it installs, documents itself and runs
a playbook by its FQCN, away from this checkout's ansible.cfg and build/ link."""

import glob
import os
import subprocess
import tarfile

import yaml
from labhosts import ROOT, VENV_BIN


def test_the_built_collection_installs_documents_itself_and_runs(configured, tmp_path):
    with open(os.path.join(ROOT, 'galaxy.yml')) as handle:
        version = yaml.safe_load(handle)['version']
    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ['PATH'], ANSIBLE_FORCE_COLOR='0')
    env.pop('ANSIBLE_CONFIG', None)

    def run(*argv, cwd=str(tmp_path)):
        proc = subprocess.run(list(argv), cwd=cwd, env=env, capture_output=True, text=True, check=False)
        assert proc.returncode == 0, (argv, proc.stdout[-3000:], proc.stderr[-3000:])
        return proc.stdout

    run('ansible-galaxy', 'collection', 'build', '--output-path', str(tmp_path), ROOT)
    (tarball,) = glob.glob(str(tmp_path / 'barman-postgresql-*.tar.gz'))
    assert tarball.endswith('barman-postgresql-%s.tar.gz' % version)
    with tarfile.open(tarball) as archive:
        names = archive.getnames()
    assert 'plugins/modules/pg_backup_catalog.py' in names and 'playbooks/recover.yml' in names
    assert not [n for n in names if n.startswith(('.venv', 'build/', 'tests/output', 'bench/'))], names

    collections = tmp_path / 'collections'
    run('ansible-galaxy', 'collection', 'install', '-p', str(collections), tarball)
    (tmp_path / 'ansible.cfg').write_text(
        '[defaults]\ncollections_path = %s\ninterpreter_python = auto_silent\n[ssh_connection]\npipelining = True\n'
        % collections
    )
    env['ANSIBLE_CONFIG'] = str(tmp_path / 'ansible.cfg')
    for module in ('pg_basebackup_rsync', 'pg_wal_archive', 'pg_backup_catalog', 'pg_recover'):
        doc = run('ansible-doc', 'barman.postgresql.' + module)
        assert 'EXAMPLES' in doc and 'RETURN VALUES' in doc, doc[:500]
    out = run(
        'ansible-playbook',
        '-i',
        os.path.join(ROOT, 'inventory', 'lab.yml'),
        'barman.postgresql.status',
        '-e',
        'status_report=',
        '-e',
        'status_fail_on_critical=false',
    )
    assert 'pg1' in out and 'failed=0' in out, out[-3000:]
    assert str(collections) in run('ansible-galaxy', 'collection', 'list', 'barman.postgresql')
