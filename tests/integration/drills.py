"""Recovery drills: recover.yml into a scratch directory, start it, query it, stop it."""

import json
import os
import shutil

from labhosts import as_postgres, pg_program, pg_program_for, playbook

DRILLS = '/srv/barman-lab/pg1/drills'
# pg1's pg_ctl; a drill of another server stops with its own (stop_cluster picks it by PG_VERSION).
PG_CTL = pg_program('pg1', 'pg_ctl')


def stop_cluster(data_dir):
    if os.path.exists(os.path.join(data_dir, 'postmaster.pid')):
        as_postgres(pg_program_for(data_dir, 'pg_ctl'), '-D', data_dir, '-m', 'immediate', '-w', 'stop', check=False)


def clear(data_dir):
    """Stop and remove a drill of an earlier run (test data, removed by the test)."""
    stop_cluster(data_dir)
    for leftover in (data_dir, data_dir + '.tblspc', data_dir + '.log'):
        if os.path.isdir(leftover):
            shutil.rmtree(leftover)
        elif os.path.exists(leftover):
            os.unlink(leftover)


def query(port, sql, host='/var/run/postgresql'):
    return as_postgres('psql', '-XAtq', '-h', host, '-p', str(port), '-d', 'postgres', '-c', sql).stdout.split()


def recover(drill, sql, server='pg1', port=6441, check=True, **extra):
    """recover.yml for ``server`` into DRILLS/drill on ``port``, then ``sql`` on the recovered copy.

    Returns (the query's output words, the summary line), or (None, the output) when recover.yml failed.
    """
    data_dir = os.path.join(DRILLS, drill)
    clear(data_dir)
    variables = dict(server=server, recover_dir=data_dir, recover_port=port)
    variables.update(extra)
    proc = playbook('recover.yml', '-e', json.dumps(variables), check=check)
    if proc.returncode != 0:
        return None, proc.stdout
    summary = [line for line in proc.stdout.splitlines() if 'recovered from backup' in line][0]
    try:
        return query(port, sql), summary
    finally:
        stop_cluster(data_dir)
