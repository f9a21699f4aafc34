#!/usr/bin/env python3
"""Base backup speed: ours, plain rsync (the limit), Barman 3.19.1 and pgBackRest 2.45 on the same data.

Run as root on the lab (tests/lab/lab up, playbooks/setup.yml done), from the checkout:

    .venv/bin/python bench/backup_speed.py [--no-results] [--skip-ansible]

Data: pgbench scale 60 in the database bench_backup of pg1 (made once, kept). In one run:

  fulls         rsync -a over SSH (limit); ours (jobs 1, jobs 2, once through ansible-playbook);
                Barman (rsync, concurrent); pgBackRest (local repository, process-max 1 and 2)
  write load    pgbench -T 15 -c 2 bench_backup, then CHECKPOINT
  incrementals  rsync -a --link-dest (limit: rsync's delta algorithm, and --whole-file); ours (reuse=link);
                Barman (reuse_backup=link); pgBackRest --type=incr (process-max 1 and 2, each in its own
                repository)

Everything temporary is under /var/tmp/bench-backup-* and is deleted in a finally (the database stays).
See bench/README.md for what each row does and bench/RESULTS.md for figures.
"""

import argparse
import ast
import datetime
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(TOP, 'build', 'collections')
sys.path.insert(0, COLLECTIONS)

from ansible_collections.barman.postgresql.plugins.module_utils import rsync, ssh, wal, wal_store  # noqa: E402
import results as results_md  # noqa: E402  (bench/results.py, beside this script)

PG1_HOST = '127.0.0.11'
PG1_PORT = 5441
PG1_DATA = '/srv/barman-lab/pg1/data'
PG_SOCKET = '/var/run/postgresql'
DATABASE = 'bench_backup'
SCALE = 60
LAB_PG1 = '/var/lib/barman/pg1'  # the lab catalog of pg1: setup.yml's archive_command stores WAL here

BASE = '/var/tmp/bench-backup-'
RSYNC_DIR = BASE + 'rsync'
OUR_HOME = BASE + 'home'  # our catalog for the bench (wals/ and incoming/ point at the lab's)
BARMAN_DIR = BASE + 'barman'
PGBR_DIR = BASE + 'pgbackrest'
PLAY_DIR = BASE + 'ansible'
TEMP_DIRS = [RSYNC_DIR, OUR_HOME, BARMAN_DIR, PGBR_DIR, PLAY_DIR]
# Made by scripts/bootstrap, shared with archive_throughput.py.
BARMAN_VENV = os.environ.get('BARMAN_VENV', '/opt/barman-venv')

SECTION = '## Base backups'
GOAL = 1.2  # the goal: our full backup within 1.2x plain rsync
# The SSH of plain rsync and of Barman: barman's own key and known_hosts, host keys checked, and the
# AES-GCM cipher our module asks for (ssh.BULK_CIPHERS), so that every rsync over SSH has the same transport.
PLAIN_RSH = 'ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ' + ssh.BULK_CIPHERS


class MethodFailed(Exception):
    pass


# --------------------------------------------------------------------------- running things


def run(argv, user=None, check=True, env=None, **kwargs):
    """Run argv (as ``user`` if given: uid, gid and groups set directly, no PAM session)."""
    if user is not None:
        entry = pwd.getpwnam(user)
        kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=os.getgrouplist(user, entry.pw_gid))
        base_env = {
            'HOME': entry.pw_dir,
            'USER': user,
            'LOGNAME': user,
            'PATH': '/usr/local/bin:/usr/bin:/bin',
            'LANG': 'C.UTF-8',
        }
        env = dict(base_env, **(env or {}))
        kwargs.setdefault('cwd', entry.pw_dir)
    elif env is not None:
        env = dict(os.environ, **env)
    kwargs.setdefault('stdout', subprocess.PIPE)
    kwargs.setdefault('stderr', subprocess.PIPE)
    proc = subprocess.run(argv, env=env, **kwargs)
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors='replace').strip() if isinstance(proc.stderr, bytes) else ''
        out = proc.stdout.decode(errors='replace').strip() if isinstance(proc.stdout, bytes) else ''
        raise MethodFailed('%s exited %d: %s' % (' '.join(argv[:3]), proc.returncode, (err or out)[-1500:]))
    return proc


