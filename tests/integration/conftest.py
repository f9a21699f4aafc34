"""The lab as a pytest fixture: real sshd, real PostgreSQL 15 clusters, real ansible runs."""

import os

import pytest
from labhosts import CLUSTERS, LAB, run


@pytest.fixture(scope='session')
def lab():
    """Bring the lab up for the session; take it down afterwards unless LAB_KEEP=1."""
    run([LAB, 'up'])
    yield CLUSTERS
    if os.environ.get('LAB_KEEP') != '1':
        run([LAB, 'down'])
