#!/usr/bin/env python3
"""WAL archiving throughput: one process per 16 MB segment, as PostgreSQL's archive_command runs it.

Run as root on the lab (tests/lab/lab up, playbooks/setup.yml done), from the checkout:

    .venv/bin/python bench/archive_throughput.py [--segments N]

The same N consecutive real segments of pg1 go through, one call per segment, in sequence:

  cp+sync      cp into a local directory, then sync of that file (the physical limit)
  rsync/ssh    plain rsync over SSH into a directory of barman on backup1 (new handshake per call)
  ours         barman-wal-sender put -> barman-wal-receiver into a fresh catalog (cold, then steady)
  ours, backlog  the same calls as PostgreSQL's archiver makes them when WAL piled up: the segments
               in a pg_wal/ with archive_status/*.ready, one put each in order, .ready renamed to
               .done after each success; the sender's look-ahead agent streams ahead of the calls
  barman       barman-wal-archive (Barman 3.19.1) -> barman put-wal of a bench Barman configuration
  pgbackrest   pgbackrest archive-push (2.45) into a local repository

Every temporary key line is removed from barman's authorized_keys, and every bench directory is
deleted, in a finally. See bench/README.md for the columns and bench/RESULTS.md for figures.
"""

import argparse
import datetime
import gzip
import hashlib
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import zlib

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, 'build', 'collections'))

from ansible_collections.barman.postgresql.plugins.module_utils import ssh, wal  # noqa: E402
import results as results_md  # noqa: E402  (bench/results.py, beside this script)

SEGMENT_BYTES = 16 * 1024 * 1024
MB = 1024 * 1024
BACKUP_HOST = '127.0.0.21'
PG1_PORT = '5441'
PG1_DATA = '/srv/barman-lab/pg1/data'
PG_SOCKET = '/var/run/postgresql'
PG_BIN = '/usr/lib/postgresql/15/bin'
LAB_ARCHIVE = '/var/lib/barman/pg1'  # where setup.yml's archive_command stores pg1's WAL
BARMAN_HOME = '/var/lib/barman'
AUTHORIZED_KEYS = os.path.join(BARMAN_HOME, '.ssh', 'authorized_keys')
OUR_BIN = '/usr/local/lib/barman-postgresql/bin'
OUR_LIB = '/usr/local/lib/barman-postgresql'
KNOWN_HOSTS = '/var/lib/postgresql/.ssh/barman_known_hosts'

# Everything temporary lives under these (and is deleted at the end).
KEYS_DIR = '/var/tmp/bench-keys'
SEGMENTS_DIR = '/var/tmp/bench-segments'
CP_DIR = '/var/tmp/bench-cp'
RSYNC_DIR = '/var/tmp/bench-rsync'
OUR_HOME = '/var/tmp/bench-home'
BACKLOG_DATA = '/var/tmp/bench-pgdata'  # a stand-in PGDATA: pg_wal/ and pg_wal/archive_status/ only
BARMAN_VENV = os.environ.get('BARMAN_VENV', '/opt/barman-venv')  # made by scripts/bootstrap
BARMAN_BENCH_HOME = '/var/tmp/bench-barman-home'
BARMAN_CONF_DIR = '/var/tmp/bench-barman-conf'
BARMAN_SSH_BIN = '/var/tmp/bench-barman-bin'
PGBR_DIR = '/var/tmp/bench-pgbackrest'
TEMP_DIRS = [
    KEYS_DIR,
    SEGMENTS_DIR,
    CP_DIR,
    RSYNC_DIR,
    OUR_HOME,
    BARMAN_BENCH_HOME,
    BARMAN_CONF_DIR,
    BARMAN_SSH_BIN,
    PGBR_DIR,
    BACKLOG_DATA,
]
KEY_TAG = 'barman-postgresql-bench'  # comment of every temporary authorized_keys line

SECTION = '## WAL archiving throughput'


class MethodFailed(Exception):
    pass


# --------------------------------------------------------------------------- running things


