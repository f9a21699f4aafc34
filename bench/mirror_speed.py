#!/usr/bin/env python3
"""Mirror backup server (#18): the copy of a 1 GB backup and of its incremental into a mirror, beside plain
rsync (the limit) and Barman 3.19.1's passive node, and the mirror's WAL lag behind its primary.

Run as root from the checkout; it needs neither the lab nor its lock (everything is its own):

    .venv/bin/python bench/mirror_speed.py [--scale N] [--segments N] [--no-results] [--keep]

Set-up, all under /var/tmp/bench-mirror (deleted in a finally, with the OS users and the sshd it made):

  PostgreSQL 15    initdb'd as postgres, port 5491, pgbench -i -s 64 (~1 GB); archive_command: a script that
                   puts each WAL file in the primary's incoming/ (and keeps a hard link for the WAL burst)
  primary          OS user benchmirp, catalog (its home) /var/tmp/bench-mirror/primary: our full backup, then
                   pgbench -T 15, then our incremental (reuse=link), with backup.take_backup()
  mirror           OS user benchmirm, catalog (its home) /var/tmp/bench-mirror/mirror
  sshd             the bench's own on 127.0.0.1:2291, admitting: the primary's key as postgres (backups); the
                   mirror's key on the primary forced to the catalog reader; the primary's forward keys on the
                   mirror forced to the mirror's WAL receiver; postgres's archive key on the primary forced to
                   the primary's WAL receiver; and, for the limit and Barman only, a second key of the mirror
                   on the primary without forced command

Rows: the full's mirror copy, then the incremental's (plain rsync -a with and without --link-dest, ours,
Barman's sync-info + sync-backup); the WAL the primary holds caught up by our forwarder and by Barman's
sync-wals; a burst of N segments delivered to the primary as PostgreSQL's archiver drains a backlog
(barman-wal-sender), and when the mirror holds them. See bench/README.md and bench/RESULTS.md.
"""

import argparse
import datetime
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_speed as common  # noqa: E402  (bench/backup_speed.py: run, du, make_dir, ...)
import results as results_md  # noqa: E402

from backup_speed import COLLECTIONS, TOP, MethodFailed, du, make_dir, run, write_file  # noqa: E402
from ansible_collections.barman.postgresql.plugins.module_utils import ssh, wal, wal_store  # noqa: E402

PG_BINDIR = '/usr/lib/postgresql/15/bin'
BARMAN_VENV = os.environ.get('BARMAN_VENV', '/opt/barman-venv')

BASE = '/var/tmp/bench-mirror'
HOST = '127.0.0.1'
PG_PORT = 5491
SSH_PORT = 2291
PRIMARY_USER = 'benchmirp'  # the primary backup server: owns its catalog, its home is that catalog's root
MIRROR_USER = 'benchmirm'  # the mirror backup server
PRIMARY_HOME = os.path.join(BASE, 'primary')
MIRROR_HOME = os.path.join(BASE, 'mirror')
PRIMARY_NAME = 'primary'  # the primary's inventory name, as the mirror records it (mirror.json)
MIRROR_NAME = 'mirror'  # the mirror's name in the primary's mirrors/<name>.json
SERVER = 'benchpg'  # the PostgreSQL server whose backups are mirrored
WAL_SERVER = 'benchwal'  # a second server name on both, fed only by the WAL burst
DATABASE = 'bench'
LIB = os.path.join(BASE, 'lib')  # runtime/ installed as setup.yml does (launchers, compiled)
SSH_DIR = os.path.join(BASE, 'ssh')
KNOWN_HOSTS = os.path.join(SSH_DIR, 'known_hosts')
PG_DIR = os.path.join(BASE, 'pg')
PGDATA = os.path.join(PG_DIR, 'data')
SOCKET = os.path.join(BASE, 'sock')
SEGMENTS = os.path.join(BASE, 'segments')  # a hard link of every WAL file archived (postgres's)
WAL_STAGE = os.path.join(BASE, 'wal-stage')
PG_KEYS = os.path.join(BASE, 'pgkeys')  # postgres's archive key, its spool and ControlMaster
BURST = os.path.join(BASE, 'burst')  # a stand-in PGDATA: pg_wal/ with the burst's segments .ready
LIMIT_DIR = os.path.join(BASE, 'limit')  # plain rsync's copies, as the mirror user
BARMAN_DIR = os.path.join(BASE, 'barman')  # Barman's passive node (as the mirror user)
MIRROR_KEY = os.path.join(MIRROR_HOME, '.ssh', 'barman_mirror')  # forced to the catalog reader
PEER_KEY = os.path.join(MIRROR_HOME, '.ssh', 'barman_peer')  # unrestricted: the limit and Barman only
ARCHIVE_KEY = os.path.join(PG_KEYS, 'barman_' + WAL_SERVER)

SECTION = '## Mirror backup server (#18)'
MB = 1e6

SSHD_CONFIG = """ListenAddress {host}:{port}
PidFile {dir}/sshd.pid
HostKey {dir}/host_ed25519
AuthorizedKeysFile {dir}/authorized_keys.%u
StrictModes no
AllowUsers postgres {primary} {mirror}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
PermitUserEnvironment PATH
UsePAM yes
"""

ARCHIVE_SCRIPT = """#!/bin/sh
# archive_command of the bench (%p %f): the file into the primary's incoming/ (as a copy put in place by
# rename, readable by its receiver), and a hard link of it in {segments} for the WAL burst.
set -e
p=$1
f=$2
if [ ! -f {segments}/$f ]; then
    cp "$p" {stage}/$f
    chmod 0666 {stage}/$f
    ln -f {stage}/$f {segments}/$f
    mv {stage}/$f {incoming}/$f
fi
"""

