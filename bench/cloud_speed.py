#!/usr/bin/env python3
"""Object storage (#19): upload and download of a 1 GB backup and of N WAL segments to and from an S3 endpoint,
ours (plugins/module_utils/cloud.py) beside Barman 3.19.1's cloud tools and a plain boto3 transfer of the same
bytes (the limit of this machine).

Run as root from the checkout; it needs neither the lab nor its lock (everything is its own):

    .venv/bin/python bench/cloud_speed.py [--scale N] [--segments N] [--rounds N] [--no-results] [--keep]

Set-up, all under /var/tmp/bench-cloud (deleted in a finally, with the OS user, the sshd and the S3 server):

  S3               moto's server (.venv/bin/moto_server) on 127.0.0.25:9001, objects spooled under the bench's
                   directory, one bucket; any keys are accepted
  PostgreSQL 15    initdb'd as postgres, port 5492, pgbench -i -s 64 (~1 GB); block_incremental.py's cluster,
                   archive script, OS user (benchcld) and sshd (127.0.0.1:2292), reused under this bench's names
  our backup       backup.take_backup() as benchcld (reuse=off); then rows inserted in a scratch database
                   (dropped after) until N segments from the backup's first are archived
  catalog          the backup (hard links) and exactly those N segments, gzip-compressed by our receiver's code
                   (WalArchive.process_incoming), in a catalog of its own: what our sync sends and stage fetches

Each round (default 3), every method in turn (the order rotates), each into a fresh key prefix: the backup up,
the N segments up, then the backup and the segments down. See bench/README.md and bench/RESULTS.md.
"""

import argparse
import datetime
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import backup_speed as common  # noqa: E402  (bench/backup_speed.py: run, make_dir, ...)
import block_incremental as blk  # noqa: E402  (its cluster, user, sshd and our backup, under our names)
import mirror_speed  # noqa: E402  (its child() and the catalog's processing of incoming/)
import results as results_md  # noqa: E402

from backup_speed import TOP, MethodFailed, make_dir, run  # noqa: E402
from ansible_collections.barman.postgresql.plugins.module_utils import catalog, cloud, infofile, wal  # noqa: E402

PG_BINDIR = '/usr/lib/postgresql/15/bin'
BARMAN_VENV = os.environ.get('BARMAN_VENV', '/opt/barman-venv')
MOTO_SERVER = os.path.join(TOP, '.venv', 'bin', 'moto_server')

BASE = '/var/tmp/bench-cloud'
PG_PORT = 5492
SSH_PORT = 2292
USER = 'benchcld'  # the backup server's user: takes our backup, owns the catalog, runs ours and the limit
SERVER = 'benchpg'
TAKE_HOME = os.path.join(BASE, 'take')  # barman_home of take_backup (the archive script feeds its incoming/)
HOME = os.path.join(BASE, 'catalog')  # barman_home of the catalog measured: the backup and exactly N segments
DOWN = os.path.join(BASE, 'down')  # where each download goes (emptied after each method)
MOTO_DIR = os.path.join(BASE, 'moto')  # the S3 server's pid, log and spooled objects
S3_HOST, S3_PORT = '127.0.0.25', 9001
ENDPOINT = 'http://%s:%d' % (S3_HOST, S3_PORT)
BUCKET = 'bench'
KEYS = ('bench', 'bench-secret')  # moto accepts any
REGION = 'us-east-1'
PARALLEL = 4  # ours: bucket_argument_spec's default; the limit the same; Barman's -J
SCRATCH_DB = 'walgen'

SECTION = '## Object storage (#19)'
MB = 1e6
METHODS = ('limit', 'ours', 'barman')
LABELS = {'limit': 'limit (boto3)', 'ours': 'ours (cloud.py)', 'barman': 'Barman 3.19.1'}
AWS_ENV = {
    'AWS_ACCESS_KEY_ID': KEYS[0],
    'AWS_SECRET_ACCESS_KEY': KEYS[1],
    'AWS_DEFAULT_REGION': REGION,
}

