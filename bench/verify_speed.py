#!/usr/bin/env python3
"""Verification speed: ours (pg_backup_verify, verify.yml), the plain tools (the limit) and pgBackRest 2.45 verify.

Run as root on the lab (tests/lab/lab up, playbooks/setup.yml done), from the checkout:

    .venv/bin/python bench/verify_speed.py [--rounds N] [--reuse-backup] [--skip-ansible] [--skip-peers]
                                           [--no-results]

Data: the database bench_backup of pg1 (pgbench scale 60, ~1 GB, made once by backup_speed.py's ensure_data
and kept). Backups: pgBackRest takes its own as restore_speed.py does (local repository, its WAL pushed from
the lab archive), then ours is taken with backup.take_backup (reuse=link, so with a backup_manifest) in
/var/lib/barman (--reuse-backup: the newest DONE one that holds bench_backup and has a manifest). Then N
rounds of:

  limit              as barman, one after the other: pg_verifybackup --no-parse-wal --ignore=pg_tblspc on
                     base/<id>/data (step 1); cp -a of the data directory and tablespaces into a scratch
                     directory, the backup's WAL into its pg_wal, pg_ctl start -w, stop (step 2);
                     pg_checksums --check, pg_ctl start -w, pg_amcheck --all, stop (step 3)
  ours, verify()     verify.verify() as barman, as the module calls it, each step timed around its method
  ours, verify.yml   ansible-playbook playbooks/verify.yml -e servers=pg1 -e backup_id=<id>
  pgBackRest 2.45    pgbackrest verify of its repository (what it has: checksums of backup files and WAL)

Barman 3.19.1 is not measured: it has no restore test, and its verify-backup runs pg_verifybackup on the
backup_manifest that only its backup_method = postgres backups have (the limit's step 1 is that command).

Everything temporary is under /var/tmp/bench-verify-* (the playbook's copy under /var/lib/barman/.verify,
removed by the module); every cluster started is stopped and those directories deleted in a finally. Left
behind on purpose: our backup in the lab catalog and its meta/<id>-verification.json (PASSED), and the
database bench_backup. See bench/README.md and bench/RESULTS.md.
"""

import argparse
import datetime
import glob
import json
import os
import shutil
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_speed as bs  # noqa: E402  (run as a user, psql, waiting for the lab, the data set)
import restore_speed as rs  # noqa: E402  (our backup, pgBackRest's backup, warming, WAL from the lab archive)
import results as results_md  # noqa: E402
from backup_speed import COLLECTIONS, PG1_PORT, TOP, MethodFailed, make_dir, psql, run, write_file  # noqa: E402

from ansible_collections.barman.postgresql.plugins.module_utils import verify  # noqa: E402

LAB_HOME = rs.LAB_HOME
LAB_PG1 = rs.LAB_PG1
PG_BIN = rs.PG_BIN
BASE = '/var/tmp/bench-verify-'
LIMIT_DIR = BASE + 'limit'  # the limit's scratch directory (owned by barman)
# The module's scratch directory, in the home of the user that runs copies (a directory per run in it); the
# copy runs there as that user, over SSH to backup1's own address, as verify.yml runs it.
VERIFY_USER = 'barman-verify'
OURS_DIR = '/var/lib/barman-verify/copies/bench-ours'
BACKUP1 = '127.0.0.21'
PGBR_DIR = BASE + 'pgbackrest'  # pgBackRest's repository (owned by postgres)
LIMIT_PORT = 6488
OURS_PORT = 6489

SECTION = '## Verification (verify.yml)'
LIMIT = 'limit: pg_verifybackup; cp -a + pg_ctl start/stop; pg_checksums + pg_amcheck'
OURS = 'ours, verify.verify() (the module, no Ansible)'
PLAYBOOK = 'ours, playbooks/verify.yml'
PGBR = 'pgBackRest 2.45 verify (local repo)'
STEPS = ('step1', 'step2', 'step3', 'total')


# --------------------------------------------------------------------------- helpers


