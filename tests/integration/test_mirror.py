"""A mirror backup server in another site (barman_mirror_of): backups copied from the primary's catalog, WAL
forwarded as it arrives, its own retention, and the loss of the primary's site: recovery from the mirror, the
mirror promoted, and the old primary refused as a second writer when it comes back.

backup-dr (127.0.0.23, user barman-dr) mirrors backup1 for pg1 (tests/integration/with-mirror.yml)."""

import datetime
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time

import pytest
from drills import clear, query, stop_cluster
from labhosts import BARMAN, LAB, ROOT, VENV_BIN, pgbench, psql, run, switch_wal

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, infofile, mirror, wal, wal_store

INVENTORIES = dict(
    (name, os.path.join(ROOT, 'tests', 'integration', name + '.yml'))
    for name in ('with-mirror', 'mirror-promoted', 'mirror-returned')
)
PRIMARY_HOME, MIRROR_HOME = '/var/lib/barman', '/var/lib/barman-dr'
LOST = '/var/lib/barman-lost.pg1'  # where the drill moves backup1's catalog of pg1 (lab down removes it)
PRIMARY = catalog.ServerLayout(PRIMARY_HOME, 'pg1')
MIRROR = catalog.ServerLayout(MIRROR_HOME, 'pg1')
# What this collection documents for a mirror's WAL (README, "A mirror in another site"): forwarded as it arrives,
# so within seconds; the test waits at most this long for a segment to reach the mirror.
LAG_LIMIT_SECONDS = 60
DRILL = '/srv/barman-lab/pg1/drills/from-mirror'
ROWS = 1000


def playbook(name, *args, inventory='with-mirror', check=True):
    argv = ['ansible-playbook', '-i', INVENTORIES[inventory], os.path.join('playbooks', name)] + list(args)
    return run(argv, check=check)


def on_mirror(module, params, inventory='with-mirror', check=True):
    """A module of the collection run on backup-dr as its barman user; its JSON result."""
    proc = run(
        [
            'ansible',
            '-i',
            INVENTORIES[inventory],
            'backup-dr',
            '-b',
            '--become-user',
            'barman-dr',
            '-o',
            '-m',
            'barman.postgresql.' + module,
            '-a',
            json.dumps(params),
        ],
        check=check,
    )
    return json.loads(proc.stdout.split(' => ', 1)[1])


def as_mirror_user(*argv, check=False):
    return run(['runuser', '-u', 'barman-dr', '--'] + list(argv), check=check)


def mirror_ssh(*remote):
    """The mirror's own key to backup1's barman user: what the catalog reader lets it do."""
    return as_mirror_user(
        'ssh',
        '-i',
        MIRROR_HOME + '/.ssh/barman_mirror',
        '-o',
        'IdentitiesOnly=yes',
        '-o',
        'BatchMode=yes',
        '-o',
        'UserKnownHostsFile=' + MIRROR_HOME + '/.ssh/known_hosts',
        'barman@127.0.0.21',
        '--',
        *remote,
    )


def ids(layout):
    return list(infofile.backup_infos(layout)) if os.path.isdir(layout.meta_dir) else []


def tree_digests(path):
    """{relative path: sha256} of every file below ``path``."""
    digests = {}
    for directory, _dirs, files in os.walk(path):
        for name in files:
            full = os.path.join(directory, name)
            with open(full, 'rb') as handle:
                digests[os.path.relpath(full, path)] = hashlib.sha256(handle.read()).hexdigest()
    return digests


def assert_same_backup(backup_id):
    with open(PRIMARY.backup_info_path(backup_id)) as source, open(MIRROR.backup_info_path(backup_id)) as copy:
        assert copy.read() == source.read(), 'backup.info of %s differs' % backup_id
    primary_files = tree_digests(PRIMARY.backup_dir(backup_id))
    assert primary_files and tree_digests(MIRROR.backup_dir(backup_id)) == primary_files, backup_id


def segments(layout):
    names = wal_store.WalArchive(layout.barman_home, layout.server).archived_names()
    return [n for n in names if wal.parse_wal_name(n).kind == 'segment']