# The limit: what `tar c | aws s3 cp - s3://...` and `aws s3 cp` of each file do, with boto3 and nothing else: up,
# the part size and concurrency of ours; down, one streaming GET (as ours and Barman's: moto answers a ranged GET by
# reading the whole object, so a ranged download would measure moto). One process: the tar, then the files.
LIMIT_CHILD = r"""
import concurrent.futures, json, os, subprocess, sys, time
import boto3, boto3.s3.transfer, botocore.config
job = json.loads(sys.argv[2])
s3 = job['s3']
client = boto3.session.Session(aws_access_key_id=s3['keys'][0], aws_secret_access_key=s3['keys'][1]).client(
    's3', endpoint_url=s3['endpoint'], region_name=s3['region'],
    config=botocore.config.Config(s3={'addressing_style': 'path'}, max_pool_connections=2 * s3['parallel']))
transfer = boto3.s3.transfer.TransferConfig(multipart_threshold=s3['part'], multipart_chunksize=s3['part'],
                                            max_concurrency=s3['parallel'])

def pump(body, handle):
    while True:
        chunk = body.read(1 << 20)
        if not chunk:
            break
        handle.write(chunk)

out = {}
began = time.perf_counter()
if 'tar_up' in job:
    source, key = job['tar_up']
    tar = subprocess.Popen(['tar', '-cf', '-', '-C', source, '.'], stdout=subprocess.PIPE)
    client.upload_fileobj(tar.stdout, s3['bucket'], key, Config=transfer)
    if tar.wait():
        sys.exit('tar -c exited %d' % tar.returncode)
if 'tar_down' in job:
    key, target = job['tar_down']
    os.mkdir(target, 0o700)
    tar = subprocess.Popen(['tar', '-xf', '-', '-C', target], stdin=subprocess.PIPE)
    pump(client.get_object(Bucket=s3['bucket'], Key=key)['Body'], tar.stdin)
    tar.stdin.close()
    if tar.wait():
        sys.exit('tar -x exited %d' % tar.returncode)
out['tar'] = time.perf_counter() - began

def up(pair):
    with open(pair[0], 'rb') as handle:
        client.put_object(Bucket=s3['bucket'], Key=pair[1], Body=handle.read())

def down(pair):
    with open(pair[1], 'wb') as handle:
        pump(client.get_object(Bucket=s3['bucket'], Key=pair[0])['Body'], handle)

if job.get('files_down'):
    os.mkdir(os.path.dirname(job['files_down'][0][1]), 0o700)
began = time.perf_counter()
with concurrent.futures.ThreadPoolExecutor(s3['parallel']) as pool:
    list(pool.map(up, job.get('files_up', [])))
    list(pool.map(down, job.get('files_down', [])))
out['files'] = time.perf_counter() - began
print(json.dumps(out))
"""

# Ours: pg_backup_cloud's functions with the module's defaults (the params of bucket_argument_spec and
# catalog_argument_spec); 'upload' is sync's upload of one backup, 'sync' and 'stage' the module's actions. The
# WAL part of sync and stage is the one call of cloud._in_parallel (the puts, the fetch); its time is kept.
OUR_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.barman.postgresql.plugins.module_utils import catalog, cloud, infofile
action, given = sys.argv[2], json.loads(sys.argv[3])
options = dict(catalog.catalog_argument_spec(), **cloud.bucket_argument_spec())
params = dict((name, option.get('default')) for name, option in options.items())
params.update(compression='none')
params.update(given)
wal_part = []
in_parallel = cloud._in_parallel
def measured_in_parallel(*args):
    began = time.perf_counter()
    done = in_parallel(*args)
    wal_part.append(time.perf_counter() - began)
    return done
cloud._in_parallel = measured_in_parallel
began = time.perf_counter()
if action == 'upload':
    layout = catalog.ServerLayout(params['barman_home'], params['server'])
    info = infofile.read_backup_info(layout.backup_info_path(params['backup_id']))
    bucket = cloud.Bucket(params, params['server'])
    result = cloud.upload_backup(bucket, layout, params['backup_id'], info, params['compression'])
else:
    result = getattr(cloud, action)(params)