def backup_info(backup_id):
    return rs.read_info(os.path.join(LAB_PG1, 'meta', '%s-backup.info' % backup_id))


def backup_dir(backup_id):
    return os.path.join(LAB_PG1, 'base', backup_id)


def has_manifest(backup_id):
    return os.path.exists(os.path.join(backup_dir(backup_id), 'data', 'backup_manifest'))


def our_backup(oid, reuse_existing):
    """restore_speed.py's backup (in the lab catalog, reuse=link); a reused one must have a manifest."""
    backup_id, how = rs.our_backup(oid, reuse_existing)
    if not has_manifest(backup_id):
        print('backup %s has no backup_manifest (taken before manifests): taking a new one' % backup_id, flush=True)
        backup_id, how = rs.our_backup(oid, False)
    return backup_id, how


def timed(argv, user='barman'):
    """Seconds that argv takes (as ``user``); MethodFailed when it fails."""
    start = time.perf_counter()
    run(argv, user=user)
    return time.perf_counter() - start


def fmt(value):
    return '%.2f' % value if value is not None else '-'


# --------------------------------------------------------------------------- the limit


def limit_start(data, scratch):
    """pg_ctl start -w of the limit's copy as barman (its socket only, the module's settings); seconds to a
    server that answers a query."""
    options = ['-c port=%d' % LIMIT_PORT, '-c listen_addresses=', '-c unix_socket_directories=' + scratch]
    options += ['-c archive_mode=off', '-c hba_file=' + os.path.join(scratch, verify.HBA_FILE)]
    options += ['-c %s=%s' % item for item in sorted(verify.COPY_SETTINGS.items())]
    argv = [PG_BIN + '/pg_ctl', 'start', '-D', data, '-l', data + '.log', '-w', '-t', '600', '-s']
    start = time.perf_counter()
    proc = run(argv + ['-o', ' '.join(options)], user='barman', check=False)
    if proc.returncode != 0:
        raise MethodFailed('pg_ctl start of the limit copy failed: %s' % rs.tail(data + '.log'))
    query = ['psql', '-XAt', '-h', scratch, '-p', str(LIMIT_PORT), '-U', 'postgres', '-d', 'postgres']
    answer = run(query + ['-c', 'SELECT pg_is_in_recovery()'], user='barman').stdout.decode().strip()
    if answer != 'f':
        raise MethodFailed('the limit copy answered pg_is_in_recovery() = %r' % answer)
    return time.perf_counter() - start


def limit_stop(data):
    return timed([PG_BIN + '/pg_ctl', 'stop', '-D', data, '-m', 'fast', '-w', '-s'])


