#!/usr/bin/env python3
"""Recovery speed: ours, plain rsync (the limit), Barman 3.19.1 and pgBackRest 2.45 on the same backup data.

Run as root on the lab (tests/lab/lab up, playbooks/setup.yml done), from the checkout:

    .venv/bin/python bench/restore_speed.py [--rounds N] [--no-results] [--skip-ansible]

Data: the database bench_backup of pg1 (pgbench scale 60, ~1 GB, made once by backup_speed.py's
ensure_data and kept). Backups: Barman and pgBackRest take theirs as backup_speed.py does and are given
the WAL of their backup from the lab archive; then ours is taken with backup.take_backup (reuse=link) in
/var/lib/barman (--reuse-backup: the newest DONE one that holds bench_backup). Then, N rounds of:

  limit              rsync -a over SSH of base/<id>/data as barman to postgres@127.0.0.11
  ours, files only   recovery.recover() as barman (target_immediate, get_wal off), then pg_ctl start
                     and the time until pg_is_in_recovery() is false
  ours, get_wal      the same with get_wal (restore_command fetches over pg1's own key), as recover.yml
                     recovers on pg1: the playbook's like-for-like baseline
  ours, recover.yml  ansible-playbook playbooks/recover.yml, wall time to a promoted server
  Barman 3.19.1      barman recover --remote-ssh-command ... --target-immediate, then pg_ctl start
  pgBackRest 2.45    pgbackrest restore --type=immediate (local repository), then pg_ctl start

Everything temporary is under /var/tmp/bench-restore-*; every cluster started is stopped and those
directories are deleted in a finally. See bench/README.md and bench/RESULTS.md.
"""

import argparse
import datetime
import glob
import json
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_speed as bs  # noqa: E402  (the colleague's helpers: run as a user, psql, the peers' setup)
import results as results_md  # noqa: E402
from backup_speed import COLLECTIONS, PG1_HOST, PG1_PORT, PLAIN_RSH, TOP, MethodFailed, make_dir, psql, run  # noqa: E402

from ansible_collections.barman.postgresql.plugins.module_utils import wal, wal_store  # noqa: E402

LAB_HOME = '/var/lib/barman'
LAB_PG1 = os.path.join(LAB_HOME, 'pg1')
PG_BIN = '/usr/lib/postgresql/15/bin'
BASE = '/var/tmp/bench-restore-'
LIMIT_DIR = BASE + 'limit'
OURS_DIR = BASE + 'ours-files'
OURS_GET_DIR = BASE + 'ours-get'
# restore_command on pg1 as recover.yml writes it there (get_wal over pg1's own key)
SENDER = [
    '/usr/local/lib/barman-postgresql/bin/barman-wal-sender',
    '--ssh', 'barman@127.0.0.21',
    '--identity-file', '/var/lib/postgresql/.ssh/barman_pg1',
    '--known-hosts', '/var/lib/postgresql/.ssh/barman_known_hosts',
]  # fmt: skip
PLAY_DIR = BASE + 'ours-playbook'
BARMAN_DIR = BASE + 'barman'  # Barman's home and configuration (owned by barman)
BARMAN_DEST = BASE + 'barman-dest'  # where Barman recovers to (owned by postgres)
PGBR_DIR = BASE + 'pgbackrest'  # repository and restore (owned by postgres)
SEGMENT = 16 * 1024 * 1024

SECTION = '## Recovery'
PLAYBOOK_ROW = 'ours, playbooks/recover.yml'
OURS_ROW = 'ours, recovery.recover() files only'
# The same recovery recover.yml makes on pg1 (WAL fetched by restore_command over SSH): the playbook's baseline.
OURS_GET_ROW = 'ours, recovery.recover() with get_wal (as recover.yml on pg1)'
PLAYBOOK_GOAL = 1.5  # the speed issue's goal: recover.yml within 1.5x of the module's own time to a usable server
GOAL = 1.2  # the goal: our restore within 1.2x plain rsync


# --------------------------------------------------------------------------- helpers


def as_postgres_dir(path):
    """A fresh empty directory owned by postgres (rsync over SSH as postgres writes below it)."""
    shutil.rmtree(path, ignore_errors=True)
    make_dir(path, 'postgres')
    return path


def warm(path):
    """Read a source once (page cache), then flush what is dirty: every method starts alike."""
    run(['find', path, '-type', 'f', '-exec', 'cat', '{}', '+'], stdout=subprocess.DEVNULL)
    run(['sync'])


