#!/usr/bin/env python3
"""PITR replay: time to a usable server with ~0.5 GB of archived WAL to replay, by restore_command.

Run as root on the lab (tests/lab/lab up, playbooks/setup.yml done with this checkout), from the checkout:

    .venv/bin/python bench/replay_speed.py [--rounds N] [--segments N] [--no-results]

Data: a new backup of pg1 (backup.take_backup, reuse=link, as restore_speed.py takes it), then a
table filled until SEGMENTS segments of WAL were written, a restore point, a WAL switch; pg1 archives
it all into the lab catalog. Every method restores the same backup with recovery.recover() (get_wal,
target_name = that restore point, promote) to 127.0.0.11 and differs only in restore_command:

  limit              cp from a local directory holding the decompressed segments
  limit, compressed  gzip -dc from a local directory holding the segments as the lab archive stores them
                     (gzip): what any restore from a compressed archive must at least spend inflating
  ours, before       barman-wal-sender get --no-look-ahead (one fetch over SSH per segment)
  ours, after        barman-wal-sender get (the look-ahead spool, runtime/walfetch.py)
  Barman 3.19.1      barman-wal-restore -p (see the README: not set up here, reported as failed)
  pgBackRest 2.45    archive-get with archive-async=y from a local repository holding the segments

Times: recover() (the same files for all), then pg_ctl start until pg_is_in_recovery() is false
(replay, promotion, a query answered). Ratios are to the limit of the same round.
"""

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_speed as bs  # noqa: E402
import restore_speed as rs  # noqa: E402  (backup, recover() child, start_and_wait, decompressed_segments)
import results as results_md  # noqa: E402
from backup_speed import COLLECTIONS, MethodFailed, make_dir, psql, run  # noqa: E402

from ansible_collections.barman.postgresql.plugins.module_utils import ssh, wal  # noqa: E402

BASE = '/var/tmp/bench-replay-'
WAL_DIR = BASE + 'wal'  # the decompressed segments (the limit's restore_command reads them)
STORED_DIR = BASE + 'stored'  # the same segments as the lab archive stores them (gzip): the second limit's
DEST = BASE + 'dest'
PGBR_DIR = BASE + 'pgbackrest'
PORT = 6489
SECTION = '## PITR replay'
GOAL = 1.1
SEGMENT = rs.SEGMENT
SENDER = rs.SENDER
BARMAN_DIR = BASE + 'barman'  # Barman's home and configuration (owned by barman)
BARMAN_KEY_DIR = BASE + 'barman-client'  # postgres's key for barman-wal-restore, its ssh, its spool
BARMAN_AUTHORIZED = '/var/lib/barman/.ssh/authorized_keys'
BARMAN_KEY_TAG = 'bench-replay-speed'


def current_lsn():
    return wal.parse_lsn(psql('SELECT pg_current_wal_lsn()'))


def make_wal(segments):
    """SEGMENTS segments of inserts after the backup, a restore point, a switch; their names and the point."""
    psql('DROP TABLE IF EXISTS replay_bench; CREATE TABLE replay_bench (id bigint, pad text)')
    start = current_lsn()
    while current_lsn() - start < segments * SEGMENT:
        psql("INSERT INTO replay_bench SELECT g, repeat('x', 80) FROM generate_series(1, 400000) g")
    point = 'replay_bench_%d' % int(time.time())
    psql("SELECT pg_create_restore_point('%s')" % point)
    psql('INSERT INTO replay_bench VALUES (0, NULL)')  # a commit after the point, then the switch
    last = psql('SELECT pg_walfile_name(pg_current_wal_lsn())')
    psql('SELECT pg_switch_wal()')
    return point, last, current_lsn() - start


def recover(backup_id, restore_command, point):
    """recover() as barman of the backup with get_wal, the given restore_command; seconds."""
    target = os.path.join(rs.as_postgres_dir(DEST), 'data')
    params = dict(
        server='pg1',
        barman_home=rs.LAB_HOME,
        backup_id=backup_id,
        destination_host=rs.PG1_HOST,
        destination_directory=target,
        target_name=point,
        target_action='promote',
        get_wal=True,
        wal_sender=SENDER,
        port=PORT,
    )
    if restore_command:
        params['settings'] = {'restore_command': restore_command}
    import json

    argv = ['/usr/bin/python3', '-c', rs.OUR_RECOVER_CHILD, COLLECTIONS, json.dumps(params)]
    start = time.perf_counter()
    run(argv, user='barman')
    return target, time.perf_counter() - start