def method_limit(backup_id):
    """The plain tools in the order of our steps, as barman, on the same backup."""
    info = backup_info(backup_id)
    source = backup_dir(backup_id)
    shutil.rmtree(LIMIT_DIR, ignore_errors=True)
    make_dir(LIMIT_DIR, 'barman')
    data = os.path.join(LIMIT_DIR, 'data')
    rs.warm(source)
    parts = {}
    # step 1: the files against the manifest (tablespaces ignored: pg_tblspc/<oid> links to the original)
    parts['pg_verifybackup'] = timed(
        [PG_BIN + '/pg_verifybackup', '--no-parse-wal', '--ignore=pg_tblspc', os.path.join(source, 'data')]
    )
    # step 2: the copy, its tablespaces beside it (the backup's links point at pg1's live tablespace), the
    # WAL from the backup's begin to its end into pg_wal (crash recovery from backup_label needs no more)
    start = time.perf_counter()
    run(['cp', '-a', os.path.join(source, 'data'), data], user='barman')
    oids = sorted(name for name in os.listdir(source) if name.isdigit())
    for oid in oids:
        run(['cp', '-a', os.path.join(source, oid), os.path.join(LIMIT_DIR, 'tblspc-' + oid)], user='barman')
        link = os.path.join(data, 'pg_tblspc', oid)
        os.unlink(link)
        os.symlink(os.path.join(LIMIT_DIR, 'tblspc-' + oid), link)
    if oids:
        text = ''.join('%s %s\n' % (oid, os.path.join(LIMIT_DIR, 'tblspc-' + oid)) for oid in oids)
        write_file(os.path.join(data, 'tablespace_map'), text, 'barman')
    write_file(os.path.join(LIMIT_DIR, verify.HBA_FILE), verify.HBA_TEXT, 'barman')
    parts['cp -a'] = time.perf_counter() - start
    start = time.perf_counter()
    staged = rs.decompressed_segments(info['begin_wal'], info['end_wal'], os.path.join(data, 'pg_wal'), 'barman')
    parts['WAL into pg_wal'] = time.perf_counter() - start
    parts['pg_ctl start -w'] = limit_start(data, LIMIT_DIR)
    parts['stop'] = limit_stop(data)
    # step 3: checksums of the stopped copy, then started again for pg_amcheck
    parts['pg_checksums --check'] = timed([PG_BIN + '/pg_checksums', '--check', '-D', data])
    parts['start again'] = limit_start(data, LIMIT_DIR)
    parts['pg_amcheck --all'] = timed(
        [PG_BIN + '/pg_amcheck', '--all', '--install-missing', '-h', LIMIT_DIR, '-p', str(LIMIT_PORT), '-U', 'postgres']
    )
    parts['stop again'] = limit_stop(data)
    start = time.perf_counter()
    shutil.rmtree(LIMIT_DIR)
    parts['rm -rf'] = time.perf_counter() - start
    step1 = parts['pg_verifybackup']
    step2 = sum(parts[k] for k in ('cp -a', 'WAL into pg_wal', 'pg_ctl start -w', 'stop'))
    step3 = sum(parts[k] for k in ('pg_checksums --check', 'start again', 'pg_amcheck --all', 'stop again'))
    return {
        'step1': step1,
        'step2': step2,
        'step3': step3,
        'total': sum(parts.values()),
        'note': '%s; %d WAL files'
        % (', '.join('%s %.2f s' % (name, seconds) for name, seconds in parts.items()), len(staged)),
    }


# --------------------------------------------------------------------------- ours


OUR_VERIFY_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import recovery, verify, verifyfile
spec = verify.module_spec()['argument_spec']
params = dict((key, option.get('default')) for key, option in spec.items())
params.update(json.loads(sys.argv[2]))
calls = []  # [name, seconds] as each timed call ends (a call made inside another ends before it)