# Barman's side of the primary: a configuration over our catalog (Barman's layout), in the primary user's
# ~/.barman.conf, which `barman sync-info` and rsync find when the passive node connects.
BARMAN_PRIMARY_CONF = """[barman]
barman_user = {user}
barman_home = {home}
log_file = {home}/barman.log
log_level = INFO
compression = gzip

[{server}]
description = bench: our catalog, as Barman reads it
conninfo = host={host} port={pg_port} user=postgres dbname=postgres
ssh_command = ssh postgres@{host} -p {ssh_port}
backup_method = rsync
archiver = on
"""
BARMAN_PASSIVE_CONF = """[barman]
barman_user = {user}
barman_home = {home}
log_file = {home}/barman.log
log_level = INFO
compression = gzip

[{server}]
description = bench: passive node of the primary
primary_ssh_command = {primary_ssh}
conninfo = host={host} port={pg_port} user=postgres dbname=postgres
ssh_command = ssh postgres@{host} -p {ssh_port}
backup_method = rsync
reuse_backup = link
archiver = on
"""

# pg_backup_mirror's logic without Ansible: mirror.run_action() with the module's defaults, each step of it
# timed by wrapping the function that does it (the reader's list, rsync, the manifest check, the sync, lag).
OUR_MIRROR_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import backup, mirror, remote
timings = {}
def timed(owner, name, label):
    original = getattr(owner, name)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - start
    setattr(owner, name, wrapper)
timed(mirror, 'listing', 'list')
timed(remote.Remote, 'rsync', 'rsync')
timed(mirror, '_check_copy', 'manifest check')
timed(backup, 'sync_filesystem', 'sync')
timed(mirror, 'lag', 'lag')
spec = mirror.module_spec()['argument_spec']
params = dict((key, option.get('default')) for key, option in spec.items())
params.update(json.loads(sys.argv[2]))
start = time.perf_counter()
result = mirror.run_action(params)
result['elapsed'] = time.perf_counter() - start
result['timings'] = timings
print(json.dumps(result, default=str))
"""

PROCESS_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import wal_store
result = wal_store.WalArchive(sys.argv[2], sys.argv[3]).process_incoming('gzip')
print(json.dumps(dict((key, len(value)) for key, value in result.items())))
"""


# --------------------------------------------------------------------------- users, runtime, sshd, keys


def ensure_user(name, home, mode):
    try:
        pwd.getpwnam(name)
    except KeyError:
        run(['useradd', '--system', '--user-group', '--home-dir', home, '--shell', '/bin/sh', name])
    make_dir(home, name, mode)
    make_dir(os.path.join(home, '.ssh'), name)


def new_key(path, owner, comment):
    run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', comment, '-f', path], user=owner)
    return open(path + '.pub').read().strip()


def install_runtime():
    """runtime/ and plugins/module_utils/ of this checkout into LIB with the launchers setup.yml writes
    (roles/common/tasks/runtime.yml), compiled by root: what the forced commands run in production."""
    tree = os.path.join(LIB, 'ansible_collections', 'barman', 'postgresql')
    for sub in ('runtime', os.path.join('plugins', 'module_utils')):
        shutil.copytree(os.path.join(TOP, sub), os.path.join(tree, sub), ignore=shutil.ignore_patterns('__pycache__'))
    os.makedirs(os.path.join(LIB, 'bin'))
    templates = os.path.join(TOP, 'roles', 'common', 'templates')
    launcher = open(os.path.join(templates, 'launcher.py.j2')).read().replace('{{ ansible_managed }}', 'bench')
    launcher = launcher.replace('{{ barman_lib_dir | string | to_json }}', json.dumps(LIB))
    launchers = (
        ('barman-wal-receiver', 'walreceiver'),
        ('barman-wal-sender.py', 'walsender'),
        ('barman-catalog-reader', 'catalogreader'),
        ('barman-wal-forwarder', 'walforwarder'),
    )
    for name, module in launchers:
        write_file(os.path.join(LIB, 'bin', name), launcher.replace('{{ item.module }}', module), 'root', 0o755)
    shell = open(os.path.join(templates, 'wal-sender.sh.j2')).read().replace('{{ ansible_managed }}', 'bench')
    shell = shell.replace(
        "{{ (barman_lib_dir ~ '/bin/barman-wal-sender.py') | quote }}", LIB + '/bin/barman-wal-sender.py'
    )
    write_file(os.path.join(LIB, 'bin', 'barman-wal-sender'), shell, 'root', 0o755)
    run(['chmod', '-R', 'a+rX', LIB])
    run(['/usr/bin/python3', '-m', 'compileall', '-q', os.path.join(LIB, 'ansible_collections')])


def receiver(home, server):
    return [os.path.join(LIB, 'bin', 'barman-wal-receiver'), '--barman-home', home, '--server', server,
            '--compression', 'gzip']  # fmt: skip


def setup_keys():
    """Every key of the bench and the authorized_keys file of each user its sshd admits (root's, 0644)."""
    keys = {'postgres': [], PRIMARY_USER: [], MIRROR_USER: []}
    # The primary takes backups as postgres (as the lab's barman does), unrestricted.
    keys['postgres'].append(new_key(os.path.join(PRIMARY_HOME, '.ssh', 'id_ed25519'), PRIMARY_USER, 'bench-mirror'))
    # The mirror's key on the primary: the catalog reader of both servers (trust_mirrors.yml).
    reader = [os.path.join(LIB, 'bin', 'barman-catalog-reader'), '--barman-home', PRIMARY_HOME,
              '--server=' + SERVER, '--server=' + WAL_SERVER]  # fmt: skip
    public = new_key(MIRROR_KEY, MIRROR_USER, 'bench-mirror')
    keys[PRIMARY_USER].append(ssh.authorized_keys_line(public, reader, 'barman-postgresql-mirror:' + MIRROR_NAME))
    # A second key of the mirror, unrestricted, for the plain rsync of the limit and for Barman's passive node
    # (barman sync-info runs `barman` on the primary: Barman's venv on its PATH).
    public = new_key(PEER_KEY, MIRROR_USER, 'bench-mirror-peer')
    keys[PRIMARY_USER].append('environment="PATH=%s/bin:/usr/local/bin:/usr/bin:/bin" %s' % (BARMAN_VENV, public))
    # postgres's archive key of the burst's server, forced to the primary's receiver (trust_servers.yml).
    public = new_key(ARCHIVE_KEY, 'postgres', 'bench-mirror-archive')
    keys[PRIMARY_USER].append(ssh.authorized_keys_line(public, receiver(PRIMARY_HOME, WAL_SERVER), 'bench-archive'))
    # The primary's forward key of each server, on the mirror forced to the mirror's receiver of that server.
    for server in (SERVER, WAL_SERVER):
        path = os.path.join(PRIMARY_HOME, '.ssh', 'barman_forward_' + server)
        public = new_key(path, PRIMARY_USER, 'bench-mirror-forward')
        line = ssh.authorized_keys_line(public, receiver(MIRROR_HOME, server), 'barman-postgresql-forward:' + server)
        keys[MIRROR_USER].append(line)
    for user, lines in keys.items():
        write_file(os.path.join(SSH_DIR, 'authorized_keys.' + user), '\n'.join(lines) + '\n', 'root', 0o644)