def stored_copies(names):
    """The segments as the lab archive stores them, readable by postgres: what a restore_command must inflate."""
    shutil.rmtree(STORED_DIR, ignore_errors=True)
    make_dir(STORED_DIR, 'postgres', 0o755)
    for name in names:
        with open(rs.lab_segment(name), 'rb') as stored:
            if stored.read(2) != b'\x1f\x8b':
                raise MethodFailed(
                    '%s is not stored gzip-compressed: the lab archive is not what this bench expects' % name
                )
        path = os.path.join(STORED_DIR, name)
        shutil.copyfile(rs.lab_segment(name), path)
        shutil.chown(path, 'postgres', 'postgres')


def method(backup_id, point, restore_command, check_log=None):
    target, files = recover(backup_id, restore_command, point)
    for directory in (WAL_DIR, STORED_DIR):
        if os.path.isdir(directory):
            rs.warm(directory)
    _ready, replay = rs.start_and_wait(target, PORT)
    log = rs.tail(target + '.log', 100000)
    if 'recovery stopping at restore point' not in log:
        raise MethodFailed('did not stop at the restore point: %s' % log[-600:])
    note = ''
    if check_log:
        note = check_log(target, log)
    return {'files': files, 'replay': replay, 'usable': files + replay, 'note': note}


def ours_after_note(target, log):
    lines = [line for line in log.splitlines() if 'the look-ahead fetched' in line]
    if os.path.exists(os.path.join(target, 'barman_wal_spool')):
        raise MethodFailed('the look-ahead spool outlived recovery')
    return lines[-1].split('barman-wal-sender: ')[-1] if lines else 'no look-ahead line in the log'


def barman_archive(names):
    """Barman's home holding the segments (archive-wal), and a way for postgres to run its get-wal.

    barman-wal-restore runs "ssh barman@HOST barman get-wal ..." with the user's default key: the lab
    authorizes for barman only forced commands (our receiver), so a key of this run is authorized for the
    run (from loopback only, barman's venv on PATH) and removed in main's finally."""
    bs.BARMAN_DIR = BARMAN_DIR
    barman, config, _base = bs.barman_setup()
    incoming = os.path.join(BARMAN_DIR, 'home', 'pg1', 'incoming')
    for name in names:
        shutil.copy(os.path.join(WAL_DIR, name), incoming)
        shutil.chown(os.path.join(incoming, name), 'barman', 'barman')
    run([barman, '-c', config, '-q', 'archive-wal', 'pg1'], user='barman')
    shutil.rmtree(BARMAN_KEY_DIR, ignore_errors=True)
    make_dir(BARMAN_KEY_DIR, 'postgres')
    key = os.path.join(BARMAN_KEY_DIR, 'id_ed25519')
    run(['ssh-keygen', '-q', '-t', 'ed25519', '-N', '', '-C', BARMAN_KEY_TAG, '-f', key], user='postgres')
    with open(key + '.pub') as handle:
        public = handle.read().strip()
    line = 'restrict,from="127.0.0.0/8",command="PATH=%s:/usr/bin:/bin; eval \\"$SSH_ORIGINAL_COMMAND\\"" %s\n' % (
        os.path.dirname(barman),
        public,
    )
    with open(BARMAN_AUTHORIZED, 'a') as handle:
        handle.write(line)
    wrapper = os.path.join(BARMAN_KEY_DIR, 'ssh')
    with open(wrapper, 'w') as handle:
        handle.write(
            '#!/bin/sh\nexec /usr/bin/ssh -i %s -o BatchMode=yes -o StrictHostKeyChecking=yes '
            '-o UserKnownHostsFile=/var/lib/postgresql/.ssh/barman_known_hosts "$@"\n' % key
        )
    shutil.chown(wrapper, 'postgres', 'postgres')
    os.chmod(wrapper, 0o700)
    make_dir(os.path.join(BARMAN_KEY_DIR, 'spool'), 'postgres')
    return 'PATH=%s:/usr/bin:/bin %s -U barman -c %s -p 4 --spool-dir %s 127.0.0.21 pg1 %%f %%p' % (
        BARMAN_KEY_DIR,
        os.path.join(os.path.dirname(barman), 'barman-wal-restore'),
        config,
        os.path.join(BARMAN_KEY_DIR, 'spool'),
    )