result.update(elapsed=time.perf_counter() - began, wal_part=sum(wal_part))
print(json.dumps(result, default=str))
"""


# --------------------------------------------------------------------------- set-up


def use_block_incremental_setup():
    """block_incremental.py's set-up functions read its module globals: point them at this bench's own places,
    user, ports and server name (nothing of that bench is touched; it is not running in this process)."""
    names = dict(
        BASE=BASE,
        SOCKET=os.path.join(BASE, 'sock'),
        SSH_PORT=SSH_PORT,
        SSH_DIR=os.path.join(BASE, 'ssh'),
        USER=USER,
        USER_HOME=os.path.join(BASE, 'home'),
        SERVER=SERVER,
        WAL_STAGE=os.path.join(BASE, 'wal-stage'),
        WAL_COPY=os.path.join(BASE, 'wal'),
        PORT18=PG_PORT,  # the port method_ours backs up
    )
    for name, value in names.items():
        if not hasattr(blk, name):
            raise RuntimeError('bench/block_incremental.py has no %s any more: this bench reuses it' % name)
        setattr(blk, name, value)


def raw_segment(name):
    """A segment as PostgreSQL archived it (the archive script keeps one copy of each, postgres's)."""
    return os.path.join(blk.WAL_COPY + '-pg', name)


def load(cluster, scale):
    cluster.psql('CREATE DATABASE %s' % blk.DATABASE, 'postgres')
    print('loading the data: pgbench -i -s %d' % scale, flush=True)
    pgbench = [cluster.tool('pgbench'), '-i', '-q', '-h', blk.SOCKET, '-p', str(cluster.port)]
    run(pgbench + ['-s', str(scale), blk.DATABASE], user='postgres')
    cluster.psql('CHECKPOINT', 'postgres')


def write_wal(cluster, last, segment_size):
    """Rows of (bigint, int, timestamptz, md5 text) inserted in a scratch database until PostgreSQL writes past the
    segment ``last``, which is then archived: WAL that gzip shrinks about as much as an OLTP load's (pgbench -i's
    blank-padded rows would shrink ~18x). The database is dropped after: PGDATA is the backup's size again."""
    cluster.psql('CREATE DATABASE %s' % SCRATCH_DB, 'postgres')
    cluster.psql('CREATE TABLE filler (id bigint, kind int, at timestamptz, payload text)', SCRATCH_DB)
    insert = (
        "INSERT INTO filler SELECT g, g %% 97, now() - g * interval '1 s', md5(g::text) || md5((g + 1)::text) "
        'FROM generate_series(%d, %d) g'
    )
    target = wal.segment_number(last, segment_size)
    first = 1
    for _ in range(400):
        current = cluster.psql('SELECT pg_walfile_name(pg_current_wal_lsn())', 'postgres')
        if wal.segment_number(current, segment_size) > target:
            break
        cluster.psql(insert % (first, first + 199999), SCRATCH_DB)
        first += 200000
    common.wait_until(lambda: os.path.exists(raw_segment(last)), 300, 'the archiving of %s' % last)
    cluster.psql('DROP DATABASE %s' % SCRATCH_DB, 'postgres')
    cluster.psql('CHECKPOINT', 'postgres')


def build_catalog(backup_id, names):
    """HOME: our backup (hard links to the one taken) and exactly the segments ``names``, given to its incoming/
    and compressed there by our receiver's code, as a backup server's catalog holds them."""
    incoming = blk.our_catalog(HOME)
    taken = os.path.join(TAKE_HOME, SERVER)
    root = os.path.join(HOME, SERVER)
    run(['cp', '-al', os.path.join(taken, 'base', backup_id), os.path.join(root, 'base', backup_id)])
    for path in ('meta/%s-backup.info' % backup_id, 'identity.json'):
        if os.path.exists(os.path.join(taken, path)):
            run(['cp', '-p', os.path.join(taken, path), os.path.join(root, path)])
    for name in names:
        shutil.copyfile(raw_segment(name), os.path.join(incoming, name))
    run(['chown', '-R', '%s:%s' % (USER, USER), root])
    counts = mirror_speed.child(mirror_speed.PROCESS_CHILD, [HOME, SERVER], USER)
    if counts.get('archived') != len(names):
        raise MethodFailed('the catalog took %s of the %d segments' % (counts, len(names)))
    layout = catalog.ServerLayout(HOME, SERVER)
    return [layout.wal_path(name) for name in names]  # gzip-compressed, under their plain names


# --------------------------------------------------------------------------- the S3 server


def moto_pid():
    path = os.path.join(MOTO_DIR, 'pid')
    try:
        pid = int(open(path).read())
        if b'moto_server' in open('/proc/%d/cmdline' % pid, 'rb').read():
            return pid
    except (OSError, ValueError):
        pass
    return None


def listening():
    try:
        socket.create_connection((S3_HOST, S3_PORT), timeout=1).close()
        return True
    except OSError:
        return False


def start_moto():
    if listening():
        raise RuntimeError('something already listens on %s: not ours (no pid in %s)' % (ENDPOINT, MOTO_DIR))
    make_dir(MOTO_DIR, 'root')
    with open(os.path.join(MOTO_DIR, 'log'), 'wb') as log:
        proc = subprocess.Popen([MOTO_SERVER, '-H', S3_HOST, '-p', str(S3_PORT)], stdout=log, stderr=log,
                                env=dict(os.environ, TMPDIR=MOTO_DIR), start_new_session=True)  # fmt: skip
    with open(os.path.join(MOTO_DIR, 'pid'), 'w') as handle:
        handle.write(str(proc.pid))
    common.wait_until(listening, 60, 'moto_server on %s' % ENDPOINT)
    client = s3_client()
    client.create_bucket(Bucket=BUCKET)
    return client


def stop_moto():
    pid = moto_pid()
    if pid is None:
        return
    os.kill(pid, 15)
    deadline = time.monotonic() + 20
    while moto_pid() == pid and time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)  # ours: reap it
        except ChildProcessError:
            pass
        time.sleep(0.2)


def s3_client():
    import boto3  # pylint: disable=import-outside-toplevel
    import botocore.config  # pylint: disable=import-outside-toplevel

    session = boto3.session.Session(aws_access_key_id=KEYS[0], aws_secret_access_key=KEYS[1])
    config = botocore.config.Config(s3={'addressing_style': 'path'})
    return session.client('s3', endpoint_url=ENDPOINT, region_name=REGION, config=config)


def objects(client, prefix):
    found = []
    for page in client.get_paginator('list_objects_v2').paginate(Bucket=BUCKET, Prefix=prefix):
        found += page.get('Contents', [])
    return found