def run(argv, user=None, check=True, **kwargs):
    """Run argv (as ``user`` if given: uid, gid and groups set directly, no PAM session)."""
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=os.getgrouplist(user, entry.pw_gid))
        kwargs.setdefault(
            'env',
            {
                'HOME': entry.pw_dir,
                'USER': user,
                'LOGNAME': user,
                'PATH': '/usr/local/bin:/usr/bin:/bin',
                'LANG': 'C.UTF-8',
            },
        )
        kwargs.setdefault('cwd', entry.pw_dir)
    kwargs.setdefault('stdout', subprocess.PIPE)
    kwargs.setdefault('stderr', subprocess.PIPE)
    proc = subprocess.run(argv, **kwargs)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors='replace').strip() if isinstance(proc.stderr, bytes) else ''
        out = proc.stdout.decode(errors='replace').strip() if isinstance(proc.stdout, bytes) else ''
        raise MethodFailed('%s exited %d: %s' % (' '.join(argv[:3]), proc.returncode, (err or out)[-600:]))
    return proc


def timed(argv, user='postgres'):
    start = time.perf_counter()
    run(argv, user=user)
    return time.perf_counter() - start


def psql(sql, database='postgres'):
    argv = [
        'psql',
        '-X',
        '-At',
        '-h',
        PG_SOCKET,
        '-p',
        PG1_PORT,
        '-d',
        database,
        '-v',
        'ON_ERROR_STOP=1',
        '-c',
        sql,
    ]
    return run(argv, user='postgres').stdout.decode().strip()


def make_dir(path, owner, mode=0o700):
    entry = pwd.getpwnam(owner)
    os.makedirs(path, exist_ok=True)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, mode)


def new_key(name, owner='postgres'):
    """A fresh ed25519 key pair under KEYS_DIR, owned by ``owner``; returns the private key path."""
    path = os.path.join(KEYS_DIR, name)
    for stale in (path, path + '.pub'):
        if os.path.exists(stale):
            os.unlink(stale)
    run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', KEY_TAG, '-f', path], user=owner)
    return path


def public_key(path):
    with open(path + '.pub') as handle:
        return handle.read().strip()


def add_authorized_key(line):
    """Append one line to barman's authorized_keys (tagged KEY_TAG so cleanup finds it)."""
    assert line.endswith(KEY_TAG)
    with open(AUTHORIZED_KEYS, 'a') as handle:
        handle.write(line + '\n')


def remove_bench_keys():
    """Drop every line tagged KEY_TAG from barman's authorized_keys, keeping the file's owner and mode."""
    if not os.path.exists(AUTHORIZED_KEYS):
        return
    with open(AUTHORIZED_KEYS) as handle:
        lines = handle.readlines()
    kept = [line for line in lines if not line.rstrip('\n').endswith(KEY_TAG)]
    if kept == lines:
        return
    stat = os.stat(AUTHORIZED_KEYS)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(AUTHORIZED_KEYS), prefix='.authorized_keys.')
    with os.fdopen(fd, 'w') as handle:
        handle.writelines(kept)
    os.chown(tmp, stat.st_uid, stat.st_gid)
    os.chmod(tmp, stat.st_mode & 0o777)
    os.rename(tmp, AUTHORIZED_KEYS)


def ssh_base(identity_file, control_path=None):
    """ssh with our usual options (host keys verified against postgres's barman_known_hosts)."""
    return ['ssh'] + ssh.ssh_options(
        known_hosts_file=KNOWN_HOSTS, identity_file=identity_file, control_path=control_path
    )


def wait_for_sshd(seconds=120):
    """Other sessions stop the lab's sshd during their tests: wait until backup1 answers again."""

    def answers():
        try:
            socket.create_connection((BACKUP_HOST, 22), timeout=2).close()
            return True
        except OSError:
            return False

    wait_until(answers, seconds, 'sshd on %s:22' % BACKUP_HOST)


def drop_caches_of_writes():
    """Flush what the previous method left dirty, so that it does not slow the next one."""
    run(['sync'])


# --------------------------------------------------------------------------- the segments


def archived_segments():
    """Segment names of pg1 that the lab's archive holds in wals/ (processed, compressed)."""
    names = []
    wals = os.path.join(LAB_ARCHIVE, 'wals')
    for directory, _dirs, files in os.walk(wals):
        names += [f for f in files if wal.is_segment_name(f) and directory != wals]
    return sorted(names)


