"""Restore a backup by hand, as a DBA would without pg_recover: copy, recovery.signal, restore_command.

Test-only: it stands in until pg_recover exists, and proves a backup independently of it.
"""

import os
import shutil
import time

from labhosts import BARMAN_HOME, as_postgres, pg_program, pg_program_for, run, sender_argv

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile

RESTORES = '/srv/barman-lab/restores'


class RestoredCluster:
    def __init__(self, data_dir, port, socket_dir, pg_ctl):
        self.data_dir, self.port, self.socket_dir, self.pg_ctl = data_dir, port, socket_dir, pg_ctl

    def sql(self, query, dbname='postgres'):
        return as_postgres(
            'psql',
            '-XAtq',
            '-v',
            'ON_ERROR_STOP=1',
            '-h',
            self.socket_dir,
            '-p',
            str(self.port),
            '-d',
            dbname,
            '-c',
            query,
        ).stdout.strip()

    def stop(self):
        as_postgres(
            self.pg_ctl,
            '-D',
            self.data_dir,
            '-m',
            'immediate',
            '-w',
            'stop',
            check=False,
        )


def restore(server, backup_id, name, port):
    """Copy backup_id of server into RESTORES/name and start it, recovering to the backup's end."""
    layout = catalog.ServerLayout(BARMAN_HOME, server)
    info = infofile.read_backup_info(layout.backup_info_path(backup_id))
    assert info['status'] == infofile.DONE, info['status']
    root = os.path.join(RESTORES, name)
    if os.path.exists(root):
        as_postgres(
            pg_program_for(os.path.join(root, 'data'), 'pg_ctl'),
            '-D',
            os.path.join(root, 'data'),
            '-m',
            'immediate',
            'stop',
            check=False,
        )
        shutil.rmtree(root)
    os.makedirs(root)
    data_dir = os.path.join(root, 'data')
    run(['cp', '-a', layout.backup_data_dir(backup_id), data_dir])
    tablespace_map = []
    for tablespace in info['tablespaces'] or []:
        location = os.path.join(root, 'tblspc-%d' % tablespace.oid)
        run(['cp', '-a', layout.backup_tablespace_dir(backup_id, tablespace.oid), location])
        tablespace_map.append('%d %s\n' % (tablespace.oid, location))
    if tablespace_map:  # PostgreSQL makes pg_tblspc/<oid> from it: point it at the copies
        with open(os.path.join(data_dir, 'tablespace_map'), 'w') as handle:
            handle.write(''.join(tablespace_map))
        for entry in os.listdir(os.path.join(data_dir, 'pg_tblspc')):
            os.unlink(os.path.join(data_dir, 'pg_tblspc', entry))
    conf = os.path.join(data_dir, 'postgresql.conf')
    with open(conf) as handle:
        for line in handle:
            if line.strip().startswith('include_dir'):
                os.makedirs(os.path.join(data_dir, line.split("'")[1]), exist_ok=True)
    restore_command = ' '.join(sender_argv(server, 'get', '%f', '%p'))
    with open(os.path.join(data_dir, 'postgresql.auto.conf'), 'a') as handle:
        handle.write(
            # An earlier in-place recovery's target may be in the backup's postgresql.auto.conf: blank them
            # all first (PostgreSQL refuses a second target, and a blank one after 'immediate').
            "\n# hand restore\narchive_mode = off\nrestore_command = '%s'\nrecovery_target_time = ''\n"
            "recovery_target_xid = ''\nrecovery_target_name = ''\nrecovery_target_lsn = ''\n"
            "recovery_target = 'immediate'\n"
            "recovery_target_action = 'promote'\nrecovery_target_timeline = 'current'\nlogging_collector = off\n"
            % restore_command
        )
    open(os.path.join(data_dir, 'recovery.signal'), 'w').close()
    run(['chown', '-R', 'postgres:postgres', root])
    os.chmod(data_dir, 0o700)
    options = ' '.join(
        [
            '-c data_directory=%s' % data_dir,
            '-c hba_file=%s/pg_hba.conf' % data_dir,
            '-c ident_file=%s/pg_ident.conf' % data_dir,
            "-c external_pid_file=''",
            '-c port=%d' % port,
            "-c listen_addresses=''",
            '-c unix_socket_directories=%s' % root,
        ]
    )
    pg_ctl = pg_program(server, 'pg_ctl')
    as_postgres(
        pg_ctl,
        '-D',
        data_dir,
        '-o',
        options,
        '-l',
        os.path.join(root, 'postgresql.log'),
        '-w',
        '-t',
        '120',
        'start',
    )
    cluster = RestoredCluster(data_dir, port, root, pg_ctl)
    deadline = time.time() + 120
    while cluster.sql('SELECT pg_is_in_recovery()') != 'f':
        assert time.time() < deadline, 'the restored copy did not finish recovery'
        time.sleep(0.5)
    return cluster, info