def remove_user(name):
    """userdel of a bench user (made by this run or left by a --keep run); it refuses while a process of the
    user lives (an SSH master ending), so it is tried again for up to 30 s."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        return
    for _ in range(60):
        proc = run(['userdel', name], check=False)
        if proc.returncode == 0:
            return
        time.sleep(0.5)
    print('warning: userdel %s: %s' % (name, proc.stderr.decode(errors='replace').strip()), flush=True)


def psql(sql, database='postgres'):
    argv = [
        'psql',
        '-X',
        '-At',
        '-h',
        PG_SOCKET,
        '-p',
        str(PG1_PORT),
        '-d',
        database,
        '-v',
        'ON_ERROR_STOP=1',
    ]
    return run(argv + ['-c', sql], user='postgres').stdout.decode().strip()


def make_dir(path, owner, mode=0o700):
    entry = pwd.getpwnam(owner)
    os.makedirs(path, exist_ok=True)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, mode)


def write_file(path, text, owner, mode=0o600):
    with open(path, 'w') as handle:
        handle.write(text)
    entry = pwd.getpwnam(owner)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    os.chmod(path, mode)


def wait_until(predicate, seconds, what):
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError('timed out after %d s waiting for %s' % (seconds, what))
        time.sleep(0.5)


def lab_ready():
    """sshd of pg1 answers and pg1 accepts connections (other sessions stop/restart them at times)."""
    try:
        socket.create_connection((PG1_HOST, 22), timeout=2).close()
    except OSError:
        return False
    return run(['pg_isready', '-q', '-h', PG_SOCKET, '-p', str(PG1_PORT)], user='postgres', check=False).returncode == 0


def retried(function, tries=3):
    """Run function(); when it fails, wait for the lab (up to 2 minutes) and try again."""
    for attempt in range(1, tries + 1):
        wait_until(lab_ready, 120, 'sshd and PostgreSQL on pg1')
        try:
            return function()
        except Exception as error:
            if attempt == tries:
                raise
            print('  attempt %d failed (%s), retrying' % (attempt, str(error)[:300]), flush=True)
            time.sleep(3)


def du(path, after=None):
    """Disk bytes of ``path``; with ``after`` (a directory ``path`` shares hard links with), only the
    blocks ``path`` adds (du counts a hard-linked file once, in the first directory given)."""
    argv = ['du', '-s', '-B1'] + ([after] if after else []) + [path]
    return int(run(argv).stdout.decode().splitlines()[-1].split()[0])


def flush_writes():
    """Flush what the previous method left dirty, so that it does not slow the next one."""
    run(['sync'])


# --------------------------------------------------------------------------- data and load


def ensure_data():
    """pgbench scale SCALE in DATABASE, created once and reused."""
    exists = psql("SELECT 1 FROM pg_database WHERE datname = '%s'" % DATABASE) == '1'  # noqa: S608
    if exists:
        count = psql(
            "SELECT CASE WHEN to_regclass('pgbench_branches') IS NULL THEN 0 "
            'ELSE (SELECT count(*) FROM pgbench_branches) END',
            DATABASE,
        )
        if count == str(SCALE):
            return
    else:
        psql('CREATE DATABASE %s' % DATABASE)
    print('creating the data: pgbench -i -s %d %s' % (SCALE, DATABASE), flush=True)
    run(
        ['pgbench', '-i', '-q', '-s', str(SCALE), '-h', PG_SOCKET, '-p', str(PG1_PORT), DATABASE],
        user='postgres',
    )


def warm_cache():
    """Read PGDATA once, so that the first method does not pay for reading it from disk."""
    argv = ['find', PG1_DATA, '-type', 'f', '-exec', 'cat', '{}', '+']
    run(argv, user='postgres', stdout=subprocess.DEVNULL)


def write_load(seconds=15):
    print('write load: pgbench -T %d -c 2 %s' % (seconds, DATABASE), flush=True)
    out = run(
        ['pgbench', '-T', str(seconds), '-c', '2', '-h', PG_SOCKET, '-p', str(PG1_PORT), DATABASE],
        user='postgres',
    ).stdout.decode()
    tps = re.search(r'tps = ([\d.]+)', out)
    psql('CHECKPOINT')  # every incremental then starts from the same, flushed state
    return float(tps.group(1)) if tps else None


# --------------------------------------------------------------------------- the limit: plain rsync


def method_rsync(name, previous=None, whole_file=False):
    """rsync -a of PGDATA (pg_wal/ contents and the other non-backup files excluded) as barman; with
    ``whole_file``, changed files are sent whole rather than by rsync's delta algorithm (its default over SSH)."""
    make_dir(RSYNC_DIR, 'barman')
    target = os.path.join(RSYNC_DIR, name)
    shutil.rmtree(target, ignore_errors=True)
    argv = ['rsync', '-a', '-e', PLAIN_RSH]
    argv += ['--exclude=' + pattern for pattern in rsync.PGDATA_EXCLUDES]
    if previous:
        argv.append('--link-dest=' + previous)
    if whole_file:
        argv.append('--whole-file')
    argv += ['postgres@%s:%s/' % (PG1_HOST, PG1_DATA), target + '/']
    start = time.perf_counter()
    run(argv, user='barman')
    # Durable, as a backup must be before it counts (ours syncs its filesystem before DONE).
    run(['sync', '-f', target], user='barman')
    seconds = time.perf_counter() - start
    return {'seconds': seconds, 'disk': du(target, previous), 'path': target}