def du(path):
    return int(run(['du', '-s', '-B1', path]).stdout.split()[0])


def lab_segment(name):
    return os.path.join(LAB_PG1, 'wals', name[:16], name)


def wait_for_segment(name, seconds=90):
    """The lab archive holds ``name`` (pg1 archives into it); switch WAL once if it lags."""
    deadline = time.monotonic() + seconds
    switched = False
    while not os.path.exists(lab_segment(name)):
        if time.monotonic() > deadline:
            raise MethodFailed('%s did not reach the lab archive in %d s' % (name, seconds))
        if not switched and time.monotonic() > deadline - seconds + 5:
            psql('SELECT pg_switch_wal()')
            switched = True
        time.sleep(0.5)


def decompressed_segments(first, last, directory, owner):
    """Segments first..last of the lab archive, decompressed into directory (owned by owner)."""
    paths = []
    for name in wal.segments_between(first, last, SEGMENT):
        wait_for_segment(name)
        path = os.path.join(directory, name)
        with open(path + '.part', 'wb') as handle:
            wal_store.copy_decompressed(lab_segment(name), handle)
        entry = pwd.getpwnam(owner)
        os.chown(path + '.part', entry.pw_uid, entry.pw_gid)
        os.rename(path + '.part', path)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- servers


STARTED = []  # data directories of every cluster this run started (stopped in the finally)


def start_and_wait(data, port):
    """pg_ctl start of a recovered copy on its own port and socket; seconds until it is promoted."""
    socket_dir = os.path.dirname(data)
    options = '-c port=%d -c listen_addresses= -c unix_socket_directories=%s -c archive_mode=off' % (port, socket_dir)
    argv = [PG_BIN + '/pg_ctl', 'start', '-D', data, '-l', data + '.log', '-w', '-t', '600', '-s', '-o', options]
    STARTED.append(data)
    start = time.perf_counter()
    proc = run(argv, user='postgres', check=False)
    ready = time.perf_counter() - start
    if proc.returncode != 0:
        raise MethodFailed('pg_ctl start failed: %s' % tail(data + '.log'))
    query = ['psql', '-XAt', '-h', socket_dir, '-p', str(port), '-d', 'postgres', '-c', 'SELECT pg_is_in_recovery()']
    deadline = time.monotonic() + 600
    while run(query, user='postgres', check=False).stdout.decode().strip() != 'f':
        if time.monotonic() > deadline:
            raise MethodFailed('not promoted after 600 s: %s' % tail(data + '.log'))
        time.sleep(0.05)
    return ready, time.perf_counter() - start


def stop(data):
    if os.path.exists(os.path.join(data, 'postmaster.pid')):
        run([PG_BIN + '/pg_ctl', 'stop', '-D', data, '-m', 'immediate', '-w', '-s'], user='postgres', check=False)


def tail(path, size=800):
    try:
        with open(path, errors='replace') as handle:
            return handle.read()[-size:]
    except OSError as error:
        return str(error)


# --------------------------------------------------------------------------- backups


