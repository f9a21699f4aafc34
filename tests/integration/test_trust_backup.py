"""Trust drills for base backups: pg1's pg_wal is a symlink (initdb --waldir, WAL on its own disk).

A backup that kept the link gave every copy recovered from it the original's live WAL directory: the
copy, archiving off, wrote its new timeline there and could recycle segments the original had not
archived yet. The backup must hold pg_wal as PostgreSQL's own base backup does (an empty directory
with archive_status/), be on disk before it is DONE, and the original must never notice a recovery.
"""

import hashlib
import json
import os
import stat
import subprocess
import time

import drills
from drills import DRILLS
from labhosts import BARMAN_HOME, CLUSTERS, module, playbook, psql, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, pgdata_layout, wal_store

PG1_DATA = '/srv/barman-lab/pg1/data'
PG1_WAL = '/srv/barman-lab/pg1/wal'  # tests/lab/lab: initdb --waldir
BARMAN_PYTHON = os.environ.get('BARMAN_VENV', '/opt/barman-venv') + '/bin/python'


def sha256(path):
    with open(path, 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def unarchived(wal_dir):
    """{segment: sha256} of what PostgreSQL still has to archive (its .ready files) in wal_dir."""
    status = os.path.join(wal_dir, 'archive_status')
    names = sorted(n[: -len('.ready')] for n in os.listdir(status) if n.endswith('.ready'))
    return dict((name, sha256(os.path.join(wal_dir, name))) for name in names)


def wait_for(what, predicate, timeout=60):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError('%s: not within %d s' % (what, timeout))
        time.sleep(0.2)


def set_archive_command(command):
    """ALTER SYSTEM + reload, and wait until the server runs with it."""
    psql('pg1', 'ALTER SYSTEM SET archive_command = $barman_drill$%s$barman_drill$' % command)
    psql('pg1', 'SELECT pg_reload_conf()')
    wait_for('archive_command = %s' % command, lambda: psql('pg1', 'SHOW archive_command') == command)


def assert_real_empty_pg_wal(data_dir):
    for relative in ('pg_wal', 'pg_wal/archive_status'):
        info = os.lstat(os.path.join(data_dir, relative))
        assert stat.S_ISDIR(info.st_mode), '%s/%s is not a real directory (a symlink?)' % (data_dir, relative)
        assert stat.S_IMODE(info.st_mode) == 0o700, (relative, oct(info.st_mode))
    assert os.listdir(os.path.join(data_dir, 'pg_wal')) == ['archive_status']
    assert os.listdir(os.path.join(data_dir, 'pg_wal', 'archive_status')) == []


def test_a_copy_recovered_from_a_waldir_server_never_writes_into_the_originals_wal(configured):
    assert os.path.islink(os.path.join(PG1_DATA, 'pg_wal')), 'the lab makes pg1 with initdb --waldir'
    assert os.path.realpath(os.path.join(PG1_DATA, 'pg_wal')) == PG1_WAL

    # The backup: pg_wal is a real empty directory, the layout is on record, the copy synced before DONE.
    playbook('backup.yml', '--limit', 'pg1')
    layout = catalog.ServerLayout(BARMAN_HOME, 'pg1')
    backup_id, info = list(infofile.backup_infos(layout).items())[-1]
    assert info['status'] == infofile.DONE, (backup_id, info['status'])
    assert_real_empty_pg_wal(layout.backup_data_dir(backup_id))
    assert pgdata_layout.read_layout(layout, backup_id) == {
        'pg_wal': {'kind': 'symlink', 'link': PG1_WAL, 'target': PG1_WAL}
    }
    assert 'sync_time' in info['copy_stats'], info['copy_stats']
    with open(os.path.join(layout.root, 'backup.log')) as log:
        steps = [line.split(' ', 1)[1] for line in log if ' backup %s ' % backup_id in line]
    synced = [i for i, s in enumerate(steps) if s.startswith('backup %s synced to disk' % backup_id)]
    waiting = [i for i, s in enumerate(steps) if s.startswith('backup %s copied, waiting' % backup_id)]
    assert synced and waiting and synced[0] < waiting[0], steps
    # Barman 3.19 still reads it: it stops on a backup.info key it does not know.
    proc = subprocess.run(
        [
            BARMAN_PYTHON,
            '-c',
            'import sys, barman.output, barman.infofile as i\n'
            'b = i.BackupInfo(backup_id=sys.argv[2]); b.load(filename=sys.argv[1]); print(b.status)',
            layout.backup_info_path(backup_id),
            backup_id,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == 'DONE', proc.stdout + proc.stderr

    # Archiving of pg1 fails: three segments pile up in the original's pg_wal, unarchived.
    archive_command = psql('pg1', 'SHOW archive_command')
    wal_archive = wal_store.WalArchive(BARMAN_HOME, 'pg1')
    drill_dir = os.path.join(DRILLS, 'waldir')
    set_archive_command('false')
    try:
        switched = [switch_wal('pg1') for _count in range(3)]
        wait_for('3 segments marked .ready', lambda: set(switched) <= set(unarchived(PG1_WAL)))
        # PostgreSQL keeps them until archive_command succeeds (the sender's look-ahead agent, still up
        # from the backup's last WAL, may have put copies in the archive: PostgreSQL does not know).
        pending = unarchived(PG1_WAL)

        # Recover beside, to the backup's end; a checkpoint on the copy (it recycles WAL).
        out, summary = drills.recover(
            'waldir',
            "CHECKPOINT; SELECT pg_walfile_name(pg_current_wal_lsn()) || ' ' || current_setting('archive_mode')",
            target_immediate=True,
        )
        assert out is not None, summary[-3000:]
        copy_wal, copy_archive_mode = out
        assert copy_archive_mode == 'off', "the copy must not archive into the original's archive"
        copy_pg_wal = os.path.join(drill_dir, 'pg_wal')
        assert not os.path.islink(copy_pg_wal) and os.path.isdir(copy_pg_wal), os.path.realpath(copy_pg_wal)
        assert os.path.exists(os.path.join(copy_pg_wal, copy_wal)), 'the copy writes its WAL into its own pg_wal'

        # The original's pg_wal: every unarchived segment is there, unchanged; nothing of the copy's timeline.
        for name, digest in sorted(pending.items()):
            path = os.path.join(PG1_WAL, name)
            assert os.path.exists(path), "%s vanished from the original's pg_wal before it was archived" % name
            assert sha256(path) == digest, "%s changed in the original's pg_wal" % name
        copy_timeline = copy_wal[:8]
        strays = [n for n in os.listdir(PG1_WAL) if n.startswith(copy_timeline)]
        assert strays == [], "the copy (timeline %s) wrote into the original's pg_wal: %s" % (copy_timeline, strays)
    finally:
        set_archive_command(archive_command)
        drills.clear(drill_dir)

    # Archiving back: the original catches up, every pending segment arrives as it was, no gap.
    switch_wal('pg1')
    ok, checked = module(
        'pg_wal_archive', dict(server='pg1', pg_host=CLUSTERS['pg1']['host'], pg_port=CLUSTERS['pg1']['port'])
    )
    assert ok and checked['continuity']['ok'], json.dumps(checked)[-3000:]
    for name, digest in sorted(pending.items()):
        stored = wal_archive.locate(name)
        assert stored and wal_store.content_digest(stored) == digest, '%s is not archived as written' % name