# --------------------------------------------------------------------------- ours


OUR_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import backup
spec = backup.module_spec()['argument_spec']
params = dict((key, option.get('default')) for key, option in spec.items())
params.update(json.loads(sys.argv[2]))
start = time.perf_counter()
result = backup.take_backup(params)
result['elapsed'] = time.perf_counter() - start
print(json.dumps(result, default=str))
"""


def our_home():
    """A bench catalog of pg1: its own meta/ base/ (and lock), the lab's wals/ and incoming/ (read only).

    Backups there wait for their end WAL, which pg1 archives into the lab catalog; the lab's other
    backups (other sessions take some) are neither locked against nor used as a reference.
    """
    root = os.path.join(OUR_HOME, 'pg1')
    make_dir(OUR_HOME, 'barman')
    make_dir(root, 'barman')
    for sub in ('meta', 'base', 'errors', 'streaming'):
        make_dir(os.path.join(root, sub), 'barman')
    for sub in ('wals', 'incoming'):
        link = os.path.join(root, sub)
        if not os.path.islink(link):
            os.symlink(os.path.join(LAB_PG1, sub), link)
    identity = os.path.join(root, 'identity.json')
    shutil.copyfile(os.path.join(LAB_PG1, 'identity.json'), identity)
    entry = pwd.getpwnam('barman')
    os.chown(identity, entry.pw_uid, entry.pw_gid)
    os.chmod(identity, 0o600)
    return root


def our_params(**overrides):
    params = dict(server='pg1', barman_home=OUR_HOME, pg_host=PG1_HOST, pg_port=PG1_PORT)
    params.update(overrides)
    return params


def backup_log_lines(backup_id):
    """Lines of our backup.log that belong to one backup (from its start to its DONE)."""
    lines, inside = [], False
    with open(os.path.join(OUR_HOME, 'pg1', 'backup.log')) as handle:
        for line in handle:
            if 'backup %s started' % backup_id in line:
                inside = True
            if inside:
                lines.append(line.rstrip('\n'))
            if inside and ('backup %s DONE' % backup_id in line or 'backup %s FAILED' % backup_id in line):
                break
    return lines


def transfer_note(copy_stats):
    """'; transfer whole-file (why)' from copy_stats, as delta_transfer=auto chose it."""
    if not copy_stats.get('transfer'):
        return ''
    return '; transfer %s (%s)' % (copy_stats['transfer'], copy_stats.get('transfer_reason'))


def our_row(result):
    backup_dir = os.path.join(OUR_HOME, 'pg1', 'base', result['backup_id'])
    return {
        'seconds': result['elapsed'],
        'disk': du(backup_dir),
        'size': result['size'],
        'deduplicated_size': result['deduplicated_size'],
        'backup_id': result['backup_id'],
        'reference_backup_id': result['reference_backup_id'],
        'copy_time': result['copy_stats']['copy_time'],
        'note': 'size %s, deduplicated_size %s; copy %.1f s%s'
        % (
            human(result['size']),
            human(result['deduplicated_size']),
            result['copy_stats']['copy_time'],
            # backup_manifest (SHA256 of every file; checksums of hard-linked files reused): after the copy
            '; manifest %.2f s' % result['copy_stats']['manifest_time']
            if result['copy_stats'].get('manifest_time') is not None
            else '',
        )
        + transfer_note(result['copy_stats']),
        'transfer': result['copy_stats'].get('transfer'),
        'manifest_time': result['copy_stats'].get('manifest_time'),
    }


def method_ours(**overrides):
    """backup.take_backup() as barman, as the module calls it, without Ansible."""
    our_home()
    argv = ['/usr/bin/python3', '-c', OUR_CHILD, COLLECTIONS, json.dumps(our_params(**overrides))]
    out = run(argv, user='barman').stdout.decode()
    row = our_row(json.loads(out.strip().splitlines()[-1]))
    if overrides.get('reuse') == 'link' and row['reference_backup_id']:
        base = os.path.join(OUR_HOME, 'pg1', 'base')
        row['disk'] = du(os.path.join(base, row['backup_id']), os.path.join(base, row['reference_backup_id']))
    return row


PLAYBOOK = """- hosts: backup1
  gather_facts: false
  become: true
  become_user: barman
  tasks:
    - name: full backup of pg1 into the bench catalog
      barman.postgresql.pg_basebackup_rsync:
        server: pg1
        barman_home: {home}
        pg_host: {host}
        pg_port: {port}
        reuse: 'off'