def empty_prefix(client, prefix):
    """Every object and unfinished upload under prefix (moto keeps them all in its process)."""
    for upload in client.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get('Uploads', []):
        client.abort_multipart_upload(Bucket=BUCKET, Key=upload['Key'], UploadId=upload['UploadId'])
    keys = [o['Key'] for o in objects(client, prefix)]
    for start in range(0, len(keys), 1000):
        batch = [dict(Key=k) for k in keys[start : start + 1000]]
        client.delete_objects(Bucket=BUCKET, Delete=dict(Objects=batch, Quiet=True))


def stored_bytes(client, prefix, part):
    """(bytes, objects) under prefix/SERVER/<part>/, backup.info left out."""
    listed = objects(client, '%s/%s/%s/' % (prefix, SERVER, part))
    tars = [o['Size'] for o in listed if not o['Key'].endswith('backup.info')]
    return sum(tars), len(tars)


# --------------------------------------------------------------------------- the methods


def s3_settings():
    return dict(endpoint=ENDPOINT, region=REGION, keys=KEYS, bucket=BUCKET, parallel=PARALLEL, part=cloud.MIN_PART)


def our_params(prefix, **more):
    params = dict(server=SERVER, barman_home=HOME, bucket=BUCKET, prefix=prefix, endpoint_url=ENDPOINT,
                  addressing_style='path', access_key_id=KEYS[0], secret_access_key=KEYS[1], region=REGION,
                  parallel=PARALLEL)  # fmt: skip
    params.update(more)
    return params


def timed_child(code, argv, user):
    began = time.perf_counter()
    out = mirror_speed.child(code, argv, user)
    return time.perf_counter() - began, out


def barman_tool(name, *args, **kwargs):
    argv = [os.path.join(BARMAN_VENV, 'bin', name), '--endpoint-url', ENDPOINT, '--addressing-style', 'path']
    return run(argv + list(args), user='postgres', env=AWS_ENV, timeout=3600, **kwargs)


def url(prefix):
    return 's3://%s/%s' % (BUCKET, prefix)


def wal_key(prefix, name, suffix='.gz'):
    return '%s/%s/wals/%s/%s%s' % (prefix, SERVER, name[:16], name, suffix)


def backup_up(ctx, method, prefix, client):
    backup_id = ctx['backup_id']
    if method == 'limit':
        key = '%s/%s/base/%s/data.tar' % (prefix, SERVER, backup_id)
        job = dict(s3=s3_settings(), tar_up=[ctx['data_dir'], key])
        seconds, out = timed_child(LIMIT_CHILD, [json.dumps(job)], USER)
        note = 'tar -c | upload_fileobj %.2f s' % out['tar']
    elif method == 'ours':
        seconds, out = timed_child(OUR_CHILD, ['upload', json.dumps(our_params(prefix, backup_id=backup_id))], USER)
        note = 'upload_backup %.2f s, %d parts' % (out['elapsed'], out['parts'])
    else:
        began = time.perf_counter()
        barman_tool('barman-cloud-backup', '-h', blk.SOCKET, '-p', str(PG_PORT), '-U', 'postgres', '-d', 'postgres',
                    '--immediate-checkpoint', '-J', str(PARALLEL), url(prefix), SERVER)  # fmt: skip
        seconds = time.perf_counter() - began
        ids = {o['Key'].split('/')[4] for o in objects(client, '%s/%s/base/' % (prefix, SERVER))}
        if len(ids) != 1:
            raise MethodFailed('barman-cloud-backup left %s' % sorted(ids))
        ctx.setdefault('barman_ids', {})[prefix] = ids.pop()
        note = 'connects, checkpoints, reads PGDATA'
    size, count = stored_bytes(client, prefix, 'base')
    return dict(seconds=seconds, bytes=size, note='%s; %.0f MB in %d object(s)' % (note, size / MB, count))


def wal_up(ctx, method, prefix, client):
    names = ctx['names']
    if method == 'limit':
        job = dict(s3=s3_settings(), files_up=[[path, wal_key(prefix, n)] for n, path in zip(names, ctx['gz'])])
        seconds, out = timed_child(LIMIT_CHILD, [json.dumps(job)], USER)
        note = 'put_object x %d: %.2f s' % (len(names), out['files'])
    elif method == 'ours':
        seconds, out = timed_child(OUR_CHILD, ['sync', json.dumps(our_params(prefix))], USER)
        if out['uploaded'] or out['wals_uploaded'] != len(names):
            raise MethodFailed('sync sent %s and %d WAL files' % (out['uploaded'], out['wals_uploaded']))
        note = 'sync %.2f s, of which the puts %.2f s' % (out['elapsed'], out['wal_part'])
    else:
        each = []
        for name in names:
            began = time.perf_counter()
            barman_tool('barman-cloud-wal-archive', '-z', url(prefix), SERVER, raw_segment(name))
            each.append(time.perf_counter() - began)
        seconds = sum(each)
        note = '%d processes, each gzips its segment: median %.2f s each' % (len(names), statistics.median(each))
    size, count = stored_bytes(client, prefix, 'wals')
    if count != len(names):
        raise MethodFailed('%d WAL objects under %s, %d sent' % (count, prefix, len(names)))
    return dict(seconds=seconds, bytes=size, note=note)


