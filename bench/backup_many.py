#!/usr/bin/env python3
"""backup.yml over many PostgreSQL servers on one backup server: what limits it, and which
barman_backup_concurrency to use.

Run as root on the lab (tests/lab/lab up, playbooks/setup.yml done), from the checkout, under the lab lock:

    flock -o -w 1800 /tmp/barman-lab.lock .venv/bin/python bench/backup_many.py [--servers N] [--scale S]
        [--concurrency 0,1,2,4] [--no-results]

It makes its own N (default 10) PostgreSQL 15 clusters bench01.. under /var/tmp/bench-many (ports 5701..,
each on its own address 127.0.0.31.., reached over SSH through an sshd of the bench's own on those
addresses), each with pgbench -i -s S data, adds them with backup1 to an inventory of its own and runs
the real setup.yml. Then, in one run, each after a global sync with the PGDATAs in the page cache:

  limit        N plain rsync -a over SSH (barman -> postgres, our cipher and excludes) at once, then sync
  limit, one   the same for one server alone
  one server   backup.yml --limit bench01
  all N        backup.yml over the N servers, once per barman_backup_concurrency given (0: no limit)

Everything is removed in a finally: clusters, sshd, inventory, the servers' catalogs, keys and
authorized_keys/known_hosts lines on backup1. See bench/README.md.
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
import tempfile
import time

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(TOP, 'build', 'collections'))

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, rsync, ssh  # noqa: E402
import results as results_md  # noqa: E402  (bench/results.py, beside this script)

BASE = '/var/tmp/bench-many'
PG_BIN = '/usr/lib/postgresql/15/bin'
SOCKET = '/var/run/postgresql'
BARMAN_HOME = '/var/lib/barman'
LAB_STATE = '/var/lib/barman-lab'
POSTGRES_SSH = os.path.join(pwd.getpwnam('postgres').pw_dir, '.ssh')
SECTION = '## Many servers: backup.yml'
PLAIN_RSH = 'ssh -o BatchMode=yes -o StrictHostKeyChecking=yes -o ' + ssh.BULK_CIPHERS


def name(i):
    return 'bench%02d' % i


def address(i):
    return '127.0.0.%d' % (30 + i)


def port(i):
    return 5700 + i


def pgdata(i):
    return os.path.join(BASE, name(i), 'data')


def run(argv, user=None, check=True, **kwargs):
    if user:
        argv = ['runuser', '-u', user, '--'] + list(argv)
    proc = subprocess.run(argv, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError('%s exited %d: %s%s' % (argv, proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:]))
    return proc


def load():
    return '%.2f' % os.getloadavg()[0]


# --------------------------------------------------------------------------- the estate


def make_cluster(i, scale):
    data = pgdata(i)
    if not os.path.exists(os.path.join(data, 'PG_VERSION')):
        os.makedirs(os.path.dirname(data), exist_ok=True)
        shutil.chown(os.path.dirname(data), 'postgres', 'postgres')
        run([PG_BIN + '/initdb', '-D', data, '--auth-local=peer', '--auth-host=scram-sha-256',
             '--data-checksums', '--locale=C.UTF-8'], user='postgres')  # fmt: skip
        with open(os.path.join(data, 'postgresql.conf'), 'a') as conf:
            # archive_mode and wal_level from the start: setup.yml then only sets archive_command and reloads.
            conf.write(
                "# bench-many\nlisten_addresses = '%s'\nport = %d\nunix_socket_directories = '%s'\n"
                'wal_level = replica\narchive_mode = on\nshared_buffers = 16MB\nmax_connections = 20\n'
                % (address(i), port(i), SOCKET)
            )
    if run([PG_BIN + '/pg_isready', '-q', '-h', SOCKET, '-p', str(port(i))], check=False).returncode != 0:
        run([PG_BIN + '/pg_ctl', '-D', data, '-l', os.path.join(BASE, name(i), 'log'), '-w', '-s', 'start'],
            user='postgres')  # fmt: skip
    tables = run(['psql', '-XAtq', '-h', SOCKET, '-p', str(port(i)), '-d', 'postgres', '-c',
                  "SELECT count(*) FROM pg_class WHERE relname = 'pgbench_accounts'"], user='postgres')  # fmt: skip
    if tables.stdout.strip() != '1':
        run([PG_BIN + '/pgbench', '-i', '-q', '-s', str(scale), '-h', SOCKET, '-p', str(port(i)), 'postgres'],
            user='postgres')  # fmt: skip


def start_sshd(servers):
    """An sshd of the bench's own on the bench addresses (the lab's listens on the lab's only), with the
    lab's configuration and host keys, and a known_hosts for Ansible with the lab's lines and these."""
    lines = [
        line
        for line in open(os.path.join(LAB_STATE, 'sshd_config'))
        if not re.match(r'(ListenAddress|PidFile)\b', line)
    ]
    config = os.path.join(BASE, 'sshd_config')
    with open(config, 'w') as handle:
        handle.writelines(['ListenAddress %s:22\n' % address(i) for i in servers] + ['PidFile %s/sshd.pid\n' % BASE])
        handle.writelines(lines)
    run(['/usr/sbin/sshd', '-f', config, '-E', os.path.join(BASE, 'sshd.log')])
    with open(os.path.join(BASE, 'known_hosts'), 'w') as handle:
        handle.write(open(os.path.join(LAB_STATE, 'known_hosts')).read())
        for key in ('ed25519', 'ecdsa', 'rsa'):
            kind, blob = open('/etc/ssh/ssh_host_%s_key.pub' % key).read().split()[:2]
            handle.writelines('%s %s %s\n' % (address(i), kind, blob) for i in servers)
    for i in servers:
        for _ in range(50):
            argv = ['ssh', '-q', '-i', LAB_STATE + '/admin_key', '-o', 'BatchMode=yes',
                    '-o', 'StrictHostKeyChecking=yes', '-o', 'UserKnownHostsFile=' + BASE + '/known_hosts',
                    'labadmin@' + address(i), 'true']  # fmt: skip
            if run(argv, check=False).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError('the bench sshd does not answer on %s' % address(i))


def write_inventory(servers):
    inventory = {
        'all': {
            'vars': {
                'ansible_user': 'labadmin',
                'ansible_ssh_private_key_file': LAB_STATE + '/admin_key',
                'ansible_ssh_common_args': '-o UserKnownHostsFile=%s/known_hosts' % BASE,
                'ansible_python_interpreter': '/usr/bin/python3',
            },
            'children': {
                'backup_servers': {'hosts': {'backup1': {'ansible_host': '127.0.0.21'}}},
                'pg_servers': {
                    'vars': {'wal_archiving_hba_source': '127.0.0.1/32'},
                    'hosts': {
                        name(i): {
                            'ansible_host': address(i),
                            'barman_backup_host': 'backup1',
                            'barman_pg_port': port(i),
                        }
                        for i in servers
                    },
                },
            },
        }
    }
    path = os.path.join(BASE, 'inventory.yml')
    with open(path, 'w') as handle:
        json.dump(inventory, handle, indent=1)  # JSON is YAML
    return path


def playbook(inventory, play, *args):
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(TOP, 'ansible.cfg'), ANSIBLE_FORCE_COLOR='0')
    env['PATH'] = os.path.join(TOP, '.venv', 'bin') + os.pathsep + env.get('PATH', '')
    started = time.monotonic()
    proc = subprocess.run(['ansible-playbook', '-i', inventory, os.path.join('playbooks', play)] + list(args),
                          cwd=TOP, env=env, capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError('%s %s exited %d: %s' % (play, args, proc.returncode, proc.stdout[-4000:]))
    return time.monotonic() - started, proc.stdout


# --------------------------------------------------------------------------- measuring


def warm(servers):
    """PGDATAs into the page cache (every method then reads from memory), and a global sync."""
    for i in servers:
        for root, _dirs, files in os.walk(pgdata(i)):
            for entry in files:
                try:
                    with open(os.path.join(root, entry), 'rb') as handle:
                        while handle.read(1 << 20):
                            pass
                except OSError:
                    pass
    os.sync()


def limit(servers):
    """N plain rsync -a over SSH at once (as barman, to postgres@, our cipher and excludes), then sync -f."""
    dest = os.path.join(BASE, 'limit')
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    shutil.chown(dest, 'barman', 'barman')
    warm(servers)
    started = time.monotonic()
    procs = []
    for i in servers:
        argv = ['runuser', '-u', 'barman', '--', 'rsync', '-a', '--rsh', PLAIN_RSH]
        argv += ['--exclude=%s' % pattern for pattern in rsync.PGDATA_EXCLUDES]
        argv += ['postgres@%s:%s/' % (address(i), pgdata(i)), os.path.join(dest, name(i)) + '/']
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for proc in procs:
        _out, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError('rsync exited %d: %s' % (proc.returncode, err[-2000:]))
    run(['sync', '-f', dest])
    wall = time.monotonic() - started
    size = int(run(['du', '-sb', dest]).stdout.split()[0])
    shutil.rmtree(dest)
    return dict(wall=wall, size=size, overlap=len(servers), note='')


def newest(i):
    """(backup_id, backup.info) of the server's newest backup, (None, None) when it has none."""
    infos = infofile.backup_infos(catalog.ServerLayout(BARMAN_HOME, name(i)))
    return (max(infos), infos[max(infos)]) if infos else (None, None)