"""


def method_ours_ansible():
    """The same full backup through ansible-playbook (the module on backup1, become barman)."""
    our_home()
    make_dir(PLAY_DIR, 'root')
    playbook = os.path.join(PLAY_DIR, 'backup.yml')
    write_file(playbook, PLAYBOOK.format(home=OUR_HOME, host=PG1_HOST, port=PG1_PORT), 'root', 0o644)
    env = {'ANSIBLE_CONFIG': os.path.join(TOP, 'ansible.cfg'), 'ANSIBLE_CALLBACK_RESULT_FORMAT': 'json'}
    start = time.perf_counter()
    proc = run([os.path.join(TOP, '.venv', 'bin', 'ansible-playbook'), '-v', playbook], env=env, cwd=TOP)
    seconds = time.perf_counter() - start
    out = proc.stdout.decode()
    marker = re.search(r'^changed: \[backup1\] => ', out, re.M)
    if not marker:
        raise MethodFailed('no result of the task in the output of ansible-playbook: %s' % out[-800:])
    result = json.JSONDecoder().raw_decode(out, marker.end())[0]
    row = our_row(dict(result, elapsed=seconds))
    row['module_seconds'] = result['duration']
    row['note'] += '; module %.1f s, Ansible overhead %.1f s' % (
        result['duration'],
        seconds - result['duration'],
    )
    return row


# --------------------------------------------------------------------------- Barman 3.19.1


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
conninfo = host={host} port={port} user=barman dbname=postgres
ssh_command = {rsh} postgres@{host}
backup_method = rsync
reuse_backup = link
archiver = on
backup_options = concurrent_backup
"""