OUR_BACKUP_CHILD = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import backup
spec = backup.module_spec()['argument_spec']
params = dict((key, option.get('default')) for key, option in spec.items())
params.update(json.loads(sys.argv[2]))
print(json.dumps(backup.take_backup(params), default=str))
"""


def read_info(path):
    info = {}
    with open(path) as handle:
        for line in handle:
            key, _, value = line.rstrip('\n').partition('=')
            info[key] = value
    return info


def our_backup(oid, reuse_existing):
    """Our backup of pg1 in the lab catalog: a new one (backup.take_backup, reuse=link, after the peers'
    backups so that the archive holds little WAL after it), or with reuse_existing the newest DONE one
    that holds bench_backup."""
    if reuse_existing:
        for backup_id in sorted(os.listdir(os.path.join(LAB_PG1, 'base')), reverse=True):
            info = os.path.join(LAB_PG1, 'meta', '%s-backup.info' % backup_id)
            if os.path.exists(info) and read_info(info).get('status') == 'DONE':
                if os.path.isdir(os.path.join(LAB_PG1, 'base', backup_id, 'data', 'base', oid)):
                    return backup_id, 'reused'
                break  # the newest DONE backup lacks the data: take a new one
    print('taking our backup (backup.take_backup)', flush=True)
    params = dict(server='pg1', barman_home=LAB_HOME, pg_host=PG1_HOST, pg_port=PG1_PORT, reuse='link')
    out = run(['/usr/bin/python3', '-c', OUR_BACKUP_CHILD, COLLECTIONS, json.dumps(params)], user='barman')
    return json.loads(out.stdout.decode().strip().splitlines()[-1])['backup_id'], 'taken now, reuse=link'


def barman_backup():
    """Barman's backup as backup_speed.py takes it, then its WAL from the lab archive (so it is DONE)."""
    bs.BARMAN_DIR = BARMAN_DIR
    barman, config, base = bs.barman_setup()
    before = set(os.listdir(base))
    run([barman, '-c', config, '-q', 'backup', 'pg1', '--immediate-checkpoint'], user='barman', check=False)
    new = sorted(set(os.listdir(base)) - before)
    if not new:
        raise MethodFailed('barman backup made nothing: %s' % tail(os.path.join(BARMAN_DIR, 'home', 'barman.log')))
    backup_id = new[-1]
    info = read_info(os.path.join(os.path.dirname(base), 'meta', '%s-backup.info' % backup_id))
    incoming = os.path.join(BARMAN_DIR, 'home', 'pg1', 'incoming')
    decompressed_segments(info['begin_wal'], info['end_wal'], incoming, 'barman')
    run([barman, '-c', config, '-q', 'archive-wal', 'pg1'], user='barman')
    run([barman, '-c', config, '-q', 'check-backup', 'pg1', backup_id], user='barman', check=False)
    info = read_info(os.path.join(os.path.dirname(base), 'meta', '%s-backup.info' % backup_id))
    return dict(
        barman=barman, config=config, backup_id=backup_id, path=os.path.join(base, backup_id), status=info.get('status')
    )


def pgbackrest_backup():
    """pgBackRest's full backup as backup_speed.py takes it (process-max 1), then archive-push of its WAL."""
    bs.PGBR_DIR = PGBR_DIR
    config, directory = bs.pgbackrest_setup(1)
    run(['pgbackrest', '--config=' + config, '--stanza=pg1', 'backup', '--type=full'], user='postgres')
    out = run(['pgbackrest', '--config=' + config, '--stanza=pg1', 'info', '--output=json'], user='postgres')
    newest = json.loads(out.stdout.decode())[0]['backup'][-1]
    spool = as_postgres_dir(os.path.join(PGBR_DIR, 'wal'))
    for path in decompressed_segments(newest['archive']['start'], newest['archive']['stop'], spool, 'postgres'):
        run(['pgbackrest', '--config=' + config, '--stanza=pg1', 'archive-push', path], user='postgres')
    return dict(config=config, label=newest['label'], path=os.path.join(directory, 'repo'))


# --------------------------------------------------------------------------- the methods


def method_limit(data):
    target = os.path.join(as_postgres_dir(LIMIT_DIR), 'data')
    warm(data)
    argv = ['rsync', '-a', '-e', PLAIN_RSH, data + '/', 'postgres@%s:%s/' % (PG1_HOST, target)]
    start = time.perf_counter()
    run(argv, user='barman')
    return {'files': time.perf_counter() - start, 'note': '%.0f MB copied' % (du(target) / 1e6)}


OUR_RECOVER_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import catalog, recovery, recovery_hold
spec = recovery.module_spec()['argument_spec']
params = dict((key, option.get('default')) for key, option in spec.items())
params.update(json.loads(sys.argv[2]))
steps = []  # where the time goes: each rsync of the module and the staging of WAL, timed around the call


def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            steps.append([name(args), time.perf_counter() - start])
    return wrapper


