"""The lab as a pytest fixture: real sshd, real PostgreSQL 15 clusters, real ansible runs."""

import os

import pytest
from labhosts import CLUSTERS, LAB, playbook, run


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