def barman_unauthorize():
    """Remove this run's key from barman's authorized_keys (the file is rewritten in place: owner and mode stay)."""
    try:
        with open(BARMAN_AUTHORIZED) as handle:
            lines = handle.readlines()
    except OSError:
        return
    kept = [line for line in lines if not line.rstrip('\n').endswith(' ' + BARMAN_KEY_TAG)]
    if kept != lines:
        with open(BARMAN_AUTHORIZED, 'w') as handle:
            handle.writelines(kept)


def pgbackrest_repo(names):
    """pgBackRest's local repository (async archive-get) holding the segments."""
    bs.PGBR_DIR = PGBR_DIR
    config, directory = bs.pgbackrest_setup(1)
    for name in names:
        run(['pgbackrest', '--config=' + config, '--stanza=pg1', 'archive-push', os.path.join(WAL_DIR, name)],
            user='postgres')  # fmt: skip
    return config, directory


def pgbackrest_command(config, target_dir):
    return 'pgbackrest --config=%s --stanza=pg1 --pg1-path=%s --archive-async --process-max=2 archive-get %%f "%%p"' % (
        config,
        target_dir,
    )


def row_line(name, rows, limit_rows):
    good = [r for r in rows if 'error' not in r]
    if not good:
        error = ' '.join(rows[-1]['error'].split()).replace('|', '/')[:300] if rows else 'not run'
        return '| %s | failed | | | | %s |' % (name, error), None
    replay = statistics.median(r['replay'] for r in good)
    usable = statistics.median(r['usable'] for r in good)
    ratios = []
    for row, limit in zip(rows, limit_rows):
        if 'error' not in row and 'error' not in limit:
            ratios.append((row['replay'] / limit['replay'], row['usable'] / limit['usable']))
    runs = ', '.join('%.2f (%.2fx)' % (r['replay'], ratio[0]) for r, ratio in zip(good, ratios))
    replay_ratio = statistics.median(r[0] for r in ratios) if ratios else None
    usable_ratio = statistics.median(r[1] for r in ratios) if ratios else None
    note = ' '.join(good[-1].get('note', '').split()).replace('|', '/')
    return '| %s | %.2f | %s | %.2f | %s | %s; %s |' % (
        name,
        replay,
        '%.2fx' % replay_ratio if replay_ratio else '-',
        usable,
        '%.2fx' % usable_ratio if usable_ratio else '-',
        runs,
        note,
    ), replay_ratio


def reading(ratios):
    """One line: the stream against one request per file (the choice), and the peers (start to promoted)."""
    shown = ', '.join('%s %.2fx' % (name, ratio) for name, ratio in ratios.items() if ratio is not None)
    stream = ratios.get('ours after: get with look-ahead')
    per_file = ratios.get('ours, look-ahead one request per file')
    if stream is not None and per_file is not None:
        choice = 'The stream (one `fetch` request) is %s than one request per file here (%.2fx against %.2fx).' % (
            'faster' if stream < per_file else 'NOT faster',
            stream,
            per_file,
        )
    else:
        choice = 'Stream against one request per file: not measured.'
    return 'Start to promoted, x the limit (median of the rounds): %s. %s' % (shown, choice)