def fresh_down(method, owner):
    target = os.path.join(DOWN, method)
    shutil.rmtree(target, ignore_errors=True)
    make_dir(target, owner)
    return target


def count_files(directory):
    return sum(len(files) for _d, _s, files in os.walk(directory))


def download(ctx, method, prefix, client):
    """The backup and the N segments down: three rows (backup, WAL, both) from one measure."""
    names, backup_id = ctx['names'], ctx['backup_id']
    tar_bytes = stored_bytes(client, prefix, 'base')[0]
    wal_bytes = stored_bytes(client, prefix, 'wals')[0]
    if method == 'limit':
        target = fresh_down(method, USER)
        key = '%s/%s/base/%s/data.tar' % (prefix, SERVER, backup_id)
        files = [[wal_key(prefix, n), os.path.join(target, 'wals', n + '.gz')] for n in names]
        job = dict(s3=s3_settings(), tar_down=[key, os.path.join(target, 'data')], files_down=files)
        total, out = timed_child(LIMIT_CHILD, [json.dumps(job)], USER)
        wal_seconds, data = out['files'], os.path.join(target, 'data')
        got = count_files(os.path.join(target, 'wals'))
        note = 'get_object | tar -x %.2f s' % out['tar']
    elif method == 'ours':
        target = fresh_down(method, USER)
        params = our_params(prefix, barman_home=os.path.join(target, 'home'), backup_id=backup_id)
        total, out = timed_child(OUR_CHILD, ['stage', json.dumps(params)], USER)
        wal_seconds, data = out['wal_part'], os.path.join(target, 'home', SERVER, 'base', backup_id, 'data')
        got = out['wals']
        note = 'stage %.2f s: its data part (listing, extraction, backup.info) %.2f s' % (
            out['elapsed'],
            out['seconds'],
        )
    else:
        target = fresh_down(method, 'postgres')
        data, wals, spool = (os.path.join(target, d) for d in ('data', 'wals', 'spool'))
        for path in (wals, spool):
            make_dir(path, 'postgres')
        began = time.perf_counter()
        barman_tool('barman-cloud-restore', url(prefix), SERVER, ctx['barman_ids'][prefix], data)
        restore = time.perf_counter() - began
        each = []
        for name in names:
            one = time.perf_counter()
            barman_tool('barman-cloud-wal-restore', '--spool-dir', spool, url(prefix), SERVER, name,
                        os.path.join(wals, name))  # fmt: skip
            each.append(time.perf_counter() - one)
        total = time.perf_counter() - began
        wal_seconds, got = total - restore, count_files(wals)
        note = 'barman-cloud-restore %.2f s; barman-cloud-wal-restore median %.2f s each' % (
            restore,
            statistics.median(each),
        )
    if not os.path.exists(os.path.join(data, 'PG_VERSION')) or got != len(names):
        raise MethodFailed('%s: %d WAL files of %d, PG_VERSION %s' % (target, got, len(names), os.path.exists(data)))
    return {
        'backup down': dict(seconds=total - wal_seconds, bytes=tar_bytes, note=note),
        'WAL down': dict(seconds=wal_seconds, bytes=wal_bytes),
        'both down': dict(seconds=total, bytes=tar_bytes + wal_bytes),
    }


# --------------------------------------------------------------------------- rounds


def warm(paths):
    """A global sync (what the method before left dirty), then the sources read once (page cache)."""
    run(['sync'])
    for path in paths:
        run(['find', path, '-type', 'f', '-exec', 'cat', '{}', '+'], stdout=subprocess.DEVNULL, check=False)


def attempt(figures, number, method, function):
    """One method's measure: its rows' figures, or its error in each of them."""
    print('  round %d, %s ...' % (number, LABELS[method]), end='', flush=True)
    load = os.getloadavg()[0]
    try:
        rows = function()
    except Exception as error:  # a failed method is reported, the others still run
        print(' FAILED: %s' % str(error)[:1500], flush=True)
        return error
    print(' ' + ', '.join('%s %.2f s' % (r, f['seconds']) for r, f in rows.items()), flush=True)
    for row, figure in rows.items():
        figures.setdefault(row, {}).setdefault(method, {})[number] = dict(figure, load=load)
    return None