recovery.Destination.rsync = timed(lambda a: 'rsync ' + a[3], recovery.Destination.rsync)
recovery._stage_wals = timed(lambda a: 'staging WAL', recovery._stage_wals)
start = time.perf_counter()
result = recovery.recover(params)
result['elapsed'] = time.perf_counter() - start
result['steps'] = steps
# The WAL went along with the copy: nothing more to hold (recover.yml releases its hold at the target too).
recovery_hold.release(catalog.ServerLayout(params['barman_home'], params['server']), result['hold'])
print(json.dumps(result, default=str))
"""


def method_ours(data, backup_id, get_wal=False):
    target = os.path.join(as_postgres_dir(OURS_GET_DIR if get_wal else OURS_DIR), 'data')
    params = dict(
        server='pg1',
        barman_home=LAB_HOME,
        backup_id=backup_id,
        destination_host=PG1_HOST,
        destination_directory=target,
        target_immediate=True,
        get_wal=get_wal,
        wal_sender=SENDER if get_wal else None,
        port=6497 if get_wal else 6499,
    )
    warm(data)
    argv = ['/usr/bin/python3', '-c', OUR_RECOVER_CHILD, COLLECTIONS, json.dumps(params)]
    start = time.perf_counter()
    out = run(argv, user='barman')
    files = time.perf_counter() - start
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    staged = len(os.listdir(os.path.join(target, 'barman_wal'))) if not get_wal else 0
    ready, usable = start_and_wait(target, params['port'])
    return {
        'files': files,
        'usable': files + usable,
        'note': 'Python start %.2f s, recover() %.2f s = %s + checks %.2f s; %d WAL files staged in barman_wal/; '
        'pg_ctl -w %.2f s, promoted %.2f s'
        % (
            files - result['elapsed'],
            result['elapsed'],
            ' + '.join('%s %.2f s' % (name, seconds) for name, seconds in result['steps']),
            result['elapsed'] - sum(seconds for _name, seconds in result['steps']),
            staged,
            ready,
            usable,
        ),
    }


def method_playbook(data, backup_id, top=TOP):
    """recover.yml of the checkout ``top`` (--before: another one, for its before/after in the same run)."""
    target = os.path.join(as_postgres_dir(PLAY_DIR), 'data')
    warm(data)
    extra = {
        'server': 'pg1',
        'backup_id': backup_id,
        'target_immediate': True,
        'recover_dir': target,
        'recover_port': 6498,
    }
    argv = [os.path.join(TOP, '.venv', 'bin', 'ansible-playbook'), 'playbooks/recover.yml', '-e', json.dumps(extra)]
    env = {'ANSIBLE_CONFIG': os.path.join(top, 'ansible.cfg')}
    STARTED.append(target)
    start = time.perf_counter()
    proc = run(argv, env=env, cwd=top, check=False)
    usable = time.perf_counter() - start
    if proc.returncode != 0:
        raise MethodFailed('recover.yml exited %d: %s' % (proc.returncode, proc.stdout.decode()[-1200:]))
    query = ['psql', '-XAt', '-h', bs.PG_SOCKET, '-p', '6498', '-d', 'postgres', '-c', 'SELECT pg_is_in_recovery()']
    if run(query, user='postgres', check=False).stdout.decode().strip() != 'f':
        raise MethodFailed('the server of recover.yml is not promoted: %s' % tail(target + '.log'))
    return {'usable': usable, 'note': 'get_wal over SSH (recover_host = pg1), includes the plan and Ansible'}


def method_barman(b):
    target = os.path.join(as_postgres_dir(BARMAN_DEST), 'data')
    tblspc = os.path.join(BARMAN_DEST, 'tblspc')  # never the original location: that is pg1's live tablespace
    warm(b['path'])
    argv = [
        b['barman'], '-c', b['config'], '-q', 'recover',
        '--remote-ssh-command', '%s postgres@%s' % (PLAIN_RSH, PG1_HOST),
        '--target-immediate', '--target-action', 'promote',
        '--tablespace', 'lab_tbs:' + tblspc,
        'pg1', b['backup_id'], target,
    ]  # fmt: skip
    start = time.perf_counter()
    proc = run(argv, user='barman', check=False)
    files = time.perf_counter() - start
    if proc.returncode != 0 or not os.path.exists(os.path.join(target, 'PG_VERSION')):
        raise MethodFailed('barman recover exited %d: %s' % (proc.returncode, proc.stderr.decode()[-1200:]))
    wal_dir = os.path.join(target, 'barman_wal')
    staged = len(os.listdir(wal_dir)) if os.path.isdir(wal_dir) else 0
    ready, usable = start_and_wait(target, 6497)
    return {
        'files': files,
        'usable': files + usable,
        'note': 'backup %s; %d WAL files in barman_wal/; pg_ctl -w %.2f s, promoted %.2f s'
        % (b['status'], staged, ready, usable),
    }


def method_pgbackrest(p):
    dest = as_postgres_dir(os.path.join(PGBR_DIR, 'restore'))
    target = os.path.join(dest, 'data')
    tblspc = os.path.join(dest, 'tblspc')
    make_dir(target, 'postgres')
    make_dir(tblspc, 'postgres')
    warm(p['path'])
    restore_command = 'pgbackrest --config=%s --stanza=pg1 --pg1-path=%s archive-get %%f "%%p"' % (p['config'], target)
    argv = [
        'pgbackrest', '--config=' + p['config'], '--stanza=pg1', '--pg1-path=' + target, 'restore',
        '--set=' + p['label'], '--type=immediate', '--target-action=promote',
        '--tablespace-map=lab_tbs=' + tblspc,
        '--recovery-option=restore_command=' + restore_command,
    ]  # fmt: skip
    start = time.perf_counter()
    run(argv, user='postgres')
    files = time.perf_counter() - start
    ready, usable = start_and_wait(target, 6496)
    return {
        'files': files,
        'usable': files + usable,
        'note': 'set %s; WAL by archive-get; pg_ctl -w %.2f s, promoted %.2f s' % (p['label'], ready, usable),
    }


# --------------------------------------------------------------------------- report


def measure(results, name, function):
    print('%s ...' % name, flush=True)
    try:
        row = function()
        print('  files %s, usable %s' % (fmt(row.get('files')), fmt(row.get('usable'))), flush=True)
    except Exception as error:  # a failed method is reported, the others still run
        row = {'error': '%s: %s' % (type(error).__name__, error)}
        print('  FAILED: %s' % error, flush=True)
    finally:
        for directory in STARTED:
            stop(directory)
        for directory in (LIMIT_DIR, OURS_DIR, OURS_GET_DIR, PLAY_DIR, BARMAN_DEST, os.path.join(PGBR_DIR, 'restore')):
            shutil.rmtree(directory, ignore_errors=True)
        del STARTED[:]
    results.setdefault(name, []).append(row)


def fmt(value):
    return '%.2f' % value if value is not None else '-'


def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def paired(results, limit_name, name):
    """Per round: (wall s, wall s / the limit of the same round); the ratio is None if either failed."""
    pairs = []
    for row, limit_row in zip(results.get(name, []), results.get(limit_name, [])):
        seconds = row.get('files', row.get('usable'))
        if seconds is not None:
            pairs.append((seconds, seconds / limit_row['files'] if limit_row.get('files') else None))
    return pairs


def table(results, limit_name):
    limit = median(results.get(limit_name, []), 'files')
    lines = [
        '| method | files only, wall s | x limit | to a usable server, wall s | x limit | runs: wall s (x limit of '
        'the round) | note (last run) |',
        '|---|---|---|---|---|---|---|',
    ]
    for name, rows in results.items():
        good = [r for r in rows if 'error' not in r]
        errors = [r['error'] for r in rows if 'error' in r]
        if not good:
            error = ' '.join(errors[-1].split()).replace('|', '/')[:400]
            lines.append('| %s | failed | | | | %d | %s |' % (name, len(rows), error))
            continue
        files, usable = median(good, 'files'), median(good, 'usable')
        note = good[-1].get('note', '') + ('; %d failed: %s' % (len(errors), errors[-1][:200]) if errors else '')
        note = ' '.join(note.split())
        lines.append(
            '| %s | %s | %s | %s | %s | %s | %s |'
            % (
                name,
                fmt(files),
                fmt(files / limit) if files and limit else '-',
                fmt(usable),
                fmt(usable / limit) if usable and limit else '-',
                ', '.join('%s (%sx)' % (fmt(sec), fmt(ratio)) for sec, ratio in paired(results, limit_name, name)),
                note.replace('|', '/'),
            )
        )
    return '\n'.join(lines), limit


def playbook_verdict(results, before_row=None):
    """recover.yml (and its before) against the module's own time to a usable server, round by round."""
    lines = []
    for row in [PLAYBOOK_ROW] + ([before_row] if before_row else []):
        for baseline in (OURS_GET_ROW, OURS_ROW):  # the same recovery first (get_wal), then WAL copied along
            ratios = []
            for ours, play in zip(results.get(baseline, []), results.get(row, [])):
                if 'error' not in ours and 'error' not in play:
                    ratios.append(play['usable'] / ours['usable'])
            if not ratios:
                lines.append('%s / %s, to a usable server: not measured.' % (row, baseline))
                continue
            ratio = statistics.median(ratios)
            lines.append(
                "%s / %s (+ pg_ctl start + promotion), to a usable server: %.2fx (median of the rounds' ratios %s)%s."
                % (
                    row,
                    baseline,
                    ratio,
                    ', '.join('%.2fx' % r for r in ratios),
                    ''
                    if row != PLAYBOOK_ROW or baseline != OURS_GET_ROW
                    else '; goal (within %.1fx): %s' % (PLAYBOOK_GOAL, 'met' if ratio <= PLAYBOOK_GOAL else 'NOT met'),
                )
            )
    return '\n'.join(lines)


