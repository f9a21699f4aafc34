#!/usr/bin/env python3
"""WAL archiving: many clusters draining a backlog at once, and one segment with no backlog.

Run as root on the lab (tests/lab/lab up, playbooks/setup.yml done), from the checkout:

    .venv/bin/python bench/archive_many.py [--clusters 6] [--segments N] [--before DIR] [--rounds R]

Each code under test (this checkout; with --before, also another checkout, e.g. a clone of HEAD) is
installed into its own bench directory (/var/tmp/bench-many-lib-<label>, as setup.yml installs
runtime/ on hosts), so that both run side by side in one run whatever the lab hosts have. Each of
the C bench clusters has its own server name (c1..cC) in a bench catalog /var/tmp/bench-many-home,
its own key forced to that code's receiver, and its own stand-in PGDATA (pg_wal/ with the
segments hard-linked, archive_status/*.ready). Rows:

  alone       one cluster's archiver draining its backlog: one put per segment in order, .ready
              renamed .done after each success; no ControlMaster at the start (the backup server
              was away)
  C at once   C such archivers at once, one thread each: the aggregate segments per second
  one segment a quiet server: each segment alone made .ready then put (ControlMaster and, when
              the code keeps one, the agent up): the latency from .ready to durable

See bench/README.md; helpers come from archive_throughput.py.
"""

import argparse
import datetime
import gzip
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import archive_throughput as at  # noqa: E402  (bench/, beside this script; also sets sys.path)
import results as results_md  # noqa: E402

from ansible_collections.barman.postgresql.plugins.module_utils import ssh  # noqa: E402

TOP = at.TOP
KEYS_DIR = '/var/tmp/bench-many-keys'
HOME = '/var/tmp/bench-many-home'
PGDATA_ROOT = '/var/tmp/bench-many-pgdata'
LIB_PREFIX = '/var/tmp/bench-many-lib-'
SECTION = '## WAL archiving: many clusters and one segment'
KEY_TAG = at.KEY_TAG
PROFILE = None  # --perf FILE


def install(label, checkout):
    """runtime/ and plugins/module_utils/ of ``checkout`` into LIB_PREFIX+label, with the launchers
    setup.yml writes (roles/common/templates); returns that directory."""
    lib = LIB_PREFIX + label
    shutil.rmtree(lib, ignore_errors=True)
    tree = os.path.join(lib, 'ansible_collections', 'barman', 'postgresql')
    for sub in ('runtime', os.path.join('plugins', 'module_utils')):
        shutil.copytree(
            os.path.join(checkout, sub), os.path.join(tree, sub), ignore=shutil.ignore_patterns('__pycache__')
        )
    os.makedirs(os.path.join(lib, 'bin'))
    with open(os.path.join(checkout, 'roles', 'common', 'templates', 'launcher.py.j2')) as handle:
        launcher = handle.read().replace('{{ ansible_managed }}', 'bench')
    launcher = launcher.replace('{{ barman_lib_dir | string | to_json }}', '"%s"' % lib)
    for name, module in (('barman-wal-receiver', 'walreceiver'), ('barman-wal-sender.py', 'walsender')):
        at.write_file(os.path.join(lib, 'bin', name), launcher.replace('{{ item.module }}', module), 'root', 0o755)
    with open(os.path.join(checkout, 'roles', 'common', 'templates', 'wal-sender.sh.j2')) as handle:
        shell = handle.read().replace('{{ ansible_managed }}', 'bench')
    shell = shell.replace(
        "{{ (barman_lib_dir ~ '/bin/barman-wal-sender.py') | quote }}", lib + '/bin/barman-wal-sender.py'
    )
    at.write_file(os.path.join(lib, 'bin', 'barman-wal-sender'), shell, 'root', 0o755)
    at.run(['chmod', '-R', 'a+rX', lib])
    at.run(['/usr/bin/python3', '-m', 'compileall', '-q', os.path.join(lib, 'ansible_collections')])
    return lib


def cluster_key(label, server, lib):
    """A key of ``server`` forced to ``lib``'s receiver for the bench catalog (as trust_servers.yml does)."""
    path = os.path.join(KEYS_DIR, '%s-%s' % (label, server))
    for stale in (path, path + '.pub'):
        if os.path.exists(stale):
            os.unlink(stale)
    # A fresh spool too: the notes of a measure before (same names, same hard-linked files) would
    # answer this one's puts without sending anything.
    shutil.rmtree(path + '.spool', ignore_errors=True)
    at.run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', KEY_TAG, '-f', path], user='postgres')
    receiver = [os.path.join(lib, 'bin', 'barman-wal-receiver'), '--barman-home', HOME, '--server', server]
    at.add_authorized_key(ssh.authorized_keys_line(at.public_key(path), receiver + ['--compression', 'gzip'], KEY_TAG))
    return path