def consecutive_run(names, count):
    """The last ``count`` consecutive segments (same timeline) among sorted ``names``, or None."""
    found, current = None, []
    for name in names:
        follows = (
            current
            and wal.timeline_of(name) == wal.timeline_of(current[-1])
            and (wal.segment_number(name, SEGMENT_BYTES) == wal.segment_number(current[-1], SEGMENT_BYTES) + 1)
        )
        current = current + [name] if follows else [name]
        if len(current) >= count:
            found = current[-count:]
    return found


def wait_until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError('timed out after %d s waiting for %s' % (seconds, what))
        time.sleep(0.2)


def generate_wal(count):
    """Write WAL on pg1 with pgbench until its archive holds ``count`` consecutive processed segments."""
    for _attempt in range(6):
        run_ = consecutive_run(archived_segments(), count)
        if run_:
            return run_
        if psql("SELECT 1 FROM pg_database WHERE datname = 'bench_wal'") != '1':
            psql('CREATE DATABASE bench_wal')
        scale = max(10, count)  # about one 16 MB segment per scale unit, and more
        print('generating WAL on pg1: pgbench -i -s %d' % scale, flush=True)
        run(
            ['pgbench', '-i', '-q', '-s', str(scale), '-h', PG_SOCKET, '-p', PG1_PORT, 'bench_wal'],
            user='postgres',
        )
        last = psql('SELECT pg_walfile_name(pg_current_wal_lsn())')
        psql('SELECT pg_switch_wal()')
        wait_until(
            lambda last=last: psql('SELECT last_archived_wal FROM pg_stat_archiver') >= last,
            600,
            'pg1 to archive %s' % last,
        )
        incoming = os.path.join(LAB_ARCHIVE, 'incoming')
        wait_until(
            lambda incoming=incoming: not [e for e in os.listdir(incoming) if not e.startswith('.')],
            600,
            'the lab archive to process incoming/',
        )
    raise RuntimeError('pg1 archive still lacks %d consecutive segments' % count)


def extract_segments(names):
    """Decompress the segments from the lab archive into SEGMENTS_DIR (readable by postgres)."""
    from ansible_collections.barman.postgresql.plugins.module_utils import wal_store  # noqa: PLC0415

    make_dir(SEGMENTS_DIR, 'postgres')
    paths = []
    for name in names:
        target = os.path.join(SEGMENTS_DIR, name)
        with open(target, 'wb') as handle:
            wal_store.copy_decompressed(os.path.join(LAB_ARCHIVE, 'wals', name[:16], name), handle)
        if os.path.getsize(target) != SEGMENT_BYTES:
            raise RuntimeError('%s is not a 16 MB segment' % name)
        os.chown(target, pwd.getpwnam('postgres').pw_uid, pwd.getpwnam('postgres').pw_gid)
        paths.append(target)
    for path in paths:  # every method reads the sources from the page cache
        with open(path, 'rb') as handle:
            while handle.read(MB):
                pass
    run(['sync'])
    return paths


# --------------------------------------------------------------------------- the methods


def per_segment(segments, argv_for, user='postgres'):
    """Run argv_for(segment) once per segment in sequence; return the per-segment seconds."""
    times = []
    for segment in segments:
        times.append(timed(argv_for(segment), user=user))
    return times


def method_cp(segments):
    make_dir(CP_DIR, 'postgres')
    times = []
    for segment in segments:
        target = os.path.join(CP_DIR, os.path.basename(segment))
        start = time.perf_counter()
        run(['cp', segment, target], user='postgres')
        run(['sync', target], user='postgres')
        times.append(time.perf_counter() - start)
    return {'times': times}


def method_rsync(segments):
    make_dir(RSYNC_DIR, 'barman')
    key = new_key('rsync_key')
    add_authorized_key('%s %s' % (public_key(key).rsplit(' ', 1)[0], KEY_TAG))
    rsh = ssh.rsync_rsh(known_hosts_file=KNOWN_HOSTS, identity_file=key)
    target = ssh.remote_path(ssh.validate_ssh_target('barman', BACKUP_HOST), RSYNC_DIR + '/')
    return {'times': per_segment(segments, lambda s: ['rsync', '-a', '-s', '--rsh', rsh, s, target])}