def barman_setup():
    """Barman's venv (made once, kept), a configuration and a home under BARMAN_DIR, one WAL in its archive.

    Its check (run before every backup) wants at least one archived WAL: the newest segment of the lab
    archive is given to it once (archive-wal). Backups then run without --wait (see the README).
    """
    barman = os.path.join(BARMAN_VENV, 'bin', 'barman')
    if not os.path.realpath(os.path.join(BARMAN_VENV, 'bin', 'python3')).startswith('/usr/') or not os.path.exists(
        barman
    ):
        shutil.rmtree(BARMAN_VENV, ignore_errors=True)
        print('installing barman 3.19.1 into %s' % BARMAN_VENV, flush=True)
        run(['/usr/bin/python3', '-m', 'venv', BARMAN_VENV])
        run([os.path.join(BARMAN_VENV, 'bin', 'pip'), 'install', '-q', 'barman==3.19.1', 'psycopg2-binary'])
    home = os.path.join(BARMAN_DIR, 'home')
    conf_d = os.path.join(BARMAN_DIR, 'conf.d')
    make_dir(BARMAN_DIR, 'barman', 0o755)
    make_dir(home, 'barman')
    make_dir(conf_d, 'barman', 0o755)
    config = os.path.join(BARMAN_DIR, 'barman.conf')
    write_file(config, BARMAN_CONF.format(home=home, conf_d=conf_d), 'barman', 0o644)
    write_file(
        os.path.join(conf_d, 'pg1.conf'),
        BARMAN_SERVER_CONF.format(host=PG1_HOST, port=PG1_PORT, rsh=PLAIN_RSH),
        'barman',
        0o644,
    )
    incoming = os.path.join(home, 'pg1', 'incoming')
    run([barman, '-c', config, '-q', 'cron'], user='barman', check=False)
    run([barman, '-c', config, '-q', 'check', 'pg1'], user='barman', check=False)
    wait_until(lambda: os.path.isdir(incoming), 60, 'barman to create %s' % incoming)
    time.sleep(1)  # barman cron's background archiver
    newest = sorted(
        name for _d, _s, files in os.walk(os.path.join(LAB_PG1, 'wals')) for name in files if wal.is_segment_name(name)
    )[-1]
    target = os.path.join(incoming, newest)
    with open(target + '.part', 'wb') as handle:
        wal_store.copy_decompressed(os.path.join(LAB_PG1, 'wals', newest[:16], newest), handle)
    entry = pwd.getpwnam('barman')
    os.chown(target + '.part', entry.pw_uid, entry.pw_gid)
    os.rename(target + '.part', target)
    run([barman, '-c', config, '-q', 'archive-wal', 'pg1'], user='barman')
    return barman, config, os.path.join(home, 'pg1', 'base')


def read_barman_info(path):
    info = {}
    with open(path) as handle:
        for line in handle:
            key, _, value = line.rstrip('\n').partition('=')
            info[key] = value
    return info