def catalog(server):
    root = os.path.join(HOME, server)
    shutil.rmtree(root, ignore_errors=True)
    at.make_dir(HOME, 'barman')
    for sub in ('', 'meta', 'base', 'wals', 'incoming', 'errors', 'streaming'):
        at.make_dir(os.path.join(root, sub), 'barman')
    identity = os.path.join(root, 'identity.json')
    shutil.copyfile(os.path.join(at.LAB_ARCHIVE, 'identity.json'), identity)
    os.chown(identity, pwd.getpwnam('barman').pw_uid, pwd.getpwnam('barman').pw_gid)
    os.chmod(identity, 0o600)
    return root


def pgdata(server, segments, ready=True):
    """A stand-in PGDATA of ``server``: pg_wal/ with the segments hard-linked (.ready if ``ready``)."""
    data = os.path.join(PGDATA_ROOT, server)
    shutil.rmtree(data, ignore_errors=True)
    status = os.path.join(data, 'pg_wal', 'archive_status')
    for path in (PGDATA_ROOT, data, os.path.dirname(status), status):
        at.make_dir(path, 'postgres')
    for segment in segments:
        os.link(segment, os.path.join(data, 'pg_wal', os.path.basename(segment)))
        if ready:
            at.write_file(os.path.join(status, os.path.basename(segment) + '.ready'), '', 'postgres', 0o600)
    return data


def sender(lib, key, command):
    return [
        os.path.join(lib, 'bin', 'barman-wal-sender'),
        '--ssh',
        'barman@' + at.BACKUP_HOST,
        '--identity-file',
        key,
        '--known-hosts',
        at.KNOWN_HOSTS,
    ] + command