def limit_rsh():
    """rsync's -e of the limit: ssh as ours runs it (ssh.rsync_rsh: host keys checked, our module's cipher), with
    the mirror's unrestricted key, so that no forced command is paid."""
    return ssh.rsync_rsh(known_hosts_file=KNOWN_HOSTS, identity_file=PEER_KEY, port=SSH_PORT)


def barman_ssh_command():
    """Barman's primary_ssh_command: the same ssh, with the primary's user@host (Barman appends the command)."""
    return limit_rsh() + ' %s@%s' % (PRIMARY_USER, HOST)


def start_sshd():
    make_dir(SSH_DIR, 'root', 0o755)
    host_key = os.path.join(SSH_DIR, 'host_ed25519')
    run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', 'bench-mirror-host', '-f', host_key])
    config = os.path.join(SSH_DIR, 'sshd_config')
    text = SSHD_CONFIG.format(host=HOST, port=SSH_PORT, dir=SSH_DIR, primary=PRIMARY_USER, mirror=MIRROR_USER)
    write_file(config, text, 'root', 0o644)
    run(['/usr/sbin/sshd', '-f', config, '-E', os.path.join(SSH_DIR, 'sshd.log')])
    kind, blob = open(host_key + '.pub').read().split()[:2]
    write_file(KNOWN_HOSTS, ssh.known_hosts_line(HOST, SSH_PORT, kind, blob) + '\n', 'root', 0o644)
    argv = ssh.ssh_argv(ssh.validate_ssh_target(PRIMARY_USER, HOST, SSH_PORT), ['true'], known_hosts_file=KNOWN_HOSTS,
                        identity_file=PEER_KEY)  # fmt: skip
    for _ in range(50):
        if run(argv, user=MIRROR_USER, check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise RuntimeError('the bench sshd does not let %s in as %s@%s:%d' % (MIRROR_USER, PRIMARY_USER, HOST, SSH_PORT))


def stop_sshd():
    pid_file = os.path.join(SSH_DIR, 'sshd.pid')
    if os.path.exists(pid_file):
        try:
            os.kill(int(open(pid_file).read().strip()), 15)
        except (OSError, ValueError):
            pass


def user_pids(names):
    """Pids of the processes of the bench's users (its receivers' background work, ssh masters)."""
    uids = set()
    for name in names:
        try:
            uids.add(pwd.getpwnam(name).pw_uid)
        except KeyError:
            pass
    pids = []
    for entry in os.listdir('/proc'):
        try:
            if entry.isdigit() and os.stat('/proc/' + entry).st_uid in uids:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def end_user_processes(names, seconds=30):
    """Wait for the bench users' processes to end (a receiver's background compression, a forwarder), then
    end the ones left, by pid: they are this run's."""
    deadline = time.monotonic() + seconds
    while user_pids(names) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in user_pids(names):
        try:
            os.kill(pid, 15)
        except OSError:
            pass


def stop_sender():
    """End what postgres's archive key left running: its look-ahead agent and its ControlMaster."""
    target = ssh.validate_ssh_target(PRIMARY_USER, HOST, SSH_PORT)
    control = ARCHIVE_KEY + '.cm-%C'
    argv = ssh.control_exit_argv(target, known_hosts_file=KNOWN_HOSTS, control_path=control, identity_file=ARCHIVE_KEY)
    run(argv, user='postgres', check=False)
    lock = os.path.join(ARCHIVE_KEY + '.spool', 'agent.lock')
    if os.path.exists(lock):
        run(['fuser', '-k', '-TERM', lock], check=False)


# --------------------------------------------------------------------------- PostgreSQL and the primary's catalog


def pg(tool):
    return os.path.join(PG_BINDIR, tool)


def psql(sql, database='postgres'):
    argv = [pg('psql'), '-X', '-At', '-h', SOCKET, '-p', str(PG_PORT), '-d', database, '-v', 'ON_ERROR_STOP=1']
    return run(argv + ['-c', sql], user='postgres').stdout.decode().strip()


def primary_catalog(server):
    """A server's catalog on the primary; incoming/ writable by postgres (the archive script puts WAL there)."""
    root = os.path.join(PRIMARY_HOME, server)
    make_dir(root, PRIMARY_USER, 0o711)  # postgres goes through to incoming/
    for sub in ('meta', 'base', 'wals', 'errors', 'streaming', 'mirrors'):
        make_dir(os.path.join(root, sub), PRIMARY_USER)
    make_dir(os.path.join(root, 'incoming'), PRIMARY_USER, 0o777)
    # Where its receiver forwards (trust_mirrors.yml writes the same file).
    config = dict(mirror=MIRROR_NAME, ssh='%s@%s' % (MIRROR_USER, HOST), port=SSH_PORT, known_hosts=KNOWN_HOSTS,
                  identity_file=os.path.join(PRIMARY_HOME, '.ssh', 'barman_forward_' + server))  # fmt: skip
    write_file(os.path.join(root, 'mirrors', MIRROR_NAME + '.json'), json.dumps(config) + '\n', PRIMARY_USER, 0o600)
    return os.path.join(root, 'incoming')


def create_cluster(scale):
    for path, owner in ((PG_DIR, 'postgres'), (SOCKET, 'postgres'), (SEGMENTS, 'postgres'), (WAL_STAGE, 'postgres')):
        make_dir(path, owner, 0o755)
    script = os.path.join(PG_DIR, 'archive.sh')
    text = ARCHIVE_SCRIPT.format(segments=SEGMENTS, stage=WAL_STAGE, incoming=primary_catalog(SERVER))
    write_file(script, text, 'root', 0o755)
    run([pg('initdb'), '-D', PGDATA, '-k', '-U', 'postgres', '--auth-local=trust', '--auth-host=trust',
         '--locale=C.UTF-8', '--no-instructions'], user='postgres')  # fmt: skip
    settings = [
        "listen_addresses = '%s'" % HOST,
        'port = %d' % PG_PORT,
        "unix_socket_directories = '%s'" % SOCKET,
        'wal_level = replica',
        'max_wal_senders = 10',
        'max_wal_size = 4GB',
        'checkpoint_timeout = 1h',
        'archive_mode = on',
        "archive_command = '%s %%p %%f'" % script,
    ]
    with open(os.path.join(PGDATA, 'postgresql.auto.conf'), 'a') as handle:
        handle.write('\n'.join(settings) + '\n')
    run([pg('pg_ctl'), '-D', PGDATA, '-l', os.path.join(PG_DIR, 'log'), '-w', 'start'], user='postgres')
    psql('CREATE DATABASE %s' % DATABASE)
    print('loading the data: pgbench -i -s %d %s' % (scale, DATABASE), flush=True)
    run([pg('pgbench'), '-i', '-q', '-s', str(scale), '-h', SOCKET, '-p', str(PG_PORT), DATABASE], user='postgres')
    psql('CHECKPOINT')


def stop_cluster():
    if os.path.exists(os.path.join(PGDATA, 'postmaster.pid')):
        run([pg('pg_ctl'), '-D', PGDATA, '-m', 'immediate', 'stop'], user='postgres', check=False)


def write_load(seconds=15):
    print('write load: pgbench -T %d -c 2 %s' % (seconds, DATABASE), flush=True)
    out = run([pg('pgbench'), '-T', str(seconds), '-c', '2', '-h', SOCKET, '-p', str(PG_PORT), DATABASE],
              user='postgres').stdout.decode()  # fmt: skip
    psql('CHECKPOINT')
    tps = re.search(r'tps = ([\d.]+)', out)
    return float(tps.group(1)) if tps else None


def child(code, params, user):
    """Run ``code`` (one of the *_CHILD programs) as ``user``; its last line of output, JSON. A failure says
    the child's exception (the end of its traceback), not its program text."""
    argv = ['/usr/bin/python3', '-c', code, COLLECTIONS] + params
    proc = run(argv, user=user, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors='replace').strip().splitlines() or ['(no output)']
        # The exception: the lines after the traceback's last indented one (its message may have several).
        indented = [i for i, line in enumerate(lines) if line[:1].isspace()]
        error = ' / '.join(lines[indented[-1] + 1 :] if indented and indented[-1] + 1 < len(lines) else lines[-3:])
        raise MethodFailed('the child exited %d: %s' % (proc.returncode, error[:1500]))
    return json.loads(proc.stdout.decode().strip().splitlines()[-1])


def our_backup(reuse):
    """backup.take_backup() into the primary's catalog, as its user (as backup_speed.py calls it); then the
    WAL the archive script delivered is processed (compressed, indexed) as the primary's receiver would."""
    params = dict(server=SERVER, barman_home=PRIMARY_HOME, pg_host=HOST, pg_port=PG_PORT, pg_user='postgres',
                  ssh_port=SSH_PORT, ssh_known_hosts=KNOWN_HOSTS, reuse=reuse)  # fmt: skip
    result = child(common.OUR_CHILD, [json.dumps(params)], PRIMARY_USER)
    child(PROCESS_CHILD, [PRIMARY_HOME, SERVER], PRIMARY_USER)
    print('  our backup %s (reuse=%s): %.1f s' % (result['backup_id'], reuse, result['elapsed']), flush=True)
    return result


# --------------------------------------------------------------------------- the mirror copy: limit, ours, Barman


def primary_backup_dir(backup_id, server=SERVER):
    return os.path.join(PRIMARY_HOME, server, 'base', backup_id)


def mirror_base(server=SERVER):
    return os.path.join(MIRROR_HOME, server, 'base')


def warm(paths):
    """Read the source once (page cache), after a global sync of what the method before left dirty."""
    run(['sync'])
    for path in paths:
        run(['find', path, '-type', 'f', '-exec', 'cat', '{}', '+'], stdout=subprocess.DEVNULL, check=False)


def limit_rsync(backup_id, name, link_dest=None, whole_file=False):
    """rsync -a of the primary's backup directory as the mirror user, over the bench sshd (the unrestricted
    key, our module's cipher, host key checked) into LIMIT_DIR/name, then sync -f."""
    make_dir(LIMIT_DIR, MIRROR_USER)
    target = os.path.join(LIMIT_DIR, name)
    argv = ['rsync', '-a', '-e', limit_rsh()]
    if link_dest:
        argv.append('--link-dest=' + os.path.join(LIMIT_DIR, link_dest))
    if whole_file:
        argv.append('--whole-file')
    argv += ['%s@%s:%s/' % (PRIMARY_USER, HOST, primary_backup_dir(backup_id)), target + '/']
    start = time.perf_counter()
    run(argv, user=MIRROR_USER)
    run(['sync', '-f', target], user=MIRROR_USER)
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'disk': du(target, os.path.join(LIMIT_DIR, link_dest) if link_dest else None)}