def cleanup():
    for pid_file in glob.glob(BASE + '*/**/postmaster.pid', recursive=True):
        stop(os.path.dirname(pid_file))
    for path in glob.glob(BASE + '*'):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=3, help='rounds of every method (medians reported)')
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    parser.add_argument('--reuse-backup', action='store_true', help='reuse the newest DONE backup of pg1')
    parser.add_argument('--skip-ansible', action='store_true', help='no run through recover.yml')
    parser.add_argument(
        '--before',
        metavar='CHECKOUT',
        help='also run recover.yml of this checkout (e.g. a clone of an older commit, its build/collections '
        'linked to itself), for before/after figures in the same run',
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and barman)')
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    results, setup_notes = {}, []
    limit_name = 'rsync -a over ssh (limit)'
    if args.before:
        revision = subprocess.run(['git', '-C', args.before, 'rev-parse', '--short', 'HEAD'], capture_output=True)
        before_row = '%s, before (%s)' % (PLAYBOOK_ROW, revision.stdout.decode().strip() or args.before)
    try:
        cleanup()
        bs.wait_until(bs.lab_ready, 120, 'sshd and PostgreSQL on pg1')
        bs.ensure_data()
        oid = psql("SELECT oid FROM pg_database WHERE datname = '%s'" % bs.DATABASE)  # noqa: S608
        peers = {}
        for label, function in (('Barman', barman_backup), ('pgBackRest', pgbackrest_backup)):
            print('%s backup ...' % label, flush=True)
            try:
                peers[label] = function()
                name = peers[label].get('backup_id') or peers[label]['label']
                setup_notes.append('%s %s (%.0f MB)' % (label, name, du(peers[label]['path']) / 1e6))
            except Exception as error:
                setup_notes.append('%s: backup failed: %s' % (label, error))
                print('  FAILED: %s' % error, flush=True)
        backup_id, how = our_backup(oid, args.reuse_backup)
        data = os.path.join(LAB_PG1, 'base', backup_id, 'data')
        setup_notes.insert(0, 'ours %s (%s; data directory %.0f MB)' % (backup_id, how, du(data) / 1e6))
        for round_number in range(1, args.rounds + 1):
            print('round %d' % round_number, flush=True)
            measure(results, limit_name, lambda: method_limit(data))
            measure(results, OURS_ROW, lambda: method_ours(data, backup_id))
            measure(results, OURS_GET_ROW, lambda: method_ours(data, backup_id, get_wal=True))
            if not args.skip_ansible:
                measure(results, PLAYBOOK_ROW, lambda: method_playbook(data, backup_id))
            if args.before:
                measure(results, before_row, lambda: method_playbook(data, backup_id, args.before))
            if 'Barman' in peers:
                measure(results, 'Barman 3.19.1 recover (remote)', lambda: method_barman(peers['Barman']))
            if 'pgBackRest' in peers:
                measure(results, 'pgBackRest 2.45 restore (local repo)', lambda: method_pgbackrest(peers['pgBackRest']))
    finally:
        cleanup()
    text_table, limit = table(results, limit_name)
    ours_name = OURS_ROW
    ours = median([r for r in results.get(ours_name, []) if 'error' not in r], 'files')
    ratios = [ratio for _sec, ratio in paired(results, limit_name, ours_name) if ratio is not None]
    verdict = 'Goal (our restore within %.1fx plain rsync): not measured.' % GOAL
    if ours and limit and ratios:
        ratio = statistics.median(ratios)
        verdict = (
            "Goal (our restore, files only, within %.1fx plain rsync): %s, measured %.2fx (median of the rounds' "
            'ratios %s; medians %.2f s vs %.2f s = %.2fx).'
            % (
                GOAL,
                'met' if ratio <= GOAL else 'NOT met',
                ratio,
                ', '.join('%.2fx' % r for r in ratios),
                ours,
                limit,
                ours / limit,
            )
        )
    text = '\n'.join([
        SECTION,
        '',
        'Run %s on %s; %d rounds, medians; load average (1 min) %.1f before, %.1f after. '
        '`.venv/bin/python bench/restore_speed.py --rounds %d`.'
        % (started.strftime('%Y-%m-%d %H:%M %Z'), bs.machine(), args.rounds, load_before, os.getloadavg()[0],
           args.rounds),
        '',
        'Backups of the same data (bench_backup, pgbench scale 60): ' + '; '.join(setup_notes) + '.',
        '',
        text_table,
        '',
        verdict,
        '',
        playbook_verdict(results, args.before and before_row),
    ]) + '\n'  # fmt: skip
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 1 if any('error' in r for rows in results.values() for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