def stop_sender(key):
    """End what a key left running: its ControlMaster, and an agent waiting for files (if any)."""
    at.run(at.ssh_base(key, key + '.cm-%C') + ['-O', 'exit', 'barman@' + at.BACKUP_HOST], user='postgres', check=False)
    lock = os.path.join(key + '.spool', 'agent.lock')
    if os.path.exists(lock):
        at.run(['fuser', '-k', '-TERM', lock], check=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and os.path.exists(lock):
        if at.run(['fuser', lock], check=False).returncode != 0:
            break
        time.sleep(0.1)


def archiver(lib, key, data, names, times, errors):
    """PostgreSQL's archiver: one put per ready segment, in order; .ready -> .done after each success."""
    status = os.path.join(data, 'pg_wal', 'archive_status')
    try:
        for name in names:
            began = time.perf_counter()
            at.run(sender(lib, key, ['put', 'pg_wal/' + name]), user='postgres', cwd=data)
            times.append(time.perf_counter() - began)
            os.rename(os.path.join(status, name + '.ready'), os.path.join(status, name + '.done'))
    except Exception as error:  # reported by the caller
        errors.append(error)


def check_stored(server, segments):
    """Every segment in wals/ (compressed by the background processing), equal to what was sent."""
    root = os.path.join(HOME, server)
    names = set(os.path.basename(s) for s in segments)
    at.wait_processed(root, names, time.perf_counter())
    for segment in segments:
        name = os.path.basename(segment)
        with open(segment, 'rb') as handle:
            sent = hashlib.sha256(handle.read()).hexdigest()
        with gzip.open(os.path.join(root, 'wals', name[:16], name), 'rb') as handle:
            if hashlib.sha256(handle.read()).hexdigest() != sent:
                raise at.MethodFailed('%s of %s in wals/ differs from the segment sent' % (name, server))


def drain(lib, label, servers, segments):
    """``servers`` archivers at once, each draining its own backlog of ``segments``, no ControlMaster
    up at the start. Returns (aggregate seg/s, wall s, per-put median s)."""
    keys = {}
    for server in servers:
        catalog(server)
        keys[server] = cluster_key(label, server, lib)
    datas = {server: pgdata(server, segments) for server in servers}
    names = [os.path.basename(s) for s in segments]
    at.drop_caches_of_writes()
    times = {server: [] for server in servers}
    errors = []
    threads = [
        threading.Thread(target=archiver, args=(lib, keys[s], datas[s], names, times[s], errors)) for s in servers
    ]
    profiler = None
    if PROFILE and len(servers) > 1:  # --perf: where the CPU goes while the clusters drain
        profiler = subprocess.Popen(['perf', 'record', '-q', '-a', '-g', '-F', '499', '-o', PROFILE + '-' + label])
        time.sleep(1)
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if profiler:
        profiler.send_signal(signal.SIGINT)
        profiler.wait()
    try:
        if errors:
            raise at.MethodFailed('%s: %s' % (type(errors[0]).__name__, errors[0]))
        for server in servers:
            check_stored(server, segments)
    finally:
        for server in servers:
            stop_sender(keys[server])
            shutil.rmtree(datas[server], ignore_errors=True)
            shutil.rmtree(os.path.join(HOME, server), ignore_errors=True)
    every = [t for server in servers for t in times[server]]
    return len(every) / wall, wall, statistics.median(every)


def one_segment(lib, label, segments):
    """A quiet server: each segment alone made ready, then put; the first one warms up (ControlMaster,
    agent if any) and is not counted. Returns the per-segment latencies (s)."""
    server = 'q1'
    catalog(server)
    key = cluster_key(label, server, lib)
    data = pgdata(server, segments, ready=False)
    status = os.path.join(data, 'pg_wal', 'archive_status')
    at.drop_caches_of_writes()
    times = []
    try:
        for index, segment in enumerate(segments):
            name = os.path.basename(segment)
            at.write_file(os.path.join(status, name + '.ready'), '', 'postgres', 0o600)
            began = time.perf_counter()
            at.run(sender(lib, key, ['put', 'pg_wal/' + name]), user='postgres', cwd=data)
            if index:
                times.append(time.perf_counter() - began)
            os.rename(os.path.join(status, name + '.ready'), os.path.join(status, name + '.done'))
            time.sleep(0.3)  # a quiet server: nothing else waits, the background compression ends
        check_stored(server, segments)
    finally:
        stop_sender(key)
        shutil.rmtree(data, ignore_errors=True)
        shutil.rmtree(os.path.join(HOME, server), ignore_errors=True)
    return times


def cp_limit(segments):
    """cp + sync of each segment, in sequence (archive_throughput's limit)."""
    times = at.method_cp(segments)['times']
    shutil.rmtree(at.CP_DIR, ignore_errors=True)
    return len(times) / sum(times)


def cleanup():
    if os.path.isdir(KEYS_DIR):
        for entry in os.listdir(KEYS_DIR):
            if not entry.endswith(('.pub', '.spool')) and '.cm-' not in entry:
                stop_sender(os.path.join(KEYS_DIR, entry))
    at.remove_bench_keys()
    for path in [KEYS_DIR, HOME, PGDATA_ROOT, at.SEGMENTS_DIR, at.CP_DIR]:
        shutil.rmtree(path, ignore_errors=True)
    for entry in os.listdir(os.path.dirname(LIB_PREFIX)):
        if os.path.join(os.path.dirname(LIB_PREFIX), entry).startswith(LIB_PREFIX):
            shutil.rmtree(os.path.join(os.path.dirname(LIB_PREFIX), entry), ignore_errors=True)


def spread(values, fmt='%.1f'):
    if len(values) == 1:
        return fmt % values[0]
    return '%s (%s)' % (fmt % statistics.median(values), ', '.join(fmt % v for v in values))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--clusters', type=int, default=6, help='how many clusters at once (default 6)')
    parser.add_argument('--segments', type=int, default=40, help='segments of backlog per cluster (default 40)')
    parser.add_argument('--quiet-segments', type=int, default=12, help='segments put one at a time (default 12)')
    parser.add_argument('--before', help='a checkout to measure beside this one (e.g. a clone of HEAD)')
    parser.add_argument('--rounds', type=int, default=1, help='repeat every measure this many times')
    parser.add_argument(
        '--perf', metavar='FILE', help='perf record (-a -g) each drain of many clusters into FILE-<code>'
    )
    parser.add_argument('--only', choices=('alone', 'many', 'quiet'), help='run only this measure')
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and barman)')
    global PROFILE  # noqa: PLW0603
    PROFILE = args.perf
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    codes = ([('before', args.before)] if args.before else []) + [('after', TOP)]
    figures = {}  # (label, what) -> [values]
    failures = []
    try:
        cleanup()
        at.make_dir(KEYS_DIR, 'postgres')
        names = at.generate_wal(args.segments)
        segments = at.extract_segments(names)
        libs = {label: install(label, checkout) for label, checkout in codes}
        servers = ['c%d' % (i + 1) for i in range(args.clusters)]
        for round_ in range(args.rounds):
            figures.setdefault(('limit', 'cp'), []).append(cp_limit(segments))
            for label, _checkout in codes:
                for what, run_it in (
                    ('alone', lambda label=label: drain(libs[label], label, servers[:1], segments)),
                    ('many', lambda label=label: drain(libs[label], label, servers, segments)),
                    (
                        'quiet',
                        lambda label=label: one_segment(libs[label], label, segments[: args.quiet_segments + 1]),
                    ),
                ):
                    if args.only and what != args.only:
                        continue
                    at.wait_for_sshd()
                    print('round %d: %s, %s ...' % (round_ + 1, label, what), flush=True)
                    try:
                        value = run_it()
                    except Exception as error:
                        failures.append((label, what, '%s: %s' % (type(error).__name__, error)))
                        print('  FAILED: %s' % error, flush=True)
                        continue
                    if what == 'quiet':
                        figures.setdefault((label, what), []).append(statistics.median(value))
                        figures.setdefault((label, 'quiet-all'), []).extend(value)
                        print('  median %.3f s' % statistics.median(value), flush=True)
                    else:
                        figures.setdefault((label, what), []).append(value[0])
                        print('  %.1f seg/s (wall %.2f s, median put %.3f s)' % value, flush=True)
    finally:
        cleanup()
    text = report(args, codes, figures, failures, started, load_before)
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 1 if failures else 0