def mirror_params(server=SERVER, **overrides):
    params = dict(server=server, barman_home=MIRROR_HOME, primary=PRIMARY_NAME,
                  primary_ssh='%s@%s' % (PRIMARY_USER, HOST), primary_port=SSH_PORT,
                  primary_barman_home=PRIMARY_HOME, identity_file=MIRROR_KEY,
                  known_hosts_file=KNOWN_HOSTS)  # fmt: skip
    params.update(overrides)
    return params


def method_ours(backup_id, previous=None):
    """pg_backup_mirror's logic (mirror.run_action, action sync) as the mirror user, through the catalog
    reader; timed around the child process (Python's start included, as a module run would pay it)."""
    start = time.perf_counter()
    result = child(OUR_MIRROR_CHILD, [json.dumps(mirror_params())], MIRROR_USER)
    seconds = time.perf_counter() - start
    copied = [c['backup_id'] for c in result['copied']]
    if copied != [backup_id]:
        raise MethodFailed('the mirror copied %s, not %s: %s' % (copied, backup_id, json.dumps(result)[:800]))
    one = result['copied'][0]
    steps = ', '.join('%s %.2f s' % (k, v) for k, v in sorted(result['timings'].items(), key=lambda kv: -kv[1]))
    base = mirror_base()
    return {
        'seconds': seconds,
        'disk': du(os.path.join(base, backup_id), os.path.join(base, previous) if previous else None),
        'note': 'run_action %.2f s: %s; rsync sent %s; %d files checked; linked from %s; lag %s segments'
        % (
            result['elapsed'],
            steps,
            human(one.get('bytes')),
            one['checked'],
            one.get('linked_from') or '-',
            (result.get('lag') or {}).get('behind_segments', '?'),
        ),  # fmt: skip
    }