def our_catalog(fresh):
    """The bench catalog /var/tmp/bench-home/pg1, emptied when ``fresh`` (same identity as pg1)."""
    root = os.path.join(OUR_HOME, 'pg1')
    if fresh and os.path.exists(root):
        shutil.rmtree(root)
    make_dir(OUR_HOME, 'barman')
    for sub in ('', 'meta', 'base', 'wals', 'incoming', 'errors', 'streaming'):
        make_dir(os.path.join(root, sub), 'barman')
    identity = os.path.join(root, 'identity.json')
    shutil.copyfile(os.path.join(LAB_ARCHIVE, 'identity.json'), identity)
    os.chown(identity, pwd.getpwnam('barman').pw_uid, pwd.getpwnam('barman').pw_gid)
    os.chmod(identity, 0o600)
    return root


def our_key():
    key = os.path.join(KEYS_DIR, 'our_key')
    if not os.path.exists(key):
        new_key('our_key')
        add_authorized_key(
            ssh.authorized_keys_line(
                public_key(key),
                [
                    os.path.join(OUR_BIN, 'barman-wal-receiver'),
                    '--barman-home',
                    OUR_HOME,
                    '--server',
                    'pg1',
                    '--compression',
                    'gzip',
                ],
                KEY_TAG,
            )
        )
    return key


def sender_argv(key, command):
    return [
        os.path.join(OUR_BIN, 'barman-wal-sender'),
        '--ssh',
        'barman@' + BACKUP_HOST,
        '--identity-file',
        key,
        '--known-hosts',
        KNOWN_HOSTS,
    ] + command


def master_alive(key):
    control = key + '.cm-%C'
    proc = run(ssh_base(key, control) + ['-O', 'check', 'barman@' + BACKUP_HOST], user='postgres', check=False)
    return proc.returncode == 0


def close_master(key):
    if master_alive(key):
        run(ssh_base(key, key + '.cm-%C') + ['-O', 'exit', 'barman@' + BACKUP_HOST], user='postgres', check=False)


def wait_processed(root, names, start):
    """Seconds from ``start`` until every one of ``names`` is compressed into the bench catalog's
    wals/ (incoming/ empty); errors/ must stay empty."""

    def processed():
        incoming = [e for e in os.listdir(os.path.join(root, 'incoming')) if not e.startswith('.')]
        stored = set()
        for _d, _s, files in os.walk(os.path.join(root, 'wals')):
            stored.update(files)
        return not incoming and names <= stored

    wait_until(processed, 300, 'the bench catalog to compress every segment into wals/')
    processed_at = time.perf_counter() - start
    errors = os.listdir(os.path.join(root, 'errors'))
    if errors:
        raise MethodFailed('the receiver put files in errors/: %s' % errors[:3])
    return processed_at


def method_ours(segments, cold):
    """Our sender into a fresh catalog. Cold: no ControlMaster at the start; steady: one is up."""
    key = our_key()
    if cold:
        close_master(key)
    root = our_catalog(fresh=True)
    alive = master_alive(key)
    start = time.perf_counter()
    times = per_segment(segments, lambda s: sender_argv(key, ['put', s]))
    names = set(os.path.basename(s) for s in segments)
    processed_at = wait_processed(root, names, start)
    first = next(iter(sorted(names)))
    stored = os.path.join(root, 'wals', first[:16], first)
    with open(stored, 'rb') as handle:
        if handle.read(2) != b'\x1f\x8b':
            raise MethodFailed('%s is not gzip-compressed in wals/' % first)
    return {
        'times': times,
        'processed': processed_at,
        'note': 'ControlMaster up at start' if alive else 'no ControlMaster at start',
    }


