"""The lab as a pytest fixture: real sshd, real PostgreSQL 15 clusters, real ansible runs."""

import glob
import os
import shutil
import tempfile

import pytest
from labhosts import BARMAN_HOME, CLUSTERS, LAB, playbook, run


@pytest.fixture(scope='session')
def lab():
    """A fresh lab for the session (LAB_REUSE=1 keeps an existing one); down afterwards unless LAB_KEEP=1.

    Fresh, because what an earlier run left (timelines, backups, running copies) changes what tests see.
    """
    if os.environ.get('LAB_REUSE') != '1':
        run([LAB, 'down'])
    run([LAB, 'up'])
    yield CLUSTERS
    if os.environ.get('LAB_KEEP') != '1':
        run([LAB, 'down'])


@pytest.fixture(scope='session')
def configured(lab):
    """The lab after playbooks/setup.yml (keys, archiving, the backup role), once per session."""
    playbook('setup.yml')
    return lab


@pytest.fixture
def barman_conf():
    """A Barman configuration for pg1 over our barman_home, readable by the barman user."""
    directory = tempfile.mkdtemp(prefix='barman-interop-')
    os.chmod(directory, 0o755)
    cluster = CLUSTERS['pg1']
    with open(os.path.join(directory, 'barman.conf'), 'w') as conf:
        conf.write(
            '[barman]\nbarman_user = barman\nbarman_home = %s\nlog_file = %s/barman.log\ncompression = gzip\n'
            '[pg1]\ndescription = lab pg1\nconninfo = host=%s port=%d user=barman dbname=postgres\n'
            'ssh_command = ssh -o BatchMode=yes postgres@%s\nbackup_method = rsync\nreuse_backup = link\n'
            'archiver = on\nbackup_options = concurrent_backup\n'
            % (BARMAN_HOME, directory, cluster['host'], cluster['port'], cluster['host'])
        )
    shutil.chown(directory, 'barman', 'barman')
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope='module')
def verifications_forgotten():
    """Verification records made by a test module are removed after it: a backup that passed would otherwise
    stay (retention keeps the newest one that PASSED) and change what later modules' retention removes."""
    yield
    for record in glob.glob(os.path.join(BARMAN_HOME, '*', 'meta', '*-verification.json')):
        os.unlink(record)