def cleanup():
    rs.stop(os.path.join(DEST, 'data'))
    shutil.rmtree(DEST, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--segments', type=int, default=32)
    parser.add_argument('--no-results', action='store_true')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and barman)')
    started = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()[0]
    bs.wait_until(bs.lab_ready, 120, 'sshd and PostgreSQL on pg1')
    cleanup()
    backup_id, _how = rs.our_backup(None, False)
    info = rs.read_info(os.path.join(rs.LAB_PG1, 'meta', '%s-backup.info' % backup_id))
    point, last, wal_bytes = make_wal(args.segments)
    names = wal.segments_between(info['begin_wal'], last, SEGMENT)
    shutil.rmtree(WAL_DIR, ignore_errors=True)
    make_dir(WAL_DIR, 'postgres', 0o755)
    rs.decompressed_segments(info['begin_wal'], last, WAL_DIR, 'postgres')
    methods = [
        ('limit: cp from a local directory', lambda: method(backup_id, point, 'cp %s/%%f %%p' % WAL_DIR)),
        (
            'ours before: get, no look-ahead',
            lambda: method(backup_id, point, ssh.shell_join(SENDER + ['get', '--no-look-ahead', '%f', '%p'])),
        ),
        ('ours after: get with look-ahead', lambda: method(backup_id, point, None, ours_after_note)),
        (
            'ours, look-ahead one request per file',
            lambda: method(
                backup_id,
                point,
                ssh.shell_join(SENDER + ['get', '--look-ahead-per-file', '%f', '%p']),
                ours_after_note,
            ),
        ),
    ]
    failed = {}
    inflate_name = 'limit of a compressed archive: gzip -dc from a local directory'
    try:
        stored_copies(names)
        methods.insert(1, (inflate_name, lambda: method(backup_id, point, 'gzip -dc < %s/%%f > %%p' % STORED_DIR)))
    except (MethodFailed, OSError) as error:
        failed[inflate_name] = 'setup failed: %s' % error
    try:
        barman_command = barman_archive(names)
        methods.append(('Barman 3.19.1 barman-wal-restore -p 4', lambda: method(backup_id, point, barman_command)))
    except (MethodFailed, subprocess.CalledProcessError, OSError) as error:
        failed['Barman 3.19.1 barman-wal-restore -p 4'] = 'setup failed: %s' % error
    try:
        pgbr_config, _directory = pgbackrest_repo(names)
        methods.append(
            (
                'pgBackRest 2.45 archive-get, archive-async',
                lambda: method(backup_id, point, pgbackrest_command(pgbr_config, os.path.join(DEST, 'data'))),
            )
        )
    except (MethodFailed, subprocess.CalledProcessError, OSError) as error:
        failed['pgBackRest 2.45 archive-get, archive-async'] = 'setup failed: %s' % error
    results = dict((name, []) for name, _f in methods)
    try:
        for round_number in range(1, args.rounds + 1):
            for name, function in methods:
                print('round %d: %s ...' % (round_number, name), flush=True)
                try:
                    row = function()
                    print('  replay %.2f s, usable %.2f s %s' % (row['replay'], row['usable'], row['note']), flush=True)
                except Exception as error:
                    row = {'error': '%s: %s' % (type(error).__name__, error)}
                    print('  FAILED: %s' % row['error'], flush=True)
                finally:
                    cleanup()
                results[name].append(row)
    finally:
        cleanup()
        barman_unauthorize()
        for directory in (WAL_DIR, STORED_DIR, BARMAN_KEY_DIR, BARMAN_DIR, PGBR_DIR):
            shutil.rmtree(directory, ignore_errors=True)
    limit_name = methods[0][0]
    lines = [
        '| restore_command | start to promoted, s (median) | x limit | usable incl. recover(), s | x limit | '
        'runs: start to promoted s (x limit of the round); note |',
        '|---|---|---|---|---|---|',
    ]
    ratios = {}
    for name, rows in results.items():
        line, ratio = row_line(name, rows, results[limit_name])
        lines.append(line)
        ratios[name] = ratio
    for name, why in failed.items():
        lines.append('| %s | failed | | | | %s |' % (name, why.replace('|', '/')))
    after = ratios.get('ours after: get with look-ahead')
    before = ratios.get('ours before: get, no look-ahead')
    verdict = 'Goal (replay with our restore_command within %.1fx the local cp): %s.' % (
        GOAL,
        'not measured'
        if after is None
        else '%s, measured %.2fx (before the look-ahead: %s)'
        % ('met' if after <= GOAL else 'NOT met', after, '%.2fx' % before if before else '-'),
    )
    inflate = ratios.get(inflate_name)
    if after is not None and inflate:
        verdict += (
            ' The same archive inflated locally, one file per call (its own gzip files, `gzip -dc`), is %.2fx the'
            ' cp; ours is %.2fx of that.' % (inflate, after / inflate)
        )
    text = '\n'.join([
        SECTION,
        '',
        'Run %s on %s; %d rounds, medians; load average (1 min) %.1f before, %.1f after. '
        '`.venv/bin/python bench/replay_speed.py --rounds %d`.'
        % (started.strftime('%Y-%m-%d %H:%M %Z'), bs.machine(), args.rounds, load_before, os.getloadavg()[0],
           args.rounds),
        '',
        'Backup %s of pg1, then %d segments (%.0f MB of WAL: inserts into one table) replayed to a restore '
        'point, promoted. Every method recovers the same backup with recovery.recover() and differs only in '
        'restore_command; "start to promoted" is pg_ctl start until pg_is_in_recovery() answers false.'
        % (backup_id, len(names), wal_bytes / 1e6),
        '',
    ] + lines + ['', verdict, '', reading(ratios)]) + '\n'  # fmt: skip
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