def method_ours_backlog(segments, cold=False):
    """PostgreSQL's archiver draining a backlog: every segment ready at the start, one put per
    segment in order (cwd PGDATA, %p = pg_wal/NAME), .ready renamed to .done after each success.
    Cold: no ControlMaster at the start (the backlog came before any single put)."""
    key = our_key()
    if cold:
        close_master(key)
    root = our_catalog(fresh=True)
    shutil.rmtree(BACKLOG_DATA, ignore_errors=True)
    pg_wal = os.path.join(BACKLOG_DATA, 'pg_wal')
    status = os.path.join(pg_wal, 'archive_status')
    for path in (BACKLOG_DATA, pg_wal, status):
        make_dir(path, 'postgres')
    names = [os.path.basename(s) for s in segments]
    for segment, name in zip(segments, names):
        os.link(segment, os.path.join(pg_wal, name))
        write_file(os.path.join(status, name + '.ready'), '', 'postgres', 0o600)
    master_at_start = master_alive(key)
    times = []
    start = time.perf_counter()
    for name in names:
        began = time.perf_counter()
        run(sender_argv(key, ['put', 'pg_wal/' + name]), user='postgres', cwd=BACKLOG_DATA)
        times.append(time.perf_counter() - began)
        os.rename(os.path.join(status, name + '.ready'), os.path.join(status, name + '.done'))
    processed_at = wait_processed(root, set(names), start)
    for name, segment in zip(names, segments):  # what arrived is what was sent
        with open(segment, 'rb') as handle:
            sent = hashlib.sha256(handle.read()).hexdigest()
        stored = os.path.join(root, 'wals', name[:16], name)
        with gzip.open(stored, 'rb') as handle:
            if hashlib.sha256(handle.read()).hexdigest() != sent:
                raise MethodFailed('%s in wals/ differs from the segment sent' % name)
    shutil.rmtree(BACKLOG_DATA, ignore_errors=True)
    note = 'look-ahead agent, one stream; ControlMaster %s at start' % ('up' if master_at_start else 'not up')
    return {'times': times, 'processed': processed_at, 'note': note}


BARMAN_CONF = """[barman]
barman_user = barman
barman_home = {home}
configuration_files_directory = {conf_d}
log_file = {home}/barman.log
log_level = INFO
compression = gzip
"""
BARMAN_SERVER_CONF = """[pg1]
description = bench copy of pg1
conninfo = host={socket} port={port} user=barman dbname=postgres
ssh_command = ssh postgres@127.0.0.11
backup_method = rsync
reuse_backup = link
archiver = on
backup_options = concurrent_backup
"""


def write_file(path, text, owner, mode):
    with open(path, 'w') as handle:
        handle.write(text)
    entry = pwd.getpwnam(owner)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, mode)


def barman_setup():
    barman = os.path.join(BARMAN_VENV, 'bin', 'barman')
    python = os.path.realpath(os.path.join(BARMAN_VENV, 'bin', 'python3'))
    usable = python.startswith('/usr/') and os.path.exists(os.path.join(BARMAN_VENV, 'bin', 'barman-wal-archive'))
    if not usable:  # barman and postgres must be able to run it: the system Python, not root's own
        shutil.rmtree(BARMAN_VENV, ignore_errors=True)
        print('installing barman 3.19.1 into %s' % BARMAN_VENV, flush=True)
        run(['/usr/bin/python3', '-m', 'venv', BARMAN_VENV])
        run([os.path.join(BARMAN_VENV, 'bin', 'pip'), 'install', '-q', 'barman==3.19.1', 'psycopg2-binary'])
    make_dir(BARMAN_BENCH_HOME, 'barman')
    make_dir(BARMAN_CONF_DIR, 'barman', 0o755)
    make_dir(os.path.join(BARMAN_CONF_DIR, 'conf.d'), 'barman', 0o755)
    config = os.path.join(BARMAN_CONF_DIR, 'barman.conf')
    write_file(
        config,
        BARMAN_CONF.format(home=BARMAN_BENCH_HOME, conf_d=os.path.join(BARMAN_CONF_DIR, 'conf.d')),
        'barman',
        0o644,
    )
    write_file(
        os.path.join(BARMAN_CONF_DIR, 'conf.d', 'pg1.conf'),
        BARMAN_SERVER_CONF.format(socket=PG_SOCKET, port=PG1_PORT),
        'barman',
        0o644,
    )
    # Here `barman cron` alone did not make the server's folders; `barman check` does (exit 1: no WAL yet).
    incoming = os.path.join(BARMAN_BENCH_HOME, 'pg1', 'incoming')
    run([barman, '-c', config, '-q', 'cron'], user='barman', check=False)
    run([barman, '-c', config, '-q', 'check', 'pg1'], user='barman', check=False)
    wait_until(lambda: os.path.isdir(incoming), 60, 'barman cron to create %s' % incoming)
    time.sleep(1)  # let cron's background archiver finish before we time anything
    key = new_key('barman_key')
    add_authorized_key(
        ssh.authorized_keys_line(public_key(key), [barman, '-c', config, '-q', 'put-wal', 'pg1'], KEY_TAG)
    )
    # barman-wal-archive has no option for a key or a known_hosts file: an ssh first in its PATH adds -F.
    ssh_config = os.path.join(KEYS_DIR, 'barman_ssh_config')
    write_file(
        ssh_config,
        'Host %s\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n'
        '  StrictHostKeyChecking yes\n  BatchMode yes\n' % (BACKUP_HOST, key, KNOWN_HOSTS),
        'postgres',
        0o600,
    )
    make_dir(BARMAN_SSH_BIN, 'root', 0o755)
    write_file(
        os.path.join(BARMAN_SSH_BIN, 'ssh'),
        '#!/bin/sh\nexec /usr/bin/ssh -F %s "$@"\n' % ssh_config,
        'root',
        0o755,
    )
    return barman, config, incoming