def wait_for_mirror_wal(name):
    """Poll (no playbook runs meanwhile) until the mirror holds WAL ``name``; the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < LAG_LIMIT_SECONDS:
        if name in segments(MIRROR):
            return time.monotonic() - started
        time.sleep(0.2)
    raise AssertionError(
        '%s did not reach the mirror within %d s; the primary forwarder says: %s'
        % (name, LAG_LIMIT_SECONDS, sorted(os.listdir(os.path.join(PRIMARY.root, 'mirrors'))))
    )


def wait_on_primary(name):
    deadline = time.monotonic() + LAG_LIMIT_SECONDS
    while name not in segments(PRIMARY):
        assert time.monotonic() < deadline, '%s never reached backup1' % name
        time.sleep(0.2)


@pytest.fixture(scope='module')
def mirrored(configured):
    # A mirror of an earlier run, and the leftovers of its drill, start afresh.
    run([LAB, 'site-up', 'backup1'])
    shutil.rmtree(MIRROR.root, ignore_errors=True)
    shutil.rmtree(LOST, ignore_errors=True)
    setup = playbook('setup.yml')
    assert 'backup-dr' in setup.stdout
    psql(
        'pg1', 'DROP TABLE IF EXISTS mirrored; CREATE TABLE mirrored (id int PRIMARY KEY, at timestamptz DEFAULT now())'
    )
    psql('pg1', 'INSERT INTO mirrored (id) SELECT g FROM generate_series(1, %d) g' % ROWS)
    playbook('backup.yml', '-e', 'barman_retention_policy=')
    yield
    # Back to the lab's usual estate for the tests that follow: backup1 up and keeping pg1 again. pg1 archived
    # into backup-dr meanwhile, so backup1's catalog of it has a hole that setup.yml's proof would rightly
    # refuse: it starts afresh (as test_many_servers does for pg2).
    run([LAB, 'site-up', 'backup1'])
    clear(DRILL)
    for path in (PRIMARY.root, LOST, MIRROR.root):
        shutil.rmtree(path, ignore_errors=True)
    # A forwarding file of a mirror the inventory no longer has goes; a catalog that never forwarded (pg1's, new)
    # is no warning.
    forwarding = os.path.join(PRIMARY_HOME, 'pg2', 'mirrors')
    gone = os.path.join(forwarding, 'backup-gone.json')
    made = not os.path.isdir(forwarding)
    os.makedirs(forwarding, exist_ok=True)
    pathlib.Path(gone).write_text('{}')
    try:
        restored = run(['ansible-playbook', os.path.join('playbooks', 'setup.yml')])
        assert not os.path.exists(gone)
        assert 'is not a directory' not in restored.stderr, restored.stderr
    finally:
        if made:
            shutil.rmtree(forwarding, ignore_errors=True)


def test_the_mirror_holds_the_same_backups_and_follows_the_wal(mirrored):
    assert ids(MIRROR) == ids(PRIMARY) and ids(PRIMARY), (ids(MIRROR), ids(PRIMARY))
    for backup_id in ids(PRIMARY):
        assert_same_backup(backup_id)
    newest = ids(MIRROR)[-1]
    assert os.stat(os.path.join(MIRROR.backup_data_dir(newest), 'PG_VERSION')).st_mode & 0o777 == 0o600
    assert oct(os.stat(MIRROR.root).st_mode & 0o777) == '0o700'

    # 30 s of pgbench, then the WAL reaches the mirror by itself: no playbook runs meanwhile.
    run(pgbench('pg1', '-i', '-q', '-s', '5', 'postgres'))
    run(pgbench('pg1', '-T', '30', '-c', '2', 'postgres'))
    switched = switch_wal('pg1')
    wait_on_primary(switched)
    wait_for_mirror_wal(switched)
    primary, copied = segments(PRIMARY), set(segments(MIRROR))
    assert [n for n in primary if n not in copied] == [], 'the mirror lacks WAL the primary holds'
    archive, copy = (wal_store.WalArchive(home, 'pg1') for home in (PRIMARY_HOME, MIRROR_HOME))
    for name in primary:  # same bytes, file by file (compression aside)
        assert wal_store.content_digest(copy.locate(name)) == wal_store.content_digest(archive.locate(name)), name

    # pg_wal_archive check on the mirror measures its lag behind the primary (nothing behind now).
    check = on_mirror('pg_wal_archive', dict(action='check', server='pg1', barman_home=MIRROR_HOME))
    assert check['mirror']['mirror_of'] == 'backup1' and check['mirror']['behind_segments'] == 0, check['mirror']
    assert check['problems'] == [], check['problems']
    status = playbook('status.yml', '-e', 'status_report=', check=False)
    assert 'BARMAN MIRROR backup-dr: OK - pg1' in status.stdout, status.stdout[-3000:]


def test_barman_as_a_passive_node_reads_the_mirrors_catalog(mirrored):
    directory = pathlib.Path(tempfile.mkdtemp(prefix='barman-passive-'))  # not under root's 0700 pytest tree
    # A Barman passive node: primary_ssh_command names the primary backup server it would sync from.
    (directory / 'barman.conf').write_text(
        '[barman]\nbarman_user = barman-dr\nbarman_home = %s\nlog_file = %s/barman.log\ncompression = gzip\n'
        '[pg1]\ndescription = pg1 mirrored\nconninfo = host=127.0.0.11 port=5441 user=barman dbname=postgres\n'
        'ssh_command = ssh -o BatchMode=yes postgres@127.0.0.11\nbackup_method = rsync\narchiver = on\n'
        'primary_ssh_command = ssh -o BatchMode=yes barman@127.0.0.21\n' % (MIRROR_HOME, directory)
    )
    os.chmod(directory, 0o755)
    shutil.chown(directory, 'barman-dr', 'barman-dr')
    config = str(directory / 'barman.conf')
    try:
        listing = run(['runuser', '-u', 'barman-dr', '--', BARMAN, '-c', config, 'list-backups', 'pg1']).stdout
        for backup_id in ids(MIRROR):
            assert backup_id in listing, listing
        newest = ids(MIRROR)[-1]
        shown = run(['runuser', '-u', 'barman-dr', '--', BARMAN, '-c', config, 'show-backup', 'pg1', newest]).stdout
        assert newest in shown and 'DONE' in shown, shown
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_an_interrupted_copy_never_appears_and_the_next_run_completes_it(mirrored):
    psql('pg1', 'INSERT INTO mirrored (id) SELECT g FROM generate_series(%d, %d) g' % (ROWS + 1, ROWS + 100))
    playbook('backup.yml', '--limit', 'pg1', '-e', 'barman_retention_policy=')  # --limit: no mirror copy
    backup_id = ids(PRIMARY)[-1]
    assert backup_id not in ids(MIRROR)
    partial = mirror.partial_dir(MIRROR, backup_id)
    # A slow link, so that the site can be lost in the middle of the copy.
    copying = subprocess.Popen(
        [
            'ansible-playbook',
            '-i',
            INVENTORIES['with-mirror'],
            os.path.join('playbooks', 'mirror.yml'),
            '-e',
            'barman_mirror_bandwidth_limit=2000',
        ],
        cwd=ROOT,
        env=dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ['PATH'], ANSIBLE_CONFIG=ROOT + '/ansible.cfg'),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not (os.path.isdir(partial) and sum(len(f) for _d, _s, f in os.walk(partial)) > 20):
        assert copying.poll() is None and time.monotonic() < deadline, 'the copy never started: %s' % (
            copying.communicate()[0][-3000:] if copying.poll() is not None else 'still running'
        )
        time.sleep(0.05)
    run([LAB, 'site-down', 'backup1'])
    output = copying.communicate()[0]
    try:
        assert copying.returncode != 0, output[-3000:]
        assert 'RSYNC_FAILED' in output or 'SSH_FAILED' in output, output[-3000:]
        assert backup_id not in ids(MIRROR), 'a partial copy appeared in the catalog'
        assert os.path.isdir(partial), 'the partial copy is kept for the next run'
    finally:
        run([LAB, 'site-up', 'backup1'])
    playbook('mirror.yml')
    assert backup_id in ids(MIRROR) and not os.path.exists(partial)
    assert_same_backup(backup_id)


def test_the_mirror_key_only_reads_its_servers_catalogs(mirrored):
    listing = json.loads(mirror_ssh('list', 'pg1').stdout)
    assert [b['id'] for b in listing['backups']] == ids(PRIMARY)
    for request in (['bash', '-c', 'id'], ['list', 'pg2'], ['rm', '-rf', PRIMARY.root], ['put', 'x', '1']):
        refused = mirror_ssh(*request)
        assert refused.returncode != 0 and 'barman-catalog-reader' in refused.stderr, (request, refused.stderr)
    assert os.path.isdir(PRIMARY.root)
    rsh = (
        'ssh -i %s/.ssh/barman_mirror -o IdentitiesOnly=yes -o BatchMode=yes -o UserKnownHostsFile=%s/.ssh/known_hosts'
        % (
            MIRROR_HOME,
            MIRROR_HOME,
        )
    )
    backup_dir = PRIMARY.backup_dir(ids(PRIMARY)[-1])
    before = tree_digests(backup_dir)
    scratch = MIRROR_HOME + '/scratch'
    as_mirror_user('mkdir', '-p', scratch)
    attempts = [
        ['rsync', '-a', '-e', rsh, 'barman@127.0.0.21:' + PRIMARY_HOME + '/.pgpass', scratch + '/'],  # a secret
        ['rsync', '-a', '-e', rsh, 'barman@127.0.0.21:' + PRIMARY.wals_dir + '/', scratch + '/'],  # not a backup
        ['rsync', '-a', '-e', rsh, scratch + '/', 'barman@127.0.0.21:' + backup_dir + '/'],  # a write
        ['rsync', '-a', '--remove-source-files', '-e', rsh, 'barman@127.0.0.21:' + backup_dir + '/', scratch + '/'],
    ]
    other = catalog.ServerLayout(PRIMARY_HOME, 'pg2')  # on backup1 too, from the lab's own inventory
    if ids(other):
        attempts.append(
            ['rsync', '-a', '-e', rsh, 'barman@127.0.0.21:' + other.backup_dir(ids(other)[-1]) + '/', scratch]
        )
    for argv in attempts:
        refused = as_mirror_user(*argv)
        assert refused.returncode != 0 and 'barman-catalog-reader: refused' in refused.stderr, (argv, refused.stderr)
    assert tree_digests(backup_dir) == before, 'the backup changed'
    assert not os.path.exists(scratch + '/.pgpass')
    # backup1's forwarding key reaches backup-dr's WAL receiver of pg1 and nothing else.
    forward = run(
        [
            'runuser',
            '-u',
            'barman',
            '--',
            'ssh',
            '-i',
            PRIMARY_HOME + '/.ssh/barman_forward_pg1',
            '-o',
            'IdentitiesOnly=yes',
            '-o',
            'BatchMode=yes',
            '-o',
            'UserKnownHostsFile=' + PRIMARY_HOME + '/.ssh/known_hosts',
            'barman-dr@127.0.0.23',
            '--',
            'bash',
            '-c',
            'id',
        ],
        check=False,
    )
    assert forward.returncode != 0 and 'barman-wal-receiver' in forward.stderr, forward.stderr


def test_retention_on_the_mirror_is_its_own_and_the_primary_waits_for_the_mirror(mirrored):
    playbook('backup.yml', '-e', 'barman_retention_policy=')  # one more on both: two at least
    playbook('mirror.yml', '-e', json.dumps(dict(barman_mirror_retention_policy='REDUNDANCY 1')))
    copied = ids(MIRROR)
    assert len(copied) == 1 and copied[0] == ids(PRIMARY)[-1], (copied, ids(PRIMARY))
    assert len(ids(PRIMARY)) > 1, 'the mirror removed nothing on the primary'
    mirrored_newest = copied[0]

    playbook('backup.yml', '--limit', 'pg1', '-e', 'barman_retention_policy=')
    uncopied = ids(PRIMARY)[-1]
    # REDUNDANCY 1 makes every older backup obsolete; the one the mirror has not copied yet waits for it.
    retained = playbook('backup.yml', '--limit', 'pg1', '-e', json.dumps(dict(barman_retention_policy='REDUNDANCY 1')))
    assert uncopied in ids(PRIMARY), retained.stdout[-2000:]
    assert mirrored_newest not in ids(PRIMARY) and mirrored_newest in ids(MIRROR)
    assert len(ids(PRIMARY)) == 2
    playbook(
        'backup.yml',
        '--limit',
        'pg1',
        '-e',
        json.dumps(dict(barman_retention_policy='REDUNDANCY 1', barman_mirror_wait=False)),
    )
    assert uncopied not in ids(PRIMARY) and len(ids(PRIMARY)) == 1
    playbook('mirror.yml', '-e', 'barman_mirror_retention_policy=')
    assert ids(MIRROR) == [mirrored_newest] + ids(PRIMARY)
    # Without waiting for the mirror, retention still sent it first what it lacked: the segment the backup's start
    # closed, which the receiver's forwarder (at the lowest priority, behind the copy) may not have sent yet. So
    # the mirror's archive has no hole after its older backup (the next test recovers from it and promotes it).
    check = on_mirror('pg_wal_archive', dict(action='check', server='pg1', barman_home=MIRROR_HOME, switch_wal=False))
    assert check['continuity']['missing'] == [], check['continuity']


def test_site_loss_recovery_from_the_mirror_then_it_takes_over(mirrored):
    psql('pg1', 'INSERT INTO mirrored (id) SELECT g FROM generate_series(%d, %d) g' % (ROWS + 101, ROWS + 200))
    committed = int(psql('pg1', 'SELECT count(*) FROM mirrored'))
    time.sleep(1)
    target = datetime.datetime.now(datetime.timezone.utc)
    time.sleep(1)
    psql('pg1', 'INSERT INTO mirrored (id) SELECT g FROM generate_series(%d, %d) g' % (ROWS + 201, ROWS + 300))
    switched = switch_wal('pg1')
    wait_on_primary(switched)
    wait_for_mirror_wal(switched)
    # What the mirror lacks when the site goes is lost to it (PostgreSQL counted it archived): the drill loses the
    # site once the mirror holds every segment the primary does, and says which it lacks otherwise.
    deadline = time.monotonic() + LAG_LIMIT_SECONDS
    while set(segments(PRIMARY)) - set(segments(MIRROR)):
        assert time.monotonic() < deadline, 'the mirror lacks %s (forwarder state: %s)' % (
            sorted(set(segments(PRIMARY)) - set(segments(MIRROR))),
            [
                catalog.read_text(os.path.join(PRIMARY.root, 'mirrors', n))
                for n in ('backup-dr.forwarded', 'backup-dr.error')
            ],
        )
        time.sleep(0.2)

    # backup1's site is lost: no login there, its catalog of pg1 gone.
    run([LAB, 'site-down', 'backup1'])
    os.rename(PRIMARY.root, LOST)
    clear(DRILL)
    recovered = playbook(
        'recover.yml',
        '-e',
        json.dumps(dict(server='pg1', recover_dir=DRILL, recover_port=6441, target_time=target.isoformat(' '))),
        '-e',
        'from=backup-dr',
    )
    assert 'recovered from backup' in recovered.stdout
    with open(MIRROR_HOME + '/.ssh/id_ed25519.pub') as key, open('/var/lib/postgresql/.ssh/authorized_keys') as keys:
        assert key.read().split()[1] not in keys.read(), "the mirror's key is let in for a recovery only"
    try:
        assert query(6441, 'SELECT count(*) FROM mirrored') == [str(committed)]
    finally:
        stop_cluster(DRILL)

    # The mirror takes over: pg1 names it in the inventory, setup.yml promotes its catalog, archiving goes on.
    promoted = playbook('setup.yml', inventory='mirror-promoted')
    assert mirror.mirror_of(MIRROR) is None
    assert 'archive continuous' in promoted.stdout
    for number in range(3):
        psql('pg1', 'INSERT INTO mirrored (id) VALUES (%d)' % (ROWS + 1000 + number))
        last = switch_wal('pg1')
    wait_for_mirror_wal(last)
    check = on_mirror(
        'pg_wal_archive',
        dict(action='check', server='pg1', barman_home=MIRROR_HOME, switch_wal=False),
        inventory='mirror-promoted',
    )
    assert check['problems'] == [] and check['continuity']['missing'] == [], check
    assert 'mirror' not in check

    # The old primary comes back, asked to be a mirror of the new one: its own catalog was a primary's, so it
    # is refused, clearly, and nothing of it changes.
    run([LAB, 'site-up', 'backup1'])
    os.rename(LOST, PRIMARY.root)
    before = tree_digests(PRIMARY.root)
    returned = playbook('setup.yml', inventory='mirror-returned', check=False)
    assert returned.returncode != 0
    assert 'MIRROR_REFUSED' in returned.stdout or 'written as its primary backup server' in returned.stdout
    assert 'move %s aside' % PRIMARY.root in returned.stdout, returned.stdout[-3000:]
    assert tree_digests(PRIMARY.root) == before and mirror.mirror_of(PRIMARY) is None