def barman_setup():
    """Barman's primary (~/.barman.conf of the primary's user, over our catalog) and its passive node (as the
    mirror user, home under BARMAN_DIR), for both servers."""
    barman = os.path.join(BARMAN_VENV, 'bin', 'barman')
    if not os.path.exists(barman):
        print('installing barman 3.19.1 into %s' % BARMAN_VENV, flush=True)
        run(['/usr/bin/python3', '-m', 'venv', BARMAN_VENV])
        run([os.path.join(BARMAN_VENV, 'bin', 'pip'), 'install', '-q', 'barman==3.19.1', 'psycopg2-binary'])
    values = dict(host=HOST, pg_port=PG_PORT, ssh_port=SSH_PORT, server=SERVER)
    text = BARMAN_PRIMARY_CONF.format(user=PRIMARY_USER, home=PRIMARY_HOME, **values)
    write_file(os.path.join(PRIMARY_HOME, '.barman.conf'), text, PRIMARY_USER, 0o644)
    home = os.path.join(BARMAN_DIR, 'home')
    make_dir(BARMAN_DIR, MIRROR_USER, 0o755)
    make_dir(home, MIRROR_USER, 0o755)
    config = os.path.join(BARMAN_DIR, 'barman.conf')
    text = BARMAN_PASSIVE_CONF.format(user=MIRROR_USER, home=home, primary_ssh=barman_ssh_command(), **values)
    write_file(config, text, MIRROR_USER, 0o644)
    return {'barman': barman, 'config': config, 'base': os.path.join(home, SERVER, 'base'),
            'wals': os.path.join(home, SERVER, 'wals')}  # fmt: skip


def barman_cmd(barman, *args):
    return run([barman['barman'], '-c', barman['config'], '-q'] + list(args), user=MIRROR_USER, cwd=BARMAN_DIR)


def method_barman(barman, backup_id, previous=None):
    """`barman sync-info --primary` (what the passive node knows of the primary), then `barman sync-backup`."""
    start = time.perf_counter()
    barman_cmd(barman, 'sync-info', '--primary', SERVER)
    info_seconds = time.perf_counter() - start
    proc = barman_cmd(barman, 'sync-backup', SERVER, backup_id)
    seconds = time.perf_counter() - start
    info = common.read_barman_info(os.path.join(os.path.dirname(barman['base']), 'meta', '%s-backup.info' % backup_id))
    if info.get('status') != 'DONE':
        raise MethodFailed(
            'barman sync-backup left %s %s: %s' % (backup_id, info.get('status'), proc.stderr.decode()[-500:])
        )
    path = os.path.join(barman['base'], backup_id)
    return {
        'seconds': seconds,
        'disk': du(path, os.path.join(barman['base'], previous) if previous else None),
        'note': 'sync-info --primary %.2f s, sync-backup %.2f s; status %s'
        % (info_seconds, seconds - info_seconds, info.get('status')),
    }


# --------------------------------------------------------------------------- WAL


def wal_files(directory):
    names = []
    for _d, _s, files in os.walk(directory):
        names += [name for name in files if wal.is_wal_name(name)]
    return sorted(names)


def limit_wal_copy():
    """rsync -a of the primary's wals/ (gzip, as stored) over the same ssh into a scratch dir, + sync -f."""
    make_dir(LIMIT_DIR, MIRROR_USER)
    target = os.path.join(LIMIT_DIR, 'wals')
    source = os.path.join(PRIMARY_HOME, SERVER, 'wals')
    argv = ['rsync', '-a', '--exclude=*xlog.db', '-e', limit_rsh(),
            '%s@%s:%s/' % (PRIMARY_USER, HOST, source), target + '/']  # fmt: skip
    start = time.perf_counter()
    run(argv, user=MIRROR_USER)
    run(['sync', '-f', target], user=MIRROR_USER)
    seconds = time.perf_counter() - start
    count = len(wal_files(target))
    return {'seconds': seconds, 'disk': du(target), 'count': count, 'note': '%d files' % count}


def method_forwarder():
    """The forwarder's command line (mirror.yml runs it to catch a mirror up), as the primary's user."""
    argv = [os.path.join(LIB, 'bin', 'barman-wal-forwarder'), '--barman-home', PRIMARY_HOME, '--server', SERVER,
            '--wait', '60']  # fmt: skip
    start = time.perf_counter()
    out = run(argv, user=PRIMARY_USER, cwd=PRIMARY_HOME).stdout.decode()
    seconds = time.perf_counter() - start
    result = json.loads(out.strip().splitlines()[-1])
    if result['error'] or result['behind']:
        raise MethodFailed('the forwarder left the mirror behind: %s' % out.strip())
    # The mirror's receiver compresses (and indexes in xlog.db) in the background after its stream: wait until
    # incoming/ is empty, or has not changed for 15 s (at most 120 s), and say what is left there.
    incoming = os.path.join(MIRROR_HOME, SERVER, 'incoming')
    left, since, deadline = None, time.monotonic(), time.monotonic() + 120
    while time.monotonic() < deadline:
        now = sorted(e for e in os.listdir(incoming) if wal.is_wal_name(e))
        if now != left:
            left, since = now, time.monotonic()
        if not now or time.monotonic() - since > 15:
            break
        time.sleep(0.2)
    waited = time.perf_counter() - start - seconds
    if left:
        after = '%d files (%s..%s) still in its incoming/, not compressed nor in xlog.db, %.0f s after' % (
            len(left),
            left[0],
            left[-1],
            waited,
        )
    else:
        after = 'all compressed on the mirror %.1f s after' % waited
    wals = os.path.join(MIRROR_HOME, SERVER, 'wals')
    return {
        'seconds': seconds,
        'disk': du(wals) + du(incoming),
        'count': result['forwarded'],
        'note': '%d files forwarded (every archived file), last %s; %s' % (result['forwarded'], result['last'], after),
    }