def method_barman(segments):
    barman, config, incoming = barman_setup()
    entry = pwd.getpwnam('postgres')
    env = {
        'HOME': entry.pw_dir,
        'USER': 'postgres',
        'LOGNAME': 'postgres',
        'LANG': 'C.UTF-8',
        'PATH': '%s:/usr/local/bin:/usr/bin:/bin' % BARMAN_SSH_BIN,
    }
    wal_archive = os.path.join(BARMAN_VENV, 'bin', 'barman-wal-archive')
    times = []
    for segment in segments:
        start = time.perf_counter()
        run([wal_archive, '-U', 'barman', BACKUP_HOST, 'pg1', segment], user='postgres', env=env)
        times.append(time.perf_counter() - start)
    landed = [e for e in os.listdir(incoming) if wal.is_segment_name(e)]
    wals = os.path.join(BARMAN_BENCH_HOME, 'pg1', 'wals')
    start = time.perf_counter()
    run([barman, '-c', config, '-q', 'archive-wal', 'pg1'], user='barman')
    processing = time.perf_counter() - start
    stored = set()
    for _d, _s, files in os.walk(wals):
        stored.update(files)
    names = set(os.path.basename(s) for s in segments)
    if not names <= stored and len(landed) < len(segments):
        raise MethodFailed('barman stored %d of %d segments' % (len(stored & names), len(names)))
    return {
        'times': times,
        'processed': sum(times) + processing,
        'note': 'archive-wal afterwards: %.1f s (%d in wals/)' % (processing, len(stored & names)),
    }


def method_pgbackrest(segments):
    if shutil.which('pgbackrest') is None:
        print('installing pgbackrest (apt)', flush=True)
        run(
            ['apt-get', 'install', '-y', '-q', 'pgbackrest'],
            env=dict(os.environ, DEBIAN_FRONTEND='noninteractive'),
        )
    make_dir(PGBR_DIR, 'postgres')
    for sub in ('repo', 'log', 'lock', 'spool'):
        make_dir(os.path.join(PGBR_DIR, sub), 'postgres')
    config = os.path.join(PGBR_DIR, 'pgbackrest.conf')
    write_file(
        config,
        '[global]\nrepo1-path=%s/repo\nlog-path=%s/log\nlock-path=%s/lock\nspool-path=%s/spool\n'
        'log-level-console=warn\n\n[pg1]\npg1-path=%s\npg1-port=%s\npg1-socket-path=%s\n'
        % (PGBR_DIR, PGBR_DIR, PGBR_DIR, PGBR_DIR, PG1_DATA, PG1_PORT, PG_SOCKET),
        'postgres',
        0o600,
    )
    common = ['pgbackrest', '--config=' + config, '--stanza=pg1']
    run(common + ['stanza-create'], user='postgres')
    times = per_segment(segments, lambda s: common + ['archive-push', s])
    stored = []
    for _d, _s, files in os.walk(os.path.join(PGBR_DIR, 'repo', 'archive')):
        stored += [f for f in files if f[:24] in set(os.path.basename(s) for s in segments)]
    if len(stored) != len(segments):
        raise MethodFailed('pgbackrest stored %d of %d segments' % (len(stored), len(segments)))
    return {'times': times, 'note': 'repository files: *.%s' % stored[0].rsplit('.', 1)[-1]}


# --------------------------------------------------------------------------- where our time goes