def method_barman(barman, config, base, incremental):
    before = set(os.listdir(base))
    argv = [barman, '-c', config, '-q', 'backup', 'pg1', '--immediate-checkpoint']
    start = time.perf_counter()
    proc = run(argv, user='barman', check=False)
    seconds = time.perf_counter() - start
    new = sorted(set(os.listdir(base)) - before)
    if not new:
        check = run([barman, '-c', config, 'check', 'pg1'], user='barman', check=False).stdout.decode()
        raise MethodFailed(
            'barman backup made nothing (exit %d): %s %s'
            % (proc.returncode, proc.stderr.decode(errors='replace')[-500:], check[-800:])
        )
    backup_id = new[-1]
    info_path = os.path.join(os.path.dirname(base), 'meta', '%s-backup.info' % backup_id)  # Barman 3.19
    if not os.path.exists(info_path):
        info_path = os.path.join(base, backup_id, 'backup.info')  # older Barman
    info = read_barman_info(info_path)
    if info.get('status') not in ('DONE', 'WAITING_FOR_WALS'):
        raise MethodFailed('barman backup %s is %s: %s' % (backup_id, info.get('status'), info.get('error')))
    stats = ast.literal_eval(info['copy_stats']) if info.get('copy_stats') not in (None, '', 'None') else {}
    size, dedup = int(info.get('size') or 0), int(info.get('deduplicated_size') or 0)
    path = os.path.join(base, backup_id)
    return {
        'seconds': seconds,
        'disk': du(path, os.path.join(base, sorted(before)[-1])) if incremental else du(path),
        'size': size,
        'deduplicated_size': dedup,
        'note': 'status %s; copy_time %.1f s (show-backup); size %s, deduplicated_size %s'
        % (info.get('status'), stats.get('copy_time', float('nan')), human(size), human(dedup)),
    }


# --------------------------------------------------------------------------- pgBackRest 2.45


PGBR_CONF = """[global]
repo1-path={dir}/repo
repo1-retention-full=2
log-path={dir}/log
lock-path={dir}/lock
spool-path={dir}/spool
log-level-console=warn
start-fast=y
archive-check=n
compress-type={compress}
process-max={processes}

[pg1]
pg1-path={data}
pg1-port={port}
pg1-socket-path={socket}
"""


def pgbackrest_setup(processes, compress='none'):
    """A local repository of its own for each process-max (so each incremental follows its own full)."""
    if shutil.which('pgbackrest') is None:
        print('installing pgbackrest (apt)', flush=True)
        run(['apt-get', 'install', '-y', '-q', 'pgbackrest'], env={'DEBIAN_FRONTEND': 'noninteractive'})
    directory = os.path.join(PGBR_DIR, 'pm%d-%s' % (processes, compress))
    make_dir(PGBR_DIR, 'postgres')
    make_dir(directory, 'postgres')
    for sub in ('repo', 'log', 'lock', 'spool'):
        make_dir(os.path.join(directory, sub), 'postgres')
    config = os.path.join(directory, 'pgbackrest.conf')
    text = PGBR_CONF.format(
        dir=directory, compress=compress, processes=processes, data=PG1_DATA, port=PG1_PORT, socket=PG_SOCKET
    )
    write_file(config, text, 'postgres')
    run(['pgbackrest', '--config=' + config, '--stanza=pg1', 'stanza-create'], user='postgres')
    return config, directory


def method_pgbackrest(config, directory, incremental):
    backups = os.path.join(directory, 'repo', 'backup', 'pg1')
    before = set(os.listdir(backups)) if os.path.isdir(backups) else set()
    argv = [
        'pgbackrest',
        '--config=' + config,
        '--stanza=pg1',
        'backup',
        '--type=' + ('incr' if incremental else 'full'),
    ]
    start = time.perf_counter()
    run(argv, user='postgres')
    seconds = time.perf_counter() - start
    new = sorted(e for e in set(os.listdir(backups)) - before if re.match(r'^\d{8}-\d{6}F', e))
    if not new:
        raise MethodFailed('pgbackrest made no backup set in %s' % backups)
    return {'seconds': seconds, 'disk': du(os.path.join(backups, new[-1])), 'note': new[-1]}


# --------------------------------------------------------------------------- report


def human(size):
    return '%.0f MB' % (size / 1e6) if size is not None else '-'