def method_barman_wals(barman):
    """`barman sync-info --primary` then `barman sync-wals` (what `barman cron` runs on a passive node)."""
    before = set(wal_files(barman['wals']))
    start = time.perf_counter()
    barman_cmd(barman, 'sync-info', '--primary', SERVER)
    info_seconds = time.perf_counter() - start
    barman_cmd(barman, 'sync-wals', SERVER)
    seconds = time.perf_counter() - start
    count = len(set(wal_files(barman['wals'])) - before)
    if not count:
        raise MethodFailed('barman sync-wals copied nothing')
    return {
        'seconds': seconds,
        'disk': du(barman['wals']),
        'count': count,
        'note': '%d files (from its first backup on); sync-info --primary %.2f s, sync-wals %.2f s'
        % (count, info_seconds, seconds - info_seconds),
    }


def burst_pgdata(count):
    """A stand-in PGDATA with ``count`` real segments of the cluster in pg_wal/ (hard links), each .ready."""
    names = [n for n in sorted(os.listdir(SEGMENTS)) if wal.parse_wal_name(n).kind == 'segment'][:count]
    if len(names) < count:
        raise MethodFailed('only %d segments archived, %d wanted' % (len(names), count))
    status = os.path.join(BURST, 'pg_wal', 'archive_status')
    for path in (BURST, os.path.dirname(status), status):
        make_dir(path, 'postgres')
    for name in names:
        os.link(os.path.join(SEGMENTS, name), os.path.join(BURST, 'pg_wal', name))
        write_file(os.path.join(status, name + '.ready'), '', 'postgres', 0o600)
    return names


def limit_burst(names):
    """rsync -a of the burst's segments (uncompressed, what a forward sends) over the same ssh + sync -f."""
    make_dir(LIMIT_DIR, MIRROR_USER)
    target = os.path.join(LIMIT_DIR, 'burst')
    argv = ['rsync', '-a', '--exclude=archive_status', '-e', limit_rsh(),
            '%s@%s:%s/' % (PRIMARY_USER, HOST, os.path.join(BURST, 'pg_wal')), target + '/']  # fmt: skip
    start = time.perf_counter()
    run(argv, user=MIRROR_USER)
    run(['sync', '-f', target], user=MIRROR_USER)
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'disk': du(target), 'count': len(names)}


class Watcher(threading.Thread):
    """When each WAL file name appears in an archive (incoming/ or wals/), and when, all of them in, none is
    left in its incoming/ (compressed and indexed by the receiver's background processing); polled every 20 ms."""

    def __init__(self, homes, names, start):
        super().__init__(daemon=True)
        self.archives = dict((home, wal_store.WalArchive(home, WAL_SERVER)) for home in homes)
        self.seen = dict((home, {}) for home in homes)
        self.processed = dict((home, None) for home in homes)
        self.names, self.start_time, self.stop = set(names), start, threading.Event()

    def run(self):
        while not self.stop.is_set():
            now = time.perf_counter() - self.start_time
            for home, archive in self.archives.items():
                for name in self.names.intersection(archive.archived_names()):
                    self.seen[home].setdefault(name, now)
                if self.all_in(home) and self.processed[home] is None:
                    incoming = os.path.join(home, WAL_SERVER, 'incoming')
                    if not self.names.intersection(os.listdir(incoming)):
                        self.processed[home] = now
            time.sleep(0.02)

    def all_in(self, home):
        return len(self.seen[home]) == len(self.names)

    def all_processed(self):
        return all(when is not None for when in self.processed.values())


def method_burst(names):
    """The archiver draining a backlog into the primary (one barman-wal-sender put per segment in order, cwd the
    stand-in PGDATA, .ready renamed .done after each success, as archive_many.py does), while the primary's
    receiver forwards to the mirror: when each side holds each segment."""
    status = os.path.join(BURST, 'pg_wal', 'archive_status')
    sender = [os.path.join(LIB, 'bin', 'barman-wal-sender'), '--ssh', '%s@%s' % (PRIMARY_USER, HOST), '--port',
              str(SSH_PORT), '--identity-file', ARCHIVE_KEY, '--known-hosts', KNOWN_HOSTS, 'put']  # fmt: skip
    start = time.perf_counter()
    watcher = Watcher([PRIMARY_HOME, MIRROR_HOME], names, start)
    watcher.start()
    try:
        for name in names:
            run(sender + ['pg_wal/' + name], user='postgres', cwd=BURST)
            os.rename(os.path.join(status, name + '.ready'), os.path.join(status, name + '.done'))
        puts = time.perf_counter() - start
        common.wait_until(lambda: watcher.all_in(PRIMARY_HOME) and watcher.all_in(MIRROR_HOME), 600, 'the mirror')
        deadline = time.monotonic() + 120  # then their compression: reported, not waited for beyond that
        while not watcher.all_processed() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watcher.stop.set()
        watcher.join()
    primary, mirror = watcher.seen[PRIMARY_HOME], watcher.seen[MIRROR_HOME]
    error = os.path.join(PRIMARY_HOME, WAL_SERVER, 'mirrors', MIRROR_NAME + '.error')
    if os.path.exists(error):
        raise MethodFailed('the forwarder recorded an error: %s' % open(error).read())
    lags = [mirror[n] - primary[n] for n in names]
    primary_all = max(primary.values())
    return {
        'mirror_then': sum(1 for t in mirror.values() if t <= primary_all),
        'puts': puts,
        'primary_all': max(primary.values()),
        'mirror_first': min(mirror.values()),
        'mirror_all': max(mirror.values()),
        'lag_median': statistics.median(lags),
        'lag_max': max(lags),
        'primary_processed': watcher.processed[PRIMARY_HOME],
        'mirror_processed': watcher.processed[MIRROR_HOME],
    }