def timed(name, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            calls.append([name, time.perf_counter() - start])
    return wrapper


for name in ('check_host', 'check_files', 'check_wal', 'restore', 'start', 'stop', 'check_checksums',
             'name_relations', 'check_amcheck', 'check_queries', 'remove_scratch'):
    setattr(verify.Verification, name, timed(name, getattr(verify.Verification, name)))
recovery.recover = timed('recover', recovery.recover)
verifyfile.write_verification = timed('record', verifyfile.write_verification)
start = time.perf_counter()
result = verify.verify(params)
result['elapsed'] = time.perf_counter() - start
result['calls'] = calls
print(json.dumps(result, default=str))
"""


def our_steps(calls):
    """{step: seconds} and the named pieces, from the calls in the order they ended: step 1 the files and
    WAL; step 2 restore() (recover() and the first start inside it) and the stop after it; step 3 the
    checksums, the second start, pg_amcheck, the queries and the last stop; cleanup the removal and record."""
    steps = dict(step1=0.0, step2=0.0, step3=0.0, cleanup=0.0)
    pieces = []
    restored = checked = False
    for name, seconds in calls:
        if name in ('check_files', 'check_wal'):
            steps['step1'] += seconds
        elif name in ('recover', 'start') and not restored:
            pieces.append(('recover()' if name == 'recover' else 'start', seconds))
            continue  # inside restore(), counted with it
        elif name == 'restore':
            restored = True
            steps['step2'] += seconds
            name = 'restore() in all'
        elif name == 'stop' and restored and not checked:
            steps['step2'] += seconds
        elif name in ('check_checksums', 'start', 'name_relations', 'check_amcheck', 'check_queries', 'stop'):
            checked = checked or name == 'check_checksums'
            steps['step3'] += seconds
        elif name in ('remove_scratch', 'record'):
            steps['cleanup'] += seconds
        pieces.append((name, seconds))
    return steps, pieces


def method_ours(backup_id):
    make_dir(OURS_DIR, VERIFY_USER)
    params = dict(
        server='pg1',
        barman_home=LAB_HOME,
        backup_id=backup_id,
        host=BACKUP1,
        user=VERIFY_USER,
        directory=OURS_DIR,
        port=OURS_PORT,
        original_port=PG1_PORT,
    )
    rs.warm(backup_dir(backup_id))
    argv = ['/usr/bin/python3', '-c', OUR_VERIFY_CHILD, COLLECTIONS, json.dumps(params)]
    start = time.perf_counter()
    out = run(argv, user='barman')
    total = time.perf_counter() - start
    result = json.loads(out.stdout.decode().strip().splitlines()[-1])
    if result.get('result') != 'PASSED':
        raise MethodFailed('verification %s: %s' % (result.get('result'), result.get('failures') or result))
    steps, pieces = our_steps(result['calls'])
    other = result['elapsed'] - sum(steps.values())
    return dict(
        step1=steps['step1'],
        step2=steps['step2'],
        step3=steps['step3'],
        total=total,
        note='Python start %.2f s, verify() %.2f s (its duration %.2f s): %s; lock, catalog and other %.2f s'
        % (
            total - result['elapsed'],
            result['elapsed'],
            result['duration'],
            ', '.join('%s %.2f s' % piece for piece in pieces),
            other,
        ),
    )


def method_playbook(backup_id):
    rs.warm(backup_dir(backup_id))
    extra = {'servers': 'pg1', 'backup_id': backup_id}
    argv = [os.path.join(TOP, '.venv', 'bin', 'ansible-playbook'), 'playbooks/verify.yml', '-e', json.dumps(extra)]
    env = {'ANSIBLE_CONFIG': os.path.join(TOP, 'ansible.cfg')}
    started = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    start = time.perf_counter()
    proc = run(argv, env=env, cwd=TOP, check=False)
    total = time.perf_counter() - start
    if proc.returncode != 0:
        raise MethodFailed('verify.yml exited %d: %s' % (proc.returncode, proc.stdout.decode()[-1200:]))
    with open(os.path.join(LAB_PG1, 'meta', '%s-verification.json' % backup_id)) as handle:
        record = json.load(handle)
    verified = datetime.datetime.strptime(record['verified_at'], '%Y-%m-%dT%H:%M:%SZ')
    if record['result'] != 'PASSED' or verified.replace(tzinfo=datetime.timezone.utc) < started:
        raise MethodFailed('no new PASSED record after verify.yml: %s' % record)
    restore = [s['detail'] for s in record['steps'] if s['name'] == 'restore']
    return dict(
        total=total,
        note='module %.2f s (its duration), Ansible and the rest %.2f s; %s'
        % (record['duration'], total - record['duration'], (restore or ['?'])[0]),
    )


# --------------------------------------------------------------------------- pgBackRest 2.45


def method_pgbackrest(p):
    rs.warm(p['path'])
    argv = ['pgbackrest', '--config=' + p['config'], '--stanza=pg1', '--output=text', '--verbose', 'verify']
    start = time.perf_counter()
    out = run(argv, user='postgres').stdout.decode()
    seconds = time.perf_counter() - start
    return dict(step1=seconds, note='set %s; %s' % (p['label'], ' '.join(out.split())[:300]))


# --------------------------------------------------------------------------- report


def stop_all():
    """Stop every cluster left running under /var/tmp/bench-verify-* (barman's) and OURS_DIR (the copies')."""
    for pattern, owner in ((BASE + '*/**/postmaster.pid', 'barman'), (OURS_DIR + '/**/postmaster.pid', VERIFY_USER)):
        for pid_file in glob.glob(pattern, recursive=True):
            data = os.path.dirname(pid_file)
            run([PG_BIN + '/pg_ctl', 'stop', '-D', data, '-m', 'immediate', '-w', '-s'], user=owner, check=False)


def measure(results, name, function):
    print('%s ...' % name, flush=True)
    try:
        row = bs.retried(function, tries=2)
        print('  ' + ', '.join('%s %s' % (key, fmt(row.get(key))) for key in STEPS), flush=True)
    except Exception as error:  # a failed method is reported, the others still run
        row = {'error': '%s: %s' % (type(error).__name__, error)}
        print('  FAILED: %s' % error, flush=True)
    finally:
        stop_all()
        shutil.rmtree(LIMIT_DIR, ignore_errors=True)
    results.setdefault(name, []).append(row)


def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def paired(results, name, key):
    """Per round: (seconds, seconds / the limit's of the same round) of ``key``; None ratio if either failed."""
    pairs = []
    for row, limit_row in zip(results.get(name, []), results.get(LIMIT, [])):
        if row.get(key) is not None:
            pairs.append((row[key], row[key] / limit_row[key] if limit_row.get(key) else None))
    return pairs


def round_ratio(results, name, key):
    """The median of the rounds' ratios to the limit (the methods of a round run back to back)."""
    ratios = [ratio for _seconds, ratio in paired(results, name, key) if ratio is not None]
    return (statistics.median(ratios), ratios) if ratios else (None, [])


def table(results):
    lines = [
        '| method | step 1: files + WAL, s | x limit | step 2: restore, start, stop, s | x limit | step 3: checks, s '
        '| x limit | total, wall s | x limit | runs: total (or step 1) s (x limit of the round) | note (last run) |',
        '|---|---|---|---|---|---|---|---|---|---|---|',
    ]
    for name, rows in results.items():
        good = [r for r in rows if 'error' not in r]
        errors = [r['error'] for r in rows if 'error' in r]
        if not good:
            error = ' '.join(errors[-1].split()).replace('|', '/')[:400]
            lines.append('| %s | failed | | | | | | | | %d | %s |' % (name, len(rows), error))
            continue
        cells = []
        for key in STEPS:
            value = median(good, key)
            ratio, _ratios = round_ratio(results, name, key)
            cells += [fmt(value), fmt(ratio)]
        note = good[-1].get('note', '') + ('; %d failed: %s' % (len(errors), errors[-1][:200]) if errors else '')
        main_key = 'total' if any(r.get('total') is not None for r in good) else 'step1'
        runs = ', '.join('%s (%sx)' % (fmt(sec), fmt(ratio)) for sec, ratio in paired(results, name, main_key))
        lines.append(
            '| %s | %s | %s | %s |' % (name, ' | '.join(cells), runs, ' '.join(note.split()).replace('|', '/'))
        )
    return '\n'.join(lines)


def ratios_text(results):
    """Ours / the limit, step by step and in all (the median of the rounds' ratios, and each round's)."""
    lines = []
    for name, key, what in (
        (OURS, 'total', 'ours (verify(), with its Python start) / the plain tools in sequence, whole verification'),
        (OURS, 'step1', 'step 1, files + WAL (pg_verifybackup, our manifest reader, WAL presence) / pg_verifybackup'),
        (OURS, 'step2', 'step 2, recover() + start + stop / cp -a + WAL into pg_wal + pg_ctl start -w + stop'),
        (OURS, 'step3', 'step 3, pg_checksums + start + pg_amcheck + stop, ours / the same commands by hand'),
        (PLAYBOOK, 'total', 'verify.yml (ansible-playbook, wall) / the plain tools in sequence'),
        (PGBR, 'step1', 'pgBackRest verify / pg_verifybackup (both: checksums of every file of the backup)'),
    ):
        ratio, ratios = round_ratio(results, name, key)
        if ratio is not None:
            lines.append(
                '- %s: **%.2fx** (rounds %s)' % (what, ratio, ', '.join('%.2fx' % r for r in ratios)),
            )
    return '\n'.join(lines)


def cleanup():
    stop_all()
    for path in glob.glob(BASE + '*') + [OURS_DIR]:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=3, help='rounds of every method (medians reported)')
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    parser.add_argument('--reuse-backup', action='store_true', help='reuse the newest DONE backup of pg1')
    parser.add_argument('--skip-ansible', action='store_true', help='no run through verify.yml')
    parser.add_argument('--skip-peers', action='store_true', help='no pgBackRest')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and barman)')
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    results, setup_notes = {}, []
    try:
        cleanup()
        bs.wait_until(bs.lab_ready, 120, 'sshd and PostgreSQL on pg1')
        bs.ensure_data()
        oid = psql("SELECT oid FROM pg_database WHERE datname = '%s'" % bs.DATABASE)  # noqa: S608
        pgbr = None
        if not args.skip_peers:
            print('pgBackRest backup ...', flush=True)
            rs.PGBR_DIR = PGBR_DIR
            try:
                pgbr = rs.pgbackrest_backup()
                setup_notes.append('pgBackRest %s (%.0f MB)' % (pgbr['label'], rs.du(pgbr['path']) / 1e6))
            except Exception as error:
                setup_notes.append('pgBackRest: backup failed: %s' % error)
                print('  FAILED: %s' % error, flush=True)
        backup_id, how = our_backup(oid, args.reuse_backup)
        info = backup_info(backup_id)
        copy_stats = info.get('copy_stats', '')
        setup_notes.insert(
            0,
            'ours %s (%s; data directory %.0f MB, WAL %s..%s; copy_stats %s)'
            % (backup_id, how, rs.du(backup_dir(backup_id)) / 1e6, info['begin_wal'], info['end_wal'], copy_stats),
        )
        for round_number in range(1, args.rounds + 1):
            print('round %d' % round_number, flush=True)
            measure(results, LIMIT, lambda: method_limit(backup_id))
            measure(results, OURS, lambda: method_ours(backup_id))
            if not args.skip_ansible:
                measure(results, PLAYBOOK, lambda: method_playbook(backup_id))
            if pgbr:
                measure(results, PGBR, lambda: method_pgbackrest(pgbr))
    finally:
        cleanup()
    command = '`.venv/bin/python bench/verify_speed.py --rounds %d%s`' % (
        args.rounds,
        ''.join(
            ' --' + o for o in ('reuse-backup', 'skip-ansible', 'skip-peers') if getattr(args, o.replace('-', '_'))
        ),
    )
    text = '\n'.join([
        SECTION,
        '',
        'Run %s on %s; %d rounds, medians; load average (1 min) %.1f before, %.1f after. %s.'
        % (started.strftime('%Y-%m-%d %H:%M %Z'), bs.machine(), args.rounds, load_before, os.getloadavg()[0],
           command),
        '',
        'Backups of the same data (bench_backup, pgbench scale 60): ' + '; '.join(setup_notes) + '.',
        '',
        table(results),
        '',
        'Ours / the limit (median of the rounds\' ratios; the methods of a round run back to back):',
        '',
        ratios_text(results),
        '',
        'Steps: 1 = the backup\'s files against its backup_manifest and its WAL in the archive; 2 = the backup '
        'recovered into a scratch directory on the backup server and started (to a server that answers, '
        'recovery ended), then stopped; 3 = pg_checksums --check of the stopped copy, started again, '
        'pg_amcheck --all (no queries given). Ours: the module\'s methods timed around each call (see the note); '
        'its total is the wall time of the child process (Python start included), so it also holds the lock, '
        'the catalog, the check of the host, the removal of the copy and the record. The limit: the same '
        'commands by hand as barman, with nothing around them: pg_verifybackup for step 1 (the WAL is not '
        'looked for), `cp -a` and the backup\'s WAL straight into pg_wal (crash recovery from backup_label, no '
        'recovery.signal) for step 2, the same pg_checksums and pg_amcheck for step 3. Before each method '
        'its source is read once (page cache) and a global `sync` runs.',
    ]) + '\n'  # fmt: skip
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 1 if any('error' in r for rows in results.values() for r in rows) else 0


if __name__ == '__main__':
    sys.exit(main())