def max_overlap(intervals):
    """The most backups running at one moment, from their (begin, end) times."""
    events = sorted([(b, 1) for b, _e in intervals] + [(e, -1) for _b, e in intervals])
    most = now = 0
    for _t, step in events:
        now += step
        most = max(most, now)
    return most


def backups(inventory, servers, concurrency, forks):
    before = dict((i, newest(i)[0]) for i in servers)
    warm(servers)
    extra = dict(
        barman_backup_reuse='off', barman_retention_policy='REDUNDANCY 1', barman_backup_concurrency=concurrency
    )
    args = ['-e', json.dumps(extra), '-f', str(forks)]
    if len(servers) == 1:
        args += ['--limit', name(servers[0])]
    wall, out = playbook(inventory, 'backup.yml', *args)
    # Each module's own duration, from the play's summary ('bench01: backup <id> DONE, <size> (...), 1.2 s, WAL'),
    # which the YAML callback may fold over lines
    modules = sorted(
        float(seconds)
        for seconds in re.findall(r'bench\d+: backup \S+ DONE, .*?, ([\d.]+) s, WAL', ' '.join(out.split()))
    )
    infos = []
    for i in servers:
        backup_id, info = newest(i)
        if backup_id is None or backup_id == before[i] or info['status'] != 'DONE':
            raise RuntimeError('no new DONE backup of %s' % name(i))
        infos.append(info)
    intervals = [(info['begin_time'], info['end_time']) for info in infos]
    span = (max(e for _b, e in intervals) - min(b for b, _e in intervals)).total_seconds()
    each = sorted((e - b).total_seconds() for b, e in intervals)
    note = 'copies (begin..end) %.1f..%.1f s, modules %.1f..%.1f s; first begin to last end %.1f s' % (
        each[0],
        each[-1],
        modules[0] if modules else 0,
        modules[-1] if modules else 0,
        span,
    )
    size = sum(info['size'] for info in infos)
    return dict(wall=wall, size=size, overlap=max_overlap(intervals), span=span, note=note)