# --------------------------------------------------------------------------- report


def human(size):
    return '%.0f MB' % (size / MB) if size is not None else '-'


def measure(rows, phase, name, function, warm_paths=(), limit=False, ratio=True, size=None):
    """One row: ``function()`` after a sync and a read of ``warm_paths``; ``size`` (bytes) gives its MB/s."""
    warm(warm_paths)
    print('%s: %s ...' % (phase, name), flush=True)
    load = os.getloadavg()[0]
    try:
        row = function()
        print('  %.2f s%s' % (row['seconds'], ', %s new on disk' % human(row['disk']) if 'disk' in row else ''))
    except Exception as error:  # a failed method is reported, the others still run
        row = dict(error='%s: %s' % (type(error).__name__, error))
        print('  FAILED: %s' % str(error)[:1500], flush=True)
    row.update(phase=phase, name=name, limit=limit, ratio=ratio, load=load)
    row.setdefault('bytes', size)
    rows.append(row)
    return row


def table(rows):
    """x limit: wall s / the fastest limit of the same phase."""
    limits = {}
    for r in rows:
        if r['limit'] and 'seconds' in r:
            limits[r['phase']] = min(r['seconds'], limits.get(r['phase'], r['seconds']))
    lines = [
        '| phase | method | wall s | x limit | new MB on disk | MB/s | files/s | load 1 min | note |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        if 'error' in r:
            text = r['error'].replace('|', '/').replace('\n', ' ')[:500]
            lines.append('| %s | %s | failed: %s | | | | | | |' % (r['phase'], r['name'], text))
            continue
        limit = limits.get(r['phase'])
        lines.append(
            '| %s | %s | %.2f | %s | %s | %s | %s | %.1f | %s |'
            % (
                r['phase'],
                r['name'],
                r['seconds'],
                '%.2f' % (r['seconds'] / limit) if limit and r['ratio'] else '-',
                '%.1f' % (r['disk'] / MB) if r.get('disk') is not None else '-',
                '%.0f' % (r['bytes'] / MB / r['seconds']) if r.get('bytes') and r['seconds'] else '-',
                '%.1f' % (r['count'] / r['seconds']) if r.get('count') and r['seconds'] else '-',
                r['load'],
                (r.get('note') or '').replace('|', '/'),
            )
        )
    return '\n'.join(lines)


def cleanup():
    stop_sender()
    stop_cluster()
    stop_sshd()
    end_user_processes([PRIMARY_USER, MIRROR_USER])
    shutil.rmtree(BASE, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--scale', type=int, default=64, help='pgbench scale of the data (default 64: ~1 GB)')
    parser.add_argument('--segments', type=int, default=64, help='WAL segments in the burst (default 64)')
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    parser.add_argument('--keep', action='store_true', help='leave users, cluster, sshd and files (to look)')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and as its two backup servers)')
    rows, facts = [], {}
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    try:
        cleanup()  # a kept run's
        make_dir(BASE, 'root', 0o755)
        ensure_user(PRIMARY_USER, PRIMARY_HOME, 0o711)
        ensure_user(MIRROR_USER, MIRROR_HOME, 0o700)
        make_dir(PG_KEYS, 'postgres')
        install_runtime()
        make_dir(SSH_DIR, 'root', 0o755)
        setup_keys()
        start_sshd()
        primary_catalog(WAL_SERVER)
        create_cluster(args.scale)
        facts['version'] = psql('SHOW server_version')
        facts['size'] = int(psql('SELECT sum(pg_database_size(oid)) FROM pg_database'))
        barman = barman_setup()

        full = our_backup('off')
        facts['full'] = full
        full_id, size = full['backup_id'], full['size']
        phase = 'full'
        source = [primary_backup_dir(full_id)]
        measure(rows, phase, 'limit: rsync -a over ssh + sync -f', lambda: limit_rsync(full_id, 'full'), source,
                limit=True, size=size)  # fmt: skip
        measure(rows, phase, 'ours: mirror.run_action (sync)', lambda: method_ours(full_id), source, size=size)
        measure(rows, phase, 'Barman 3.19.1: sync-info --primary + sync-backup',
                lambda: method_barman(barman, full_id), source, size=size)  # fmt: skip

        facts['tps'] = write_load(15)
        incr = our_backup('link')
        facts['incr'] = incr
        incr_id, size = incr['backup_id'], incr['size']
        phase = 'incr'
        source = [primary_backup_dir(incr_id)]
        measure(rows, phase, 'limit: rsync -a --link-dest + sync -f (delta algorithm)',
                lambda: limit_rsync(incr_id, 'incr', 'full'), source, limit=True, size=size)  # fmt: skip
        measure(rows, phase, 'limit: rsync -a --link-dest --whole-file + sync -f',
                lambda: limit_rsync(incr_id, 'incr-whole', 'full', whole_file=True), source, limit=True,
                size=size)  # fmt: skip
        measure(rows, phase, 'rsync -a without --link-dest + sync -f (a whole copy)',
                lambda: limit_rsync(incr_id, 'incr-nolink'), source, size=size)  # fmt: skip
        measure(rows, phase, 'ours: mirror.run_action (sync)', lambda: method_ours(incr_id, full_id), source, size=size)
        measure(rows, phase, 'Barman 3.19.1: sync-info --primary + sync-backup',
                lambda: method_barman(barman, incr_id, full_id), source, size=size)  # fmt: skip

        phase = 'WAL catch-up'
        wals = [os.path.join(PRIMARY_HOME, SERVER, 'wals')]
        facts['archived'] = len(wal_files(wals[0]))
        measure(rows, phase, "limit: rsync -a of the primary's wals/ (gzip) + sync -f", limit_wal_copy, wals,
                limit=True)  # fmt: skip
        measure(rows, phase, 'ours: barman-wal-forwarder (command line)', method_forwarder, wals)
        measure(rows, phase, 'Barman 3.19.1: sync-info --primary + sync-wals', lambda: method_barman_wals(barman), wals)

        phase = 'WAL burst'
        names = burst_pgdata(args.segments)
        run(['chmod', '0755', BURST, os.path.join(BURST, 'pg_wal')])  # the limit reads it as the primary's user
        child(OUR_MIRROR_CHILD, [json.dumps(mirror_params(WAL_SERVER, action='claim'))], MIRROR_USER)
        segments = [os.path.join(BURST, 'pg_wal', name) for name in names]
        size = sum(os.path.getsize(path) for path in segments)
        measure(rows, phase, 'limit: rsync -a of the %d segments + sync -f' % len(names), lambda: limit_burst(names),
                segments, limit=True, size=size)  # fmt: skip
        burst = {}

        def burst_primary():
            burst.update(method_burst(names))
            note = 'from the first put; the %d puts returned after %.2f s' % (len(names), burst['puts'])
            return {'seconds': burst['primary_all'], 'count': len(names), 'note': note}

        measure(rows, phase, 'ours: primary holds all (archiver draining a backlog, barman-wal-sender)',
                burst_primary, segments, ratio=False, size=size)  # fmt: skip
        if burst:
            window = burst['mirror_all'] - burst['mirror_first']
            load = os.getloadavg()[0]
            note = 'from the first put; the mirror held %d when the primary held all; its first at %.2f s, ' % (
                burst['mirror_then'],
                burst['mirror_first'],
            )
            note += 'its last %.2f s later; ' % window
            note += "the primary's incoming/ held none of them (all compressed) at %s, the mirror's at %s" % tuple(
                '%.2f s' % burst[key] if burst[key] is not None else 'not within 120 s'
                for key in ('primary_processed', 'mirror_processed')
            )
            rows.append(dict(phase=phase, name="ours: mirror holds all (forwarded by the primary's receiver)",
                             seconds=burst['mirror_all'], count=len(names), bytes=size, limit=False, ratio=False,
                             load=load, note=note))  # fmt: skip
            rows.append(dict(phase=phase, name='ours: mirror lag behind the primary (the last segment)',
                             seconds=burst['mirror_all'] - burst['primary_all'], limit=False, ratio=True, load=load,
                             note='each segment on the mirror after the primary: median %.2f s, max %.2f s'
                             % (burst['lag_median'], burst['lag_max'])))  # fmt: skip
    finally:
        if args.keep:
            print('kept: %s, cluster and sshd running, users %s and %s' % (BASE, PRIMARY_USER, MIRROR_USER))
        else:
            cleanup()
            common.remove_user(PRIMARY_USER)
            common.remove_user(MIRROR_USER)

    text = report(args, rows, facts, started, load_before)
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 1 if any('error' in r for r in rows) else 0


def report(args, rows, facts, started, load_before):
    full, incr = facts.get('full') or {}, facts.get('incr') or {}
    text = [
        SECTION,
        '',
        'Run %s on %s. pgbench scale %d (databases %s in all); our full backup %s (%s, %.1f s), then `pgbench -T 15 '
        '-c 2` (%s tps) and CHECKPOINT, then our incremental %s (reuse=link, %s, deduplicated %s, %.1f s), both '
        "with backup.take_backup() into the primary's catalog. WAL: %s files in the primary's archive after the "
        'backups; a burst of %d segments. Load average (1 min) %.1f before, %.1f after. '
        '`.venv/bin/python bench/mirror_speed.py%s`.'
        % (
            started.strftime('%Y-%m-%d %H:%M %Z'),
            results_md.machine(facts.get('version', '15'), 'rsync over OpenSSH on 127.0.0.1 (AES-GCM)'),
            args.scale,
            human(facts.get('size')),
            full.get('backup_id', '?'),
            human(full.get('size')),
            full.get('elapsed', float('nan')),
            '%.0f' % facts['tps'] if facts.get('tps') else '?',
            incr.get('backup_id', '?'),
            human(incr.get('size')),
            human(incr.get('deduplicated_size')),
            incr.get('elapsed', float('nan')),
            facts.get('archived', '?'),
            args.segments,
            load_before,
            os.getloadavg()[0],
            ''.join(
                ' --%s %s' % (k, v)
                for k, v, d in (('scale', args.scale, 64), ('segments', args.segments, 64))
                if v != d
            ),  # fmt: skip
        ),
        '',
        table(rows),
        '',
        'x limit: wall s / the fastest limit of the phase. Every copy runs as the mirror user over the bench sshd '
        "(127.0.0.1, our module's AES-GCM cipher, host key checked); the source is read once before each row (page "
        'cache) after a global `sync`. Limits: plain `rsync -a` with an unrestricted key into a scratch directory, '
        "then `sync -f`; the incremental with `--link-dest` to the full's copy (rsync's delta algorithm, its "
        'default over ssh, and `--whole-file`). Ours: `mirror.run_action()` (what pg_backup_mirror runs) in a '
        "child process as the mirror user, through the catalog reader (the mirror key's forced command); wall s "
        'includes the Python start, the listing, rsync, the check of every file against the backup_manifest, the '
        'sync and the lag query; the note splits it. Barman: a passive node (`primary_ssh_command`, the '
        'unrestricted key) whose primary is a Barman configuration over our catalog; `barman sync-info --primary` '
        '(which sync-backup and sync-wals read) is counted in its rows. new MB on disk: `du -s -B1` of the copy '
        "(an incremental: only what it adds to the full's copy). WAL catch-up: the primary's archive of the "
        "server as the backups left it; ours forwards every file (decompressed, framed; the mirror's receiver "
        'fsyncs and compresses each; the note says when its incoming/ was empty), Barman copies its gzip files '
        "from its first backup on. WAL burst: the segments delivered by postgres's `barman-wal-sender put` one per "
        "segment (its look-ahead agent streams them) into the primary's receiver, whose background processing "
        '(every 64 files of a stream, and after 1 s without one; a processor that finds another running forwards '
        'what the archive holds, then waits for it and compresses what it left) compresses what arrived, then '
        "forwards to the mirror's receiver; times from the first put, polled "
        'every 20 ms in both archives (a file counts once durable in incoming/).',
    ]
    return '\n'.join(text) + '\n'


if __name__ == '__main__':
    sys.exit(main())