def one_round(ctx, number, figures, client, sources):
    shift = (number - 1) % len(METHODS)
    order = METHODS[shift:] + METHODS[:shift]
    base = 'r%d' % number
    steps = (
        ('backup up', backup_up, sources),
        ('WAL up', wal_up, sources),
        ('download', download, ()),
    )
    for step, function, paths in steps:
        print('%s:' % step, flush=True)
        for method in order:
            prefix = '%s/%s' % (base, method)
            warm(paths)

            def measured(function=function, method=method, prefix=prefix, step=step):
                out = function(ctx, method, prefix, client)
                return out if step == 'download' else {step: out}

            error = attempt(figures, number, method, measured)
            if error is not None:
                rows = ('backup down', 'WAL down', 'both down') if step == 'download' else (step,)
                for row in rows:
                    figures.setdefault(row, {}).setdefault(method, {})[number] = dict(error=str(error))
            shutil.rmtree(os.path.join(DOWN, method), ignore_errors=True)
    empty_prefix(client, base + '/')


# --------------------------------------------------------------------------- report


ROWS = (
    ('backup up', 'backup upload'),
    ('WAL up', 'WAL upload, %d segments'),
    ('backup down', 'backup download (+ extraction)'),
    ('WAL down', 'WAL download, %d segments'),
    ('both down', 'backup + WAL download'),
)


def summary(per_round, limits):
    """(median s, median bytes, median of the rounds' ratios to the limit, number of rounds, first error)."""
    good = dict((n, f) for n, f in per_round.items() if 'seconds' in f)
    errors = [f['error'] for f in per_round.values() if 'error' in f]
    if not good:
        return None, None, None, 0, errors[0] if errors else 'not run'
    seconds = statistics.median(f['seconds'] for f in good.values())
    size = statistics.median(f['bytes'] for f in good.values())
    ratios = [f['seconds'] / limits[n]['seconds'] for n, f in good.items() if 'seconds' in limits.get(n, {})]
    return seconds, size, statistics.median(ratios) if ratios else None, len(good), errors[0] if errors else None


def cell(seconds, size, error, segments=None):
    """'12.34 s, 85 MB/s' (bytes stored by the method / s), or for WAL '0.50 s, 80 seg/s'."""
    if seconds is None:
        return 'failed: %s' % error.replace('|', '/').replace('\n', ' ')[:300]
    if not seconds:
        return '%.2f s' % seconds
    if segments:
        return '%.2f s, %.0f seg/s' % (seconds, segments / seconds)
    return '%.2f s, %.0f MB/s' % (seconds, size / MB / seconds)


def table(figures, segments):
    lines = [
        '| row | limit: plain boto3 | ours: cloud.py | ours x limit | Barman 3.19.1 | Barman x limit | ours / Barman |',
        '|---|---|---|---|---|---|---|',
    ]
    runs = ['| row | %s |' % ' | '.join(LABELS[m] for m in METHODS), '|---|---|---|---|']
    for row, title in ROWS:
        count = segments if row.startswith('WAL') else None
        title = title % segments if '%d' in title else title
        per = figures.get(row, {})
        limits = per.get('limit', {})
        stats = dict((m, summary(per.get(m, {}), limits)) for m in METHODS)
        ours, barman = stats['ours'], stats['barman']
        pairs = [
            per['ours'][n]['seconds'] / per['barman'][n]['seconds']
            for n in per.get('ours', {})
            if 'seconds' in per['ours'][n] and 'seconds' in per.get('barman', {}).get(n, {})
        ]
        lines.append(
            '| %s | %s | %s | %s | %s | %s | %s |'
            % (
                title,
                cell(*stats['limit'][:2], stats['limit'][4], count),
                cell(*ours[:2], ours[4], count),
                '%.2f' % ours[2] if ours[2] is not None else '-',
                cell(*barman[:2], barman[4], count),
                '%.2f' % barman[2] if barman[2] is not None else '-',
                '%.2f' % statistics.median(pairs) if pairs else '-',
            )
        )
        runs.append(
            '| %s | %s |'
            % (
                title,
                ' | '.join(
                    ', '.join(
                        '%.2f' % f['seconds'] if 'seconds' in f else 'failed'
                        for _n, f in sorted(per.get(m, {}).items())
                    )
                    or '-'
                    for m in METHODS
                ),
            )
        )
    return '\n'.join(lines), '\n'.join(runs)


def notes(figures):
    """The last round's note of each method and row (where its time goes)."""
    out = []
    for row, title in ROWS:
        for method in METHODS:
            per = figures.get(row, {}).get(method, {})
            last = per[max(per)] if per else {}
            if last.get('note'):
                out.append('%s, %s: %s' % (title.split(',')[0], LABELS[method], last['note']))
    return out


def versions():
    import moto  # pylint: disable=import-outside-toplevel

    system = run(['/usr/bin/python3', '-c', 'import boto3; print(boto3.__version__)']).stdout.decode().strip()
    venv = os.path.join(BARMAN_VENV, 'bin', 'python')
    barman = run([venv, '-c', 'import boto3; print(boto3.__version__)']).stdout.decode().strip()
    commit = run(['git', '-C', TOP, 'rev-parse', '--short', 'HEAD'], check=False).stdout.decode().strip() or '?'
    changed = run(['git', '-C', TOP, 'diff', '--quiet', 'HEAD', '--', 'plugins/module_utils/cloud.py'], check=False)
    code = 'cloud.py of %s%s' % (commit, ' with uncommitted changes' if changed.returncode else '')
    return dict(moto=moto.__version__, system=system, barman=barman, code=code, digest=cloud_digest())