# --------------------------------------------------------------------------- cleanup


def strip_lines(path, keep):
    """Rewrite a file without the lines keep() refuses, atomically, with its owner and mode."""
    if not os.path.exists(path):
        return
    st = os.stat(path)
    lines = open(path).readlines()
    kept = [line for line in lines if keep(line)]
    if kept == lines:
        return
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path))
    with os.fdopen(fd, 'w') as handle:
        handle.writelines(kept)
        handle.flush()
        os.fsync(handle.fileno())
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, st.st_mode & 0o7777)
    os.replace(tmp, path)


def cleanup(servers):
    for i in servers:
        if os.path.exists(os.path.join(pgdata(i), 'postmaster.pid')):
            run(
                [PG_BIN + '/pg_ctl', '-D', pgdata(i), '-m', 'immediate', '-w', '-s', 'stop'],
                user='postgres',
                check=False,
            )
    pid_file = os.path.join(BASE, 'sshd.pid')
    if os.path.exists(pid_file):
        try:
            os.kill(int(open(pid_file).read().split()[0]), 15)
        except (OSError, ValueError):
            pass
    # The WAL senders' SSH masters to backup1 (barman_<server>.cm-%C): ended, then their sockets removed.
    for entry in os.listdir(POSTGRES_SSH):
        if any(entry.startswith('barman_%s.cm-' % name(i)) for i in servers):
            sock = os.path.join(POSTGRES_SSH, entry)
            run(['ssh', '-o', 'ControlPath=' + sock, '-O', 'exit', 'backup1'], user='postgres', check=False)
            if os.path.lexists(sock):
                os.remove(sock)
    names = set(name(i) for i in servers)
    addresses = set(address(i) for i in servers)
    for i in servers:
        shutil.rmtree(os.path.join(BARMAN_HOME, name(i)), ignore_errors=True)
        for path in ([os.path.join(BARMAN_HOME, entry) for entry in os.listdir(BARMAN_HOME)
                      if entry.startswith('.%s-' % name(i)) and entry.endswith('.lock')]
                     + [os.path.join(POSTGRES_SSH, 'barman_%s%s' % (name(i), ext)) for ext in ('', '.pub', '.spool')]
                     + ['/var/log/postgresql/barman-pg_ctl-%s.log' % name(i)]):  # fmt: skip
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            elif os.path.lexists(path):
                os.remove(path)
    strip_lines(
        os.path.join(BARMAN_HOME, '.ssh', 'authorized_keys'),
        # The key comment is barman-postgresql:<server>:<host> (one line per member; <server> alone before).
        lambda line: not any(
            line.rstrip().endswith(' barman-postgresql:' + n) or ' barman-postgresql:%s:' % n in line for n in names
        ),
    )
    strip_lines(os.path.join(BARMAN_HOME, '.ssh', 'known_hosts'), lambda line: line.split(' ', 1)[0] not in addresses)
    shutil.rmtree(BASE, ignore_errors=True)


