# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tests for runtime/walforwarder.py: a primary's archive forwarded to a mirror's real receiver.

Two real catalogs; WAL reaches the primary through its receiver, and the mirror through a stand-in ``ssh``
(first on PATH) that runs the mirror's receiver as its forced command would: SSH_ORIGINAL_COMMAND is the
remote command, the server fixed."""

import hashlib
import io
import json
import os
import random
import shutil
import stat
import struct
import subprocess
import sys
import threading
import time

import pytest

from ansible_collections.barman.postgresql.plugins.filter.runtime import COLLECTION_ROOT, runtime_files
from ansible_collections.barman.postgresql.plugins.module_utils import catalog, lockfile, wal, wal_store, xlogdb
from ansible_collections.barman.postgresql.plugins.module_utils.errors import EXIT_OK, EXIT_REFUSED, EXIT_TEMPORARY
from ansible_collections.barman.postgresql.runtime import walforwarder, walreceiver

SEG = 1024 * 1024
SYSID = 7319180283384717360
SERVER = 'pg1'
MIRROR = 'backup-dr'
HOST = '127.0.0.23'
HISTORY_2 = b'1\t0/380000\tno recovery target specified\n'
# What PostgreSQL writes at the end of a base backup that started in segment 2 (1 MB segments): named
# after that segment, archived once the backup ends, after the segments written meanwhile.
BACKUP_NAME = '000000010000000000000002.00000028.backup'
BACKUP_HISTORY = (
    b'START WAL LOCATION: 0/200028 (file 000000010000000000000002)\n'
    b'STOP WAL LOCATION: 0/300100 (file 000000010000000000000003)\n'
    b'CHECKPOINT LOCATION: 0/200060\n'
    b'START TIMELINE: 1\n'
)
# Where the checkout is importable from (tests/conftest.py links it there): the stand-in ssh needs it too.
COLLECTIONS = os.path.abspath(walreceiver.__file__)
for _level in range(5):  # runtime, postgresql, barman, ansible_collections
    COLLECTIONS = os.path.dirname(COLLECTIONS)

FAKE_SSH = r"""#!{python}
import json, os, sys
sys.path.insert(0, {collections!r})
here = os.path.dirname(os.path.abspath(__file__))
argv = sys.argv[1:]
with open(os.path.join(here, 'calls.jsonl'), 'a') as log:
    log.write(json.dumps(argv) + '\n')
host = argv[argv.index('--') - 1].split('@', 1)[1]
if os.path.exists(os.path.join(here, 'unreachable-' + host)):
    sys.stderr.write('ssh: connect to host %s port 22: Connection refused\n' % host)
    sys.exit(255)
with open(os.path.join(here, 'hosts.json')) as handle:
    home = json.load(handle)[host]