def report(args, codes, figures, failures, started, load_before):
    lines = [
        SECTION,
        '',
        'Run %s on %s; %d clusters, each with its own backlog of %d real 16 MB segments of pg1, %d round(s); '
        'load average (1 min) %.1f before, %.1f after. `.venv/bin/python bench/archive_many.py --clusters %d '
        '--segments %d --rounds %d%s`. Several values: the median, then each round.'
        % (
            started.strftime('%Y-%m-%d %H:%M %Z'),
            at.machine(),
            args.clusters,
            args.segments,
            args.rounds,
            load_before,
            os.getloadavg()[0],
            args.clusters,
            args.segments,
            args.rounds,
            ' --before %s' % args.before if args.before else '',
        ),
        '',
        '| code | one cluster alone, seg/s | %d at once, seg/s in all | %d at once / alone | one segment, '
        '.ready to durable, s (median) |' % (args.clusters, args.clusters),
        '|---|---|---|---|---|',
    ]
    for label, _checkout in codes:
        alone = figures.get((label, 'alone'), [])
        many = figures.get((label, 'many'), [])
        quiet = figures.get((label, 'quiet'), [])
        ratio = statistics.median(many) / statistics.median(alone) if alone and many else None
        lines.append(
            '| %s | %s | %s | %s | %s |'
            % (
                'HEAD (before)' if label == 'before' else 'this checkout (after)',
                spread(alone) if alone else 'failed',
                spread(many) if many else 'failed',
                '%.2f' % ratio if ratio else '-',
                spread(quiet, '%.3f') if quiet else 'failed',
            )
        )
    lines.append(
        '| `cp` + `sync` of each segment in sequence (limit, one disk) | %s | | | |'
        % spread(figures.get(('limit', 'cp'), [0]))
    )
    lines.append('')
    for label, _checkout in codes:
        alone = figures.get((label, 'alone'), [])
        many = figures.get((label, 'many'), [])
        quiet = figures.get((label, 'quiet-all'), [])
        who = 'HEAD' if label == 'before' else 'This checkout'
        if alone and many:
            ratio = statistics.median(many) / statistics.median(alone)
            lines.append(
                '- %s, goal "%d clusters at once drain at least what one alone does": %s (%.2fx).'
                % (who, args.clusters, 'met' if ratio >= 1.0 else 'not met', ratio)
            )
        if quiet:
            latency = statistics.median(quiet)
            lines.append(
                '- %s, one segment on a quiet server: %.3f s from `.ready` to durable (median of %d; '
                'slowest %.3f s), so with `archive_timeout = 60s` the RPO is about 60 + %.2f s.'
                % (who, latency, len(quiet), max(quiet), latency)
            )
    for label, what, error in failures:
        lines.append('')
        lines.append('Failed: %s, %s: %s' % (label, what, error.replace('\n', ' ')[:400]))
    return '\n'.join(lines) + '\n'


if __name__ == '__main__':
    sys.exit(main())