def median_of(argv_or_fn, times=9, user='postgres', **kwargs):
    samples = []
    for _ in range(times):
        start = time.perf_counter()
        if callable(argv_or_fn):
            argv_or_fn()
        else:
            run(argv_or_fn, user=user, check=False, **kwargs)
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def breakdown(segment):
    """Median cost of each piece of one put of our sender (steady state), measured apart."""
    key = our_key()
    rsync_key = os.path.join(KEYS_DIR, 'rsync_key')  # unrestricted (bench only): a shell on backup1
    control = rsync_key + '.cm-%C'
    target = 'barman@' + BACKUP_HOST
    python = [
        '/usr/bin/python3',
        '-IS',
        '-c',
        'import sys; sys.path.insert(0, %r)\n'
        'from ansible_collections.barman.postgresql.runtime.walsender import main' % OUR_LIB,
    ]
    with open(segment, 'rb') as handle:
        data = handle.read()
    rows = []
    rows.append(('exec python3 -IS, nothing', median_of(['/usr/bin/python3', '-IS', '-c', 'pass'])))
    rows.append(('exec python3 -IS + import walsender', median_of(python)))
    run(ssh_base(rsync_key, control) + [target, '--', 'true'], user='postgres', check=False)  # open a master
    rows.append(
        (
            'ssh round trip on a ControlMaster (`true`)',
            median_of(ssh_base(rsync_key, control) + [target, '--', 'true']),
        )
    )
    rows.append(('ssh new connection, no master (`true`)', median_of(ssh_base(rsync_key) + [target, '--', 'true'])))
    with open(segment, 'rb') as source:

        def pipe16():
            source.seek(0)
            run(ssh_base(rsync_key, control) + [target, '--', 'cat >/dev/null'], user='postgres', stdin=source)

        rows.append(('16 MB through ssh on a ControlMaster (`cat >/dev/null`)', median_of(pipe16)))
    rows.append(
        (
            'ssh master + receiver start, refused request (no data)',
            median_of(ssh_base(key, key + '.cm-%C') + [target, '--', 'nothing']),
        )
    )
    rows.append(('crc32 of 16 MB (done twice: sender and receiver)', median_of(lambda: zlib.crc32(data))))
    rows.append(('sha256 of 16 MB (the checksum before 1.1.0)', median_of(lambda: hashlib.sha256(data).hexdigest())))
    scratch = os.path.join(OUR_HOME, 'fsync-probe')

    def write_fsync():
        with open(scratch, 'wb') as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.unlink(scratch)

    rows.append(('write + fsync 16 MB on the backup filesystem', median_of(write_fsync)))
    rows.append(
        (
            'gzip level 1 of 16 MB (background, after the answer)',
            median_of(lambda: gzip.compress(data, compresslevel=1), times=3),
        )
    )
    run(ssh_base(rsync_key, control) + ['-O', 'exit', target], user='postgres', check=False)
    return rows


# --------------------------------------------------------------------------- report


def summarize(name, result, count):
    times = result['times']
    total = sum(times)
    return {
        'name': name,
        'seg_s': count / total,
        'mb_s': count * SEGMENT_BYTES / MB / total,
        'median': statistics.median(times),
        'total': total,
        'first': times[0],
        'processed': result.get('processed'),
        'note': result.get('note', ''),
    }


def table(rows, failures):
    cp = next((r for r in rows if r['name'].startswith('cp')), None)
    barman = next((r for r in rows if r['name'].startswith('barman')), None)
    lines = [
        '| method | seg/s | MB/s | median s/seg | first s | total s | until in wals/ s | x cp time '
        '| x barman time | note |',
        '|---|---|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        lines.append(
            '| %s | %.1f | %.0f | %.3f | %.3f | %.2f | %s | %s | %s | %s |'
            % (
                r['name'],
                r['seg_s'],
                r['mb_s'],
                r['median'],
                r['first'],
                r['total'],
                '%.2f' % r['processed'] if r['processed'] is not None else '-',
                '%.2f' % (r['total'] / cp['total']) if cp else '-',
                '%.2f' % (r['total'] / barman['total']) if barman else '-',
                r['note'],
            )
        )
    for name, error in failures:
        lines.append('| %s | failed | | | | | | | | %s |' % (name, error.replace('|', '/').replace('\n', ' ')[:300]))
    return '\n'.join(lines)