from ansible_collections.barman.postgresql.runtime import walreceiver
os.environ['SSH_ORIGINAL_COMMAND'] = argv[-1]
sys.exit(walreceiver.main(['--barman-home', home, '--server', 'pg1', '--no-background']))
"""


def seg_name(segno, timeline=1):
    return wal.segment_name(timeline, segno, SEG)


def segment_bytes(name, seed=''):
    """A segment with a valid long page header (a .partial keeps its segment's), then varied content."""
    header = struct.pack(
        '<HHIQIIQII',
        0xD110,
        0x0002,
        wal.timeline_of(name),
        wal.segment_start_lsn(name[:24], SEG),
        0,
        0,
        SYSID,
        SEG,
        8192,
    )
    rnd = random.Random(name + seed)
    words = [bytes(rnd.getrandbits(8) for _count in range(16)) for _count in range(64)]
    return (header + b''.join(rnd.choice(words) for _count in range(SEG // 16)))[:SEG]


def deliver(home, name, data):
    """Deliver a file as a sender does, through the server's real receiver (nothing processed)."""
    stdin = data + hashlib.sha256(data).hexdigest().encode() + b'\n'
    stderr = io.StringIO()
    code = walreceiver.main(
        ['--barman-home', home, '--server', SERVER, '--no-background'],
        environ={'SSH_ORIGINAL_COMMAND': 'put %s %d' % (name, len(data))},
        stdin=io.BytesIO(stdin),
        stdout=io.BytesIO(),
        stderr=stderr,
    )
    assert code == walreceiver.EXIT_OK, stderr.getvalue()


def deliver_segments(home, *segnos, timeline=1):
    for segno in segnos:
        deliver(home, seg_name(segno, timeline), segment_bytes(seg_name(segno, timeline)))


def content(home, name):
    sink = io.BytesIO()
    wal_store.WalArchive(home, SERVER).send(name, sink)
    return sink.getvalue()


def names(home):
    return wal_store.WalArchive(home, SERVER).archived_names()


def read_json(path):
    with open(path) as handle:
        return json.load(handle)


class Site:
    """The primary's and the mirrors' catalogs, and the stand-in ssh that reaches the mirrors."""

    def __init__(self, tmp_path, monkeypatch):
        self.tmp = tmp_path
        self.primary = self.home('primary')
        self.mirror = self.home('mirror')
        self.bin = tmp_path / 'bin'
        self.bin.mkdir()
        script = self.bin / 'ssh'
        script.write_text(FAKE_SSH.format(python=sys.executable, collections=COLLECTIONS))
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
        self.hosts = {}
        monkeypatch.setenv('PATH', '%s%s%s' % (self.bin, os.pathsep, os.environ.get('PATH', '')))
        self.layout = catalog.ServerLayout(self.primary, SERVER)
        self.dir = os.path.join(self.layout.root, 'mirrors')

    def home(self, label):
        home = self.tmp / label
        home.mkdir()
        catalog.ensure_directories(catalog.ServerLayout(str(home), SERVER))
        return str(home)

    def configure(self, name=MIRROR, host=HOST, home=None, **changes):
        """Write <name>.json as setup.yml does, and let the stand-in ssh reach ``home`` at ``host``."""
        os.makedirs(self.dir, exist_ok=True)
        self.hosts[host] = home or self.mirror
        (self.bin / 'hosts.json').write_text(json.dumps(self.hosts))
        config = dict(
            mirror=name,
            ssh='barman_dr@%s' % host,
            port=22,
            identity_file=str(self.tmp / 'barman_forward_pg1'),
            known_hosts=str(self.tmp / 'known_hosts'),
        )
        config.update(changes)
        with open(os.path.join(self.dir, name + '.json'), 'w') as handle:
            json.dump(config, handle)

    def calls(self):
        path = self.bin / 'calls.jsonl'
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def unreachable(self, host=HOST, down=True):
        marker = self.bin / ('unreachable-' + host)
        if down:
            marker.write_text('')
        elif marker.exists():
            marker.unlink()

    def state(self, mirror=MIRROR, suffix='.forwarded'):
        path = os.path.join(self.dir, mirror + suffix)
        return read_json(path) if os.path.exists(path) else None

    def forward(self, **kwargs):
        return walforwarder.forward(self.primary, SERVER, **kwargs)

    def assert_mirror_holds_the_primarys(self):
        assert names(self.mirror) == names(self.primary)
        for name in names(self.primary):
            assert content(self.mirror, name) == content(self.primary, name), name


@pytest.fixture
def site(tmp_path, monkeypatch):
    return Site(tmp_path, monkeypatch)


# -- forwarding ---------------------------------------------------------------------------------------


def test_the_mirror_gets_the_same_files_then_only_what_is_new(site):
    deliver_segments(site.primary, 1, 2)
    wal_store.WalArchive(site.primary, SERVER).process_incoming('gzip')  # compressed in wals/
    deliver_segments(site.primary, 3, 4)  # still in incoming/
    site.configure()

    result = site.forward()[MIRROR]
    assert result == dict(mirror=MIRROR, forwarded=4, last=seg_name(4), behind=0, error=None, busy=False)
    site.assert_mirror_holds_the_primarys()
    processed = wal_store.WalArchive(site.mirror, SERVER).process_incoming('gzip')
    assert processed['archived'] == [seg_name(n) for n in (1, 2, 3, 4)] and not processed['errors']
    indexed = [entry.name for entry in xlogdb.read_xlog_db(catalog.ServerLayout(site.mirror, SERVER).xlog_db)]
    assert indexed == [seg_name(n) for n in (1, 2, 3, 4)]
    state = site.state()
    assert state['last'] == seg_name(4) and state['acknowledged'] == [seg_name(n) for n in (1, 2, 3, 4)]
    assert abs(state['time'] - time.time()) < 60
    assert site.state(suffix='.error') is None

    (argv,) = site.calls()
    assert argv[argv.index('--') - 1 :] == ['barman_dr@%s' % HOST, '--', 'stream'], 'one connection, one stream'
    for option in ('BatchMode=yes', 'StrictHostKeyChecking=yes', 'ConnectTimeout=10', 'IdentitiesOnly=yes'):
        assert option in argv
    assert 'IdentityFile=%s' % (site.tmp / 'barman_forward_pg1') in argv
    assert 'UserKnownHostsFile=%s' % (site.tmp / 'known_hosts') in argv

    again = site.forward()[MIRROR]
    assert (again['forwarded'], again['behind'], again['error']) == (0, 0, None)
    assert len(site.calls()) == 1, 'nothing to send: no connection either'

    deliver_segments(site.primary, 5, 6)
    later = site.forward()[MIRROR]
    assert (later['forwarded'], later['last'], later['behind']) == (2, seg_name(6), 0), 'only the new ones'
    site.assert_mirror_holds_the_primarys()


def test_a_mirror_made_anew_gets_everything_again_on_resync(site):
    deliver_segments(site.primary, 1, 2, 3)
    site.configure()
    assert site.forward()[MIRROR]['forwarded'] == 3
    # The mirror's catalog is made anew (a rebuilt host, setup.yml claiming it): the primary's state still says
    # it holds everything, so a plain pass sends nothing.
    shutil.rmtree(os.path.join(site.mirror, SERVER))
    catalog.ensure_directories(catalog.ServerLayout(site.mirror, SERVER))
    assert site.forward()[MIRROR]['forwarded'] == 0 and names(site.mirror) == []
    result = site.forward(resync=True)[MIRROR]
    assert (result['forwarded'], result['behind'], result['error']) == (3, 0, None)
    site.assert_mirror_holds_the_primarys()


def test_a_new_timeline_goes_in_order_and_files_archived_late_are_not_skipped(site):
    deliver_segments(site.primary, 1, 2, 3)
    site.configure()
    assert site.forward()[MIRROR]['last'] == seg_name(3)

    # A promotion: the new timeline's history first, then its segments...
    deliver(site.primary, '00000002.history', HISTORY_2)
    deliver_segments(site.primary, 3, 4, timeline=2)
    # ...the mirror's receiver refuses a timeline 2 segment before 00000002.history: it must go first.
    result = site.forward()[MIRROR]
    assert (result['forwarded'], result['last'], result['error']) == (3, seg_name(4, 2), None)
    assert names(site.mirror)[-3:] == ['00000002.history', seg_name(3, 2), seg_name(4, 2)]

    # Archived late, sorting before what the mirror already has: the old timeline's last segment, as
    # the promotion left it, and the history file of a backup that began in segment 2.
    partial = seg_name(3) + '.partial'
    deliver(site.primary, partial, segment_bytes(partial))
    deliver(site.primary, BACKUP_NAME, BACKUP_HISTORY)
    assert sorted([partial, BACKUP_NAME, '00000002.history'])[-1] == '00000002.history'
    late = site.forward()[MIRROR]
    assert (late['forwarded'], late['last'], late['behind'], late['error']) == (2, seg_name(4, 2), 0, None)
    site.assert_mirror_holds_the_primarys()
    assert site.forward()[MIRROR]['forwarded'] == 0, 'and only once'


def test_a_different_file_on_the_mirror_is_never_overwritten(site):
    deliver_segments(site.primary, *range(1, 17))
    theirs = segment_bytes(seg_name(3), seed='another cluster')
    deliver(site.mirror, seg_name(3), theirs)
    site.configure()

    result = site.forward()[MIRROR]
    assert result['last'] == seg_name(2) and result['behind'] >= 1 and not result['busy']
    # Sending stops at the refusal: only what was already on its way arrives after it.
    assert seg_name(16) not in names(site.mirror)
    assert result['error'].startswith('%s refused %s: ' % (MIRROR, seg_name(3)))
    assert 'a different file with that name is already archived' in result['error']
    assert content(site.mirror, seg_name(3)) == theirs, "the mirror's copy stays"
    error = site.state(suffix='.error')
    assert (error['wal'], error['refused'], error['error']) == (seg_name(3), True, result['error'])
    state = site.state()
    assert state['last'] == seg_name(2) and seg_name(3) not in state['acknowledged']
    for segno in (1, 2):
        assert content(site.mirror, seg_name(segno)) == content(site.primary, seg_name(segno))

    # The background does not send it again at each delivery (each try leaves a copy in its errors/)...
    calls = len(site.calls())
    again = site.forward()[MIRROR]
    assert (again['error'], again['forwarded'], len(site.calls())) == (result['error'], 0, calls)
    assert site.state(suffix='.error') == error
    # ...the command line does, at once; resolved on the mirror, forwarding goes on from there.
    out, err = io.StringIO(), io.StringIO()
    assert walforwarder.main(['--barman-home', site.primary, '--server', SERVER], out, err) == EXIT_TEMPORARY
    assert json.loads(out.getvalue())['error'].startswith('%s refused %s' % (MIRROR, seg_name(3)))
    assert len(site.calls()) == calls + 1
    os.unlink(os.path.join(catalog.ServerLayout(site.mirror, SERVER).incoming_dir, seg_name(3)))
    out = io.StringIO()
    assert walforwarder.main(['--barman-home', site.primary, '--server', SERVER], out, err) == EXIT_OK
    assert json.loads(out.getvalue())['last'] == seg_name(16)
    assert site.state(suffix='.error') is None, 'removed once forwarding succeeds again'
    site.assert_mirror_holds_the_primarys()


def test_an_unreachable_mirror_is_recorded_and_its_state_kept(site):
    deliver_segments(site.primary, 1, 2)
    site.configure()
    site.forward()
    before = site.state()
    deliver_segments(site.primary, 3)
    site.unreachable()

    stderr = io.StringIO()
    result = site.forward(stderr=stderr)[MIRROR]
    expected = 'cannot reach %s (ssh exit 255): ssh: connect to host %s port 22: Connection refused' % (MIRROR, HOST)
    assert result == dict(mirror=MIRROR, forwarded=0, last=seg_name(2), behind=1, error=expected, busy=False)
    assert site.state() == before
    error = site.state(suffix='.error')
    assert (error['error'], error['wal'], error['refused']) == (expected, None, False)
    assert expected in stderr.getvalue()

    site.unreachable(down=False)
    result = site.forward()[MIRROR]  # not a refusal: the next pass tries again
    assert (result['forwarded'], result['last'], result['error']) == (1, seg_name(3), None)
    assert site.state(suffix='.error') is None


def test_while_another_forwarder_holds_the_lock_nothing_is_sent(site):
    deliver_segments(site.primary, 1, 2)
    site.configure()
    lock = lockfile.ServerLock(os.path.join(site.dir, MIRROR + '.lock'), 'forward').acquire()
    try:
        result = site.forward()[MIRROR]
        assert result == dict(mirror=MIRROR, forwarded=0, last=None, behind=2, error=None, busy=True)
        assert site.calls() == [] and names(site.mirror) == []
        threading.Timer(0.3, lock.release).start()
        waited = site.forward(wait_seconds=30)[MIRROR]
    finally:
        lock.release()
    assert (waited['forwarded'], waited['behind'], waited['busy']) == (2, 0, False)


def test_what_arrives_during_a_pass_is_forwarded_by_it(site, monkeypatch):
    """A delivery whose own trigger found the lock taken: the forwarder looks again once it let go."""
    deliver_segments(site.primary, 1)
    site.configure()
    real_pass = walforwarder._forward_pass
    passes = []

    def pass_during_which_a_segment_arrives(*args):
        outcome = real_pass(*args)
        passes.append(outcome)
        if len(passes) == 1:
            deliver_segments(site.primary, 2)
        return outcome

    monkeypatch.setattr(walforwarder, '_forward_pass', pass_during_which_a_segment_arrives)
    result = site.forward()[MIRROR]
    assert len(passes) == 2 and (result['forwarded'], result['behind']) == (2, 0)
    site.assert_mirror_holds_the_primarys()


# -- the receiver's background work -------------------------------------------------------------------


@pytest.mark.parametrize('processor_busy', [False, True])
def test_the_receivers_background_work_forwards_what_the_archive_holds(site, processor_busy, monkeypatch):
    monkeypatch.setattr(walreceiver, 'PROCESS_LOCK_WAIT_SECONDS', 0.3)  # a processor that holds on past it
    deliver_segments(site.primary, 1, 2)
    site.configure()
    archive = wal_store.WalArchive(site.primary, SERVER)
    lock = lockfile.ServerLock(site.layout, 'archive-process')
    if processor_busy:
        lock.acquire()  # another processing run: forwarding what is archived is still right
    try:
        walreceiver._process_and_forward(archive, 'gzip')
    finally:
        lock.release()
    assert archive.incoming_backlog() == ([seg_name(1), seg_name(2)] if processor_busy else [])
    site.assert_mirror_holds_the_primarys()
    assert site.state()['last'] == seg_name(2)
    assert not os.path.exists(site.layout.process_log)


def test_background_work_waits_for_a_processor_that_listed_incoming_before_this_delivery(site):
    deliver_segments(site.primary, 1, 2)
    archive = wal_store.WalArchive(site.primary, SERVER)
    lock = lockfile.ServerLock(site.layout, 'archive-process').acquire()
    releaser = threading.Timer(0.5, lock.release)  # the other processor ends without these files
    releaser.start()
    try:
        walreceiver._process_and_forward(archive, 'gzip')
    finally:
        releaser.join()
    assert archive.incoming_backlog() == [], 'the files it found waiting are indexed, not left for a next delivery'
    assert list(archive.archived_names()) == [seg_name(1), seg_name(2)]


def test_the_background_work_logs_a_failure_of_forwarding(site, monkeypatch):
    deliver_segments(site.primary, 1)
    site.configure()

    def broken(*_args, **_kwargs):
        raise OSError('no space left for the state')

    monkeypatch.setattr(walforwarder, 'forward', broken)
    walreceiver._process_and_forward(wal_store.WalArchive(site.primary, SERVER), 'gzip')
    with open(site.layout.process_log) as log:
        assert 'forwarding to the mirrors: no space left for the state' in log.read()


def test_a_server_without_mirrors_has_nothing_to_forward(site):
    deliver_segments(site.primary, 1)
    assert site.forward() == {}
    out, err = io.StringIO(), io.StringIO()
    assert walforwarder.main(['--barman-home', site.primary, '--server', SERVER], out, err) == EXIT_OK
    assert out.getvalue() == '' and site.calls() == []
    code = walforwarder.main(['--barman-home', site.primary, '--server', SERVER, '--mirror', MIRROR], out, err)
    assert code == EXIT_REFUSED and 'server pg1 has no mirror backup-dr' in err.getvalue()


# -- configuration and the command line ---------------------------------------------------------------


@pytest.mark.parametrize(
    'changes, fragment',
    [
        (dict(mirror='backup-other'), 'it names mirror'),
        (dict(ssh='127.0.0.23'), 'must be user@host'),
        (dict(ssh='-oProxyCommand=x@127.0.0.23'), 'not a valid user name'),
        (dict(ssh='barman@host name'), 'neither a hostname nor an IP address'),
        (dict(port=70000), 'port must be a number'),
        (dict(identity_file='relative/key'), 'must be an absolute path'),
        (dict(known_hosts='/dev/null'), 'host keys are always verified'),
        (dict(known_hosts=None), '"known_hosts" must be a non-empty string'),
    ],
)
def test_an_unusable_configuration_is_an_error_of_that_mirror_only(site, changes, fragment):
    deliver_segments(site.primary, 1)
    site.configure('backup-bad', host='127.0.0.24', **changes)
    site.configure()
    results = site.forward()
    assert fragment in results['backup-bad']['error'] and results['backup-bad']['behind'] == 1
    assert fragment in site.state('backup-bad', '.error')['error']
    assert results[MIRROR]['error'] is None and results[MIRROR]['behind'] == 0, 'the other mirror goes on'
    with pytest.raises(walforwarder.MirrorConfigError, match=fragment):
        walforwarder.read_mirror(site.layout, 'backup-bad')


def test_a_configuration_that_is_not_json_is_reported(site):
    site.configure()
    with open(os.path.join(site.dir, MIRROR + '.json'), 'w') as handle:
        handle.write('{"mirror": ')
    with pytest.raises(walforwarder.MirrorConfigError, match='cannot read'):
        walforwarder.read_mirror(site.layout, MIRROR)


def test_the_configuration_is_read_and_validated(site):
    site.configure(port=2222)
    mirror = walforwarder.read_mirror(site.layout, MIRROR)
    assert mirror.name == MIRROR and tuple(mirror.target) == ('barman_dr', HOST, 2222)
    assert walforwarder.configured_mirrors(site.layout) == [MIRROR]
    argv = walforwarder.mirror_ssh_argv(mirror)
    assert argv[0] == 'ssh' and argv[-3:] == ['barman_dr@%s' % HOST, '--', 'stream'] and '2222' in argv
    with pytest.raises(walforwarder.MirrorConfigError, match='not valid'):
        walforwarder.read_mirror(site.layout, '../pg2/mirrors/x')


def test_the_command_line_prints_one_line_per_mirror_and_says_whether_all_caught_up(site, tmp_path):
    deliver_segments(site.primary, 1, 2)
    site.configure()
    site.configure('backup-far', host='127.0.0.24', home=site.home('far'))
    site.unreachable('127.0.0.24')
    out, err = io.StringIO(), io.StringIO()
    code = walforwarder.main(['--barman-home', site.primary, '--server', SERVER], out, err)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == EXIT_TEMPORARY and [line['mirror'] for line in lines] == ['backup-dr', 'backup-far']
    assert lines[0]['behind'] == 0 and lines[1]['behind'] == 2 and 'cannot reach backup-far' in lines[1]['error']

    site.unreachable('127.0.0.24', down=False)
    out = io.StringIO()
    code = walforwarder.main(['--barman-home', site.primary, '--server', SERVER, '--mirror', 'backup-far'], out, err)
    assert code == EXIT_OK
    assert json.loads(out.getvalue()) == dict(
        mirror='backup-far', forwarded=2, last=seg_name(2), behind=0, error=None, busy=False
    )
    assert names(str(tmp_path / 'far')) == names(site.primary)


def test_the_forwarder_runs_from_the_files_the_role_installs(tmp_path):
    """Its imports bring what it needs (runtime_files), nothing from site-packages (-I -S, as launchers)."""
    lib = tmp_path / 'lib'
    installed = runtime_files(['runtime/walreceiver.py'])
    assert 'runtime/walforwarder.py' in installed and 'runtime/framing.py' in installed, 'the receiver brings it'
    for relative in runtime_files(['runtime/walforwarder.py']):
        target = lib / 'ansible_collections' / 'barman' / 'postgresql' / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(os.path.join(COLLECTION_ROOT, relative), str(target))
    code = (
        'import sys; sys.path.insert(0, %r)\n'
        'from ansible_collections.barman.postgresql.runtime.walforwarder import main\n'
        'sys.exit(main())' % str(lib)
    )
    proc = subprocess.run(
        [sys.executable, '-I', '-S', '-c', code, '--help'], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert 'barman-wal-forwarder' in proc.stdout and '--wait' in proc.stdout