def cloud_digest():
    """What the children import (each run of ours reads cloud.py again): compared at the start and the end."""
    with open(os.path.join(TOP, 'plugins', 'module_utils', 'cloud.py'), 'rb') as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def report(args, figures, facts, started, elapsed, load_before):
    main_table, runs = table(figures, args.segments)
    v = facts.get('versions', {})
    options = ''.join(
        ' --%s %s' % (k, val)
        for k, val, d in (('scale', args.scale, 64), ('segments', args.segments, 40), ('rounds', args.rounds, 3))
        if val != d
    )
    text = [
        SECTION,
        '',
        'Run %s on %s; the whole run took %.0f min. pgbench scale %d (databases %.0f MB in all); our backup %s '
        '(backup.take_backup(), reuse=off: %.0f MB in its data directory), then %d segments (%s..%s: the '
        "backup's own, then rows of (bigint, int, timestamptz, md5 text) inserted in a scratch database, dropped "
        "after) gzip-compressed into a catalog by our receiver's code (%.0f MB raw, %.0f MB gzip). S3: moto %s "
        '(`moto_server`, one Python process, in memory, objects spooled to disk) on '
        '127.0.0.25:9001, path-style, no TLS; boto3 %s for ours and the limit (`/usr/bin/python3`, as the module '
        "runs), %s in Barman's venv; %s. %d rounds; load average (1 min) %.1f before, %.1f after. "
        '`.venv/bin/python bench/cloud_speed.py%s`.'
        % (
            started.strftime('%Y-%m-%d %H:%M %Z'),
            results_md.machine(facts.get('version', '15'), 'S3 API over HTTP on loopback'),
            elapsed / 60,
            args.scale,
            facts.get('size', 0) / MB,
            facts.get('backup_id', '?'),
            facts.get('data_bytes', 0) / MB,
            args.segments,
            facts.get('first', '?'),
            facts.get('last', '?'),
            facts.get('raw_bytes', 0) / MB,
            facts.get('gz_bytes', 0) / MB,
            v.get('moto', '?'),
            v.get('system', '?'),
            v.get('barman', '?'),
            v.get('code', '?'),
            args.rounds,
            load_before,
            os.getloadavg()[0],
            options,
        ),
        '',
        main_table,
        '',
        'Medians of the rounds; MB/s: the bytes that method stored in the bucket / its time (WAL rows: segments '
        'per second); x limit: the median '
        "of each round's ratio to the limit of the same round (the methods of a round run back to back, the order "
        'rotating), and likewise ours / Barman. The issue sets no numeric goal for these rows: the ratios are the '
        'figures asked for. The S3 endpoint is the limit of this machine, not of S3: moto parses, hashes and spools '
        'every part in one Python process, on the same 2 cores as the client (an upload goes at the pace moto takes '
        'it), '
        "and other sessions load the machine (load average at each round's start: %s), hence the spread between "
        'rounds. Each round (s):' % ', '.join('%.1f' % x for x in facts.get('loads', [])),
        '',
        runs,
        '',
        "What runs, each method into a fresh key prefix, PARALLEL = 4 (ours: `parallel`, the module's default; the "
        "limit: the same concurrency and ours' part size, 16 MiB; Barman: `-J 4`), no compression of the backup:",
        '',
        "- Backup upload. Limit: GNU `tar -c` of the backup's data directory piped into boto3 `upload_fileobj` "
        '(`TransferConfig` multipart, 16 MiB parts, 4 at once), as `tar c | aws s3 cp -` does. Ours: '
        "`cloud.upload_backup()` (what `sync` runs for each backup: Python's tarfile into our multipart writer, "
        "MD5 of each part, then backup.info), in `/usr/bin/python3` as the catalog's owner. Barman: "
        '`barman-cloud-backup --immediate-checkpoint -J 4` as postgres of the running cluster (it connects, runs '
        '`pg_backup_start`/`stop`, reads PGDATA itself: the same data, its own tar, its parts of ~21 MB).',
        "- WAL upload. Limit: `put_object` of the catalog's gzip files, 4 at once. Ours: `cloud.sync()` on the "
        'prefix where the backup already is: it lists, checks, then puts the same files, 4 at once (the puts alone '
        'are in the note). Barman: `barman-cloud-wal-archive -z` once per segment, in sequence, as '
        '`archive_command` runs it: each is a process start and a gzip of 16 MB (ours and the limit send the files '
        "the catalog had already compressed when they arrived; Barman's gzip is part of its time, its objects are "
        'a little different in size).',
        '- Download: one measure gives three rows. Limit: one process, one streaming `get_object` of the tar piped '
        'into `tar -x` (as ours and Barman read it: moto answers each ranged GET by reading the whole object, so '
        '`download_fileobj` in 16 MiB ranges would measure moto), then `get_object` of the %d gzip files 4 at '
        'once. Ours: `cloud.stage()` (no target: every '
        "segment from the backup's first) into an empty staging catalog: it lists, fetches the WAL 4 at once "
        "(kept compressed, as a catalog holds it), checks the archive reaches the backup's end, then streams the "
        'tar through tarfile into the backup directory. Barman: `barman-cloud-restore` of its backup, then '
        '`barman-cloud-wal-restore` once per segment (default: no prefetch, `-p 0`), as `restore_command` runs it; '
        "it writes each segment decompressed. Ours' and the limit's WAL rows are the fetch alone, measured in "
        'their process; their process start, listings and checks are in their backup row. No method fsyncs what '
        'it writes (a global `sync` runs before each; the downloads are deleted after each).' % args.segments,
        '',
        'Where the time went in the last round:',
        '',
    ]
    text += ['- %s' % line.replace('|', '/') for line in notes(figures)]
    return '\n'.join(text) + '\n'