# --------------------------------------------------------------------------- main


def reading(rows):
    """A few sentences from the figures: which concurrency is fastest, how far from the limit, and where the
    rest of the wall time goes."""
    walls, spans = {}, {}
    for label, row in rows:
        if 'error' not in row:
            walls.setdefault(label, []).append(row['wall'])
            if 'span' in row:
                spans.setdefault(label, []).append(row['span'])
    limit = [label for label in walls if label.startswith('limit:')]
    runs = [label for label in walls if 'concurrency' in label]
    if not limit or not runs:
        return 'Reading: not enough rows succeeded to compare.'
    median = dict((label, statistics.median(values)) for label, values in walls.items())
    best = min(runs, key=median.get)
    out = [
        'Reading: the fastest run is %s, %.1f s, %.2fx the limit (%.1f s).'
        % (best.split(', ')[-1], median[best], median[best] / median[limit[0]], median[limit[0]])
    ]
    out.append(
        'Each run next to it: '
        + ', '.join('%s %+.0f%%' % (label.split(', ')[-1], 100 * (median[label] / median[best] - 1)) for label in runs)
        + '.'
    )
    span = statistics.median(spans[best]) if spans.get(best) else None
    if span is not None:
        out.append(
            'Of its wall time the copies (first begin to last end) take %.1f s; the other %.1f s are Ansible and'
            " the modules' fixed steps (connection, checkpoint, manifest, syncfs, the end WAL, retention)."
            % (span, median[best] - span)
        )
    return ' '.join(out)