def table(rows):
    limits = {}
    for r in rows:  # the faster of a phase's limits (incremental: delta algorithm or whole files)
        if r.get('limit') and 'seconds' in r:
            limits[r['phase']] = min(r['seconds'], limits.get(r['phase'], r['seconds']))
    lines = [
        '| phase | method | wall s | x limit | disk (du) | note |',
        '|---|---|---|---|---|---|',
    ]
    for r in rows:
        if 'error' in r:
            lines.append(
                '| %s | %s | failed | | | %s |'
                % (r['phase'], r['name'], r['error'].replace('|', '/').replace('\n', ' ')[:400])
            )
            continue
        limit = limits.get(r['phase'])
        lines.append(
            '| %s | %s | %.2f | %s | %s | %s |'
            % (
                r['phase'],
                r['name'],
                r['seconds'],
                '%.2f' % (r['seconds'] / limit) if limit else '-',
                human(r.get('disk')),
                r.get('note', '').replace('|', '/'),
            )
        )
    return '\n'.join(lines)


def machine():
    return results_md.machine(psql('SHOW server_version'), 'rsync over OpenSSH on loopback (127.0.0.x)')


# --------------------------------------------------------------------------- main


def cleanup():
    for directory in TEMP_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


def measure(rows, phase, name, function, limit=False):
    flush_writes()
    print('%s: %s ...' % (phase, name), flush=True)
    try:
        row = retried(function)
        row.update(phase=phase, name=name, limit=limit)
        print('  %.2f s, %s on disk' % (row['seconds'], human(row.get('disk'))), flush=True)
    except Exception as error:  # a failed method is reported, the others still run
        row = dict(phase=phase, name=name, limit=limit, error='%s: %s' % (type(error).__name__, error))
        print('  FAILED: %s' % error, flush=True)
    rows.append(row)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    parser.add_argument('--skip-ansible', action='store_true', help='no run through ansible-playbook')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and barman)')
    rows, breakdown, tps = [], {}, None
    ours_full = ours_incr = {}
    pgbr_incr = {}  # process-max -> the incremental's row
    pgdata_bytes = None
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    try:
        cleanup()
        retried(ensure_data)
        psql('CHECKPOINT')
        warm_cache()
        pgdata_bytes = int(psql('SELECT sum(pg_database_size(oid)) FROM pg_database'))
        full_rsync = os.path.join(RSYNC_DIR, 'full')

        measure(rows, 'full', 'rsync -a over ssh + sync -f (limit)', lambda: method_rsync('full'), limit=True)
        ours_full = measure(rows, 'full', 'ours, jobs 1', lambda: method_ours(reuse='off'))
        measure(rows, 'full', 'ours, jobs 2', lambda: method_ours(reuse='off', jobs=2))
        if not args.skip_ansible:
            measure(rows, 'full', 'ours via ansible-playbook, jobs 1', method_ours_ansible)
        barman = {}

        def barman_full():
            shutil.rmtree(BARMAN_DIR, ignore_errors=True)  # a retry must not reuse a failed attempt's copy
            barman['setup'] = barman_setup()
            return method_barman(*barman['setup'], incremental=False)

        measure(rows, 'full', 'Barman 3.19.1 (rsync, concurrent)', barman_full)
        pgbr = {}
        for processes in (1, 2):

            def pgbr_full(processes=processes):
                pgbr[processes] = pgbackrest_setup(processes)
                return method_pgbackrest(*pgbr[processes], incremental=False)

            measure(rows, 'full', 'pgBackRest 2.45, process-max %d' % processes, pgbr_full)

        tps = write_load(15)

        measure(
            rows,
            'incr',
            'rsync -a --link-dest + sync -f (limit, delta algorithm)',
            lambda: method_rsync('incr', previous=full_rsync),
            limit=True,
        )
        measure(
            rows,
            'incr',
            'rsync -a --link-dest --whole-file + sync -f (limit, whole files)',
            lambda: method_rsync('incr-whole', previous=full_rsync, whole_file=True),
            limit=True,
        )
        ours_incr = measure(rows, 'incr', 'ours, reuse=link, jobs 1', lambda: method_ours(reuse='link'))
        if barman.get('setup'):
            measure(
                rows,
                'incr',
                'Barman 3.19.1 (reuse_backup=link)',
                lambda: method_barman(*barman['setup'], incremental=True),
            )
        for processes in (1, 2):
            if processes in pgbr:
                pgbr_incr[processes] = measure(
                    rows,
                    'incr',
                    'pgBackRest 2.45 --type=incr, process-max %d' % processes,
                    lambda processes=processes: method_pgbackrest(*pgbr[processes], incremental=True),
                )
        for label, row in (('full, jobs 1', ours_full), ('incremental', ours_incr)):
            if 'backup_id' in row:
                breakdown[label] = backup_log_lines(row['backup_id'])
    finally:
        cleanup()
    limit_full = next((r for r in rows if r['phase'] == 'full' and r.get('limit') and 'seconds' in r), None)
    verdict = ''
    if limit_full and 'seconds' in ours_full:
        ratio = ours_full['seconds'] / limit_full['seconds']
        verdict = 'Goal (our full backup within %.1fx plain rsync): %s, measured %.2fx (%.2f s vs %.2f s).' % (
            GOAL,
            'met' if ratio <= GOAL else 'NOT met',
            ratio,
            ours_full['seconds'],
            limit_full['seconds'],
        )
    pgbr_one = pgbr_incr.get(1, {})
    if 'seconds' in ours_incr and 'seconds' in pgbr_one:
        verdict += (
            '\n\nGoal (#15, our incremental no slower than pgBackRest --type=incr, process-max 1): %s, '
            '%.2f s vs %.2f s (%.2fx); ours sent changed files as %s.'
            % (
                'met' if ours_incr['seconds'] <= pgbr_one['seconds'] else 'NOT met',
                ours_incr['seconds'],
                pgbr_one['seconds'],
                ours_incr['seconds'] / pgbr_one['seconds'],
                ours_incr.get('transfer') or '?',
            )
        )
    text = [
        SECTION,
        '',
        'Run %s on %s; pgbench scale %d in `%s` of pg1 (databases %s in all, pg_wal excluded), write load '
        'between fulls and incrementals: `pgbench -T 15 -c 2` (%s tps) then CHECKPOINT; load average (1 min) '
        '%.1f before, %.1f after. `.venv/bin/python bench/backup_speed.py`.'
        % (
            started.strftime('%Y-%m-%d %H:%M %Z'),
            machine(),
            SCALE,
            DATABASE,
            human(pgdata_bytes),
            '%.0f' % tps if tps else '?',
            load_before,
            os.getloadavg()[0],
        ),
        '',
        table(rows),
        '',
        verdict,
        '',
        'x limit: wall s / wall s of the faster plain rsync of the same phase (`rsync -a` as barman over SSH, '
        'with the excludes of our module: no pg_wal/ contents, then `sync -f` of its target, since a backup '
        'counts only once durable: ours syncs its filesystem before DONE, pgBackRest fsyncs each file, Barman '
        'does neither). Every rsync over SSH (limit, ours, Barman) '
        'uses the AES-GCM cipher our module asks for; PGDATA is read once before, so all read from the page '
        'cache. Ours: time of `backup.take_backup()` (as barman, no Ansible; includes the checkpoint and '
        'the wait for the end WAL in the lab archive). Barman: `barman backup --immediate-checkpoint` '
        'without `--wait` (its server gets no WAL stream here, so the backup ends WAITING_FOR_WALS; '
        'copy_time is from its backup.info). pgBackRest: local repository, run as postgres, start-fast, '
        'compress-type=none (nobody else compresses), archive-check=n. disk: `du` of the backup '
        'directory; for an incremental only the blocks it adds to the previous backup. The incremental has two '
        'limits: rsync over SSH uses its delta algorithm by default (checksums of the older copy and of each '
        'changed file on both hosts), `--whole-file` sends changed files whole; ours chooses per run '
        '(`delta_transfer: auto`, the note gives its choice and why).',
    ]
    for label, lines in breakdown.items():
        text += ['', 'Our %s, from `backup.log`:' % label, '', '```'] + lines + ['```']
    text = '\n'.join(text) + '\n'
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 1 if any('error' in r for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