def machine():
    pg = (
        run(
            ['psql', '-X', '-At', '-h', PG_SOCKET, '-p', PG1_PORT, '-c', 'SHOW server_version'],
            user='postgres',
            check=False,
        )
        .stdout.decode()
        .strip()
    )
    return results_md.machine(pg, 'OpenSSH on loopback (127.0.0.x)')


# --------------------------------------------------------------------------- main


def cleanup():
    for key in ('our_key', 'rsync_key'):  # stop the ControlMasters before their keys go
        path = os.path.join(KEYS_DIR, key)
        if os.path.exists(path):
            run(
                ssh_base(path, path + '.cm-%C') + ['-O', 'exit', 'barman@' + BACKUP_HOST],
                user='postgres',
                check=False,
            )
    remove_bench_keys()
    for directory in TEMP_DIRS:
        shutil.rmtree(directory, ignore_errors=True)
    run(
        ['psql', '-X', '-h', PG_SOCKET, '-p', PG1_PORT, '-c', 'DROP DATABASE IF EXISTS bench_wal'],
        user='postgres',
        check=False,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--segments', type=int, default=40, help='how many 16 MB segments (default 40)')
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    parser.add_argument('--breakdown', action='store_true', help='always measure where our sender spends time')
    parser.add_argument('--only', help='run only the methods whose name contains this word (e.g. barman)')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and barman)')
    count = args.segments
    rows, failures, parts = [], [], None
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    try:
        remove_bench_keys()
        shutil.rmtree(KEYS_DIR, ignore_errors=True)  # a key left by a killed run has no authorized line
        make_dir(KEYS_DIR, 'postgres')
        names = generate_wal(count)
        print("segments: %s .. %s (%d x 16 MB, from pg1's archive)" % (names[0], names[-1], count), flush=True)
        segments = extract_segments(names)
        methods = [
            ('cp + sync (limit)', lambda: method_cp(segments)),
            ('rsync over ssh', lambda: method_rsync(segments)),
            ('ours, cold', lambda: method_ours(segments, cold=True)),
            ('ours, steady', lambda: method_ours(segments, cold=False)),
            ('ours, backlog', lambda: method_ours_backlog(segments)),
            ('ours, backlog, cold', lambda: method_ours_backlog(segments, cold=True)),
            ('barman-wal-archive 3.19.1', lambda: method_barman(segments)),
            ('pgbackrest 2.45 archive-push', lambda: method_pgbackrest(segments)),
        ]
        methods = [(name, method) for name, method in methods if not args.only or args.only in name]
        for name, method in methods:
            drop_caches_of_writes()
            wait_for_sshd()
            print('running %s ...' % name, flush=True)
            try:
                row = summarize(name, method(), count)
                rows.append(row)
                print('  %.1f seg/s, median %.3f s/seg' % (row['seg_s'], row['median']), flush=True)
            except Exception as error:  # a failed method is reported, the others still run
                failures.append((name, '%s: %s' % (type(error).__name__, error)))
                print('  FAILED: %s' % error, flush=True)
            for directory in (CP_DIR, RSYNC_DIR):  # free the space of the plain copies
                shutil.rmtree(directory, ignore_errors=True)
        steady = next((r for r in rows if r['name'] == 'ours, steady'), None)
        if args.breakdown or (steady and steady['seg_s'] < 20):
            try:
                parts = breakdown(segments[0])
            except Exception as error:
                print('breakdown failed: %s' % error, flush=True)
    finally:
        cleanup()
    text = [
        '%s' % SECTION,
        '',
        'Run %s on %s; %d consecutive 16 MB segments of pg1, one process per segment in sequence, '
        'each method with its usual durability; load average (1 min) %.1f before, %.1f after. '
        '`.venv/bin/python bench/archive_throughput.py --segments %d`.'
        % (started.strftime('%Y-%m-%d %H:%M %Z'), machine(), count, load_before, os.getloadavg()[0], count),
        '',
        table(rows, failures),
    ]
    if parts:
        text += [
            '',
            'Where one put of our sender goes (medians, measured apart):',
            '',
            '| piece | ms |',
            '|---|---|',
        ] + ['| %s | %.1f |' % (p, s * 1000) for p, s in parts]
    text = '\n'.join(text) + '\n'
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