# --------------------------------------------------------------------------- main


def cleanup(cluster):
    stop_moto()
    blk.cleanup([cluster])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--scale', type=int, default=64, help='pgbench scale of the data (default 64: ~1 GB)')
    parser.add_argument('--segments', type=int, default=40, help='WAL segments up and down (default 40)')
    parser.add_argument('--rounds', type=int, default=3, help='rounds, medians reported (default 3)')
    parser.add_argument('--no-results', action='store_true', help='do not write bench/RESULTS.md')
    parser.add_argument('--keep', action='store_true', help='leave the user, cluster, sshd, S3 server and files')
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit('run as root (it acts as postgres and as its backup server user)')
    use_block_incremental_setup()
    cluster = blk.Cluster('pg', PG_BINDIR, PG_PORT)
    figures, facts = {}, {}
    started = datetime.datetime.now().astimezone()
    clock = time.perf_counter()
    load_before = os.getloadavg()[0]
    try:
        cleanup(cluster)  # a kept or broken run's
        make_dir(BASE, 'root', 0o755)
        make_dir(blk.SOCKET, 'postgres', 0o755)
        make_dir(blk.WAL_STAGE, 'postgres', 0o755)
        make_dir(DOWN, 'root', 0o755)
        blk.ensure_user()
        known_hosts = blk.start_sshd()
        client = start_moto()
        facts['versions'] = versions()
        cluster.create([blk.our_catalog(TAKE_HOME)], '')
        load(cluster, args.scale)
        facts['version'] = cluster.psql('SHOW server_version', 'postgres')
        facts['size'] = cluster.size()

        print('our backup: backup.take_backup()', flush=True)
        taken = blk.method_ours(TAKE_HOME, known_hosts, {'reuse': 'off'})
        backup_id = facts['backup_id'] = taken['backup_id']
        info = infofile.read_backup_info(os.path.join(TAKE_HOME, SERVER, 'meta', backup_id + '-backup.info'))
        size = info['xlog_segment_size']
        first = wal.segment_number(info['begin_wal'], size)
        names = [wal.segment_name(info['timeline'], first + i, size) for i in range(args.segments)]
        facts.update(first=names[0], last=names[-1])
        print('  %s in %.1f s; writing WAL up to %s' % (backup_id, taken['seconds'], names[-1]), flush=True)
        write_wal(cluster, names[-1], size)
        gz = build_catalog(backup_id, names)
        data_dir = os.path.join(HOME, SERVER, 'base', backup_id, 'data')
        facts.update(data_bytes=cloud._directory_bytes(data_dir), gz_bytes=sum(os.path.getsize(p) for p in gz),
                     raw_bytes=sum(os.path.getsize(raw_segment(n)) for n in names))  # fmt: skip
        ctx = dict(backup_id=backup_id, names=names, gz=gz, data_dir=data_dir)
        sources = [os.path.join(HOME, SERVER), cluster.data, blk.WAL_COPY + '-pg']
        for number in range(1, args.rounds + 1):
            print('round %d of %d' % (number, args.rounds), flush=True)
            facts.setdefault('loads', []).append(os.getloadavg()[0])
            one_round(ctx, number, figures, client, sources)
    finally:
        if args.keep:
            print('kept: %s, cluster, sshd and moto_server running, user %s' % (BASE, USER))
        else:
            cleanup(cluster)
            common.remove_user(USER)

    if facts.get('versions', {}).get('digest') not in (None, cloud_digest()):
        facts['versions']['code'] += ' (changed during the run: its rounds may have run different code)'
    text = report(args, figures, facts, started, time.perf_counter() - clock, load_before)
    print('\n' + text)
    if not args.no_results:
        results_md.write_results(SECTION, text)
    failed = any('error' in f for per in figures.values() for m in per.values() for f in m.values())
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