def table(rows):
    """One line per label: the median of the rounds (wall, x limit), each round's wall, the last round's note."""
    limits = [row for label, row in rows if label.startswith('limit:')]
    out = ['| run | wall s | x limit | MB/s | most at once | rounds (wall s) | note |', '|---|---|---|---|---|---|---|']
    for label in dict.fromkeys(label for label, _row in rows):
        runs = [row for other, row in rows if other == label]
        good = [row for row in runs if 'error' not in row]
        if not good:
            error = runs[-1]['error'][:200].replace('|', '/').replace('\n', ' ')
            out.append('| %s | failed | | | | | %s |' % (label, error))
            continue
        ratios = [
            row['wall'] / limit['wall']
            for row, limit in zip(runs, limits)
            if 'error' not in row and 'error' not in limit
        ]
        wall = statistics.median(row['wall'] for row in good)
        out.append('| %s | %.1f | %s | %.0f | %d | %s | %s |' % (
            label, wall, '%.2f' % statistics.median(ratios) if ratios else '?', good[-1]['size'] / wall / 1e6,
            max(row['overlap'] for row in good), ', '.join('%.1f' % row['wall'] if 'error' not in row else 'failed'
                                                          for row in runs), good[-1]['note']))  # fmt: skip
    return '\n'.join(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--servers', type=int, default=10)
    parser.add_argument('--scale', type=int, default=6, help='pgbench scale of each cluster (6: ~100 MB)')
    parser.add_argument('--concurrency', default='0,1,2,4', help='barman_backup_concurrency values to run')
    parser.add_argument('--forks', type=int, default=10, help="Ansible's forks (ansible.cfg: 10)")
    parser.add_argument('--rounds', type=int, default=3, help='every row this many times (the machine is shared)')
    parser.add_argument('--no-results', action='store_true')
    args = parser.parse_args()
    servers = list(range(1, args.servers + 1))
    free = shutil.disk_usage('/var/tmp').free
    need = args.servers * args.scale * 16e6 * 4  # clusters, the limit's copy, two backups each
    if free < need * 2:
        sys.exit('not enough room in /var/tmp: %d MB free, about %d MB needed' % (free // 1e6, need // 1e6))
    os.makedirs(BASE, exist_ok=True)
    rows = []
    load_before = load()
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        for i in servers:
            make_cluster(i, args.scale)
        start_sshd(servers)
        inventory = write_inventory(servers)
        setup, _out = playbook(inventory, 'setup.yml')
        print('setup.yml over %d servers: %.0f s' % (len(servers), setup), flush=True)
        version = run(['psql', '-XAtq', '-h', SOCKET, '-p', str(port(1)), '-d', 'postgres',
                       '-c', 'SHOW server_version'], user='postgres').stdout.strip()  # fmt: skip
        plan = [('limit: %d x rsync -a over ssh + sync' % len(servers), lambda: limit(servers)),
                ('limit, one server', lambda: limit(servers[:1])),
                ('backup.yml, one server', lambda: backups(inventory, servers[:1], 0, args.forks))]  # fmt: skip
        for value in [int(v) for v in args.concurrency.split(',') if v.strip()]:
            label = 'backup.yml, %d servers, concurrency %s' % (len(servers), value or '0 (no limit)')
            plan.append((label, lambda value=value: backups(inventory, servers, value, args.forks)))
        for _round in range(args.rounds):
            for label, method in plan:
                try:
                    row = method()
                except Exception as error:  # one failed method does not hide the others' figures
                    row = dict(error=str(error))
                row['load'] = load()
                rows.append((label, row))
                print(label, row, flush=True)
    finally:
        cleanup(servers)
    text = '\n'.join([
        SECTION, '',
        '`bench/backup_many.py --servers %d --scale %d --forks %d --rounds %d` (%s UTC), %s; load average %s before,'
        ' %s after.'
        % (args.servers, args.scale, args.forks, args.rounds, started.strftime('%Y-%m-%d %H:%M'),
           results_md.machine(version, 'ssh on loopback'), load_before, load()),
        '', table(rows), '',
        '`wall s`, `x limit`: medians of the rounds (x limit: wall s / the N plain rsyncs of the same round);'
        ' `MB/s`: bytes copied / wall s; `most at once`: the most backups whose begin..end (backup.info) overlap;'
        ' the note (last round): copies = begin..end of each backup, modules = their `duration`. Full copies'
        ' (`reuse=off`), retention `REDUNDANCY 1`, forks %d.'
        % args.forks,
    ])  # fmt: skip
    print(text + '\n\n' + reading(rows))
    if not args.no_results:
        results_md.write_results(SECTION, text + '\n\n' + reading(rows) + '\n')
    return 0 if all('error' not in row for _label, row in rows) else 1


if __name__ == '__main__':
    sys.exit(main())
