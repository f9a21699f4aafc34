# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL forwarder: a primary backup server sends the WAL it archived on to its mirrors.

  barman-wal-forwarder --barman-home H --server S [--mirror M] [--wait SECONDS]

A mirror (a backup server of another site) keeps a copy of a server's catalog, and its WAL follows the
primary's archive continuously, with no scheduler and no daemon: once the primary's receiver has stored
and indexed a delivery, its background grandchild (walreceiver._process_and_forward) calls forward().
That plays the sender's part towards each mirror: one ssh connection to the mirror's barman-wal-receiver
(the primary's forward key is forced to it, for this one server), its stream verb, and each file
decompressed and framed as the sender frames it (framing.py). The mirror's receiver checks, stores,
compresses and indexes as for any server, and refuses a different file under an archived name: a WAL
file on a mirror is always the same bytes as on the primary. The command line catches a mirror up in the
foreground (the playbooks run it; the first copy of a whole archive too) and prints one JSON line per
mirror: {"mirror", "forwarded", "last", "behind", "error", "busy"}; it exits 0 when every mirror has
everything, EXIT_TEMPORARY otherwise.

In <barman_home>/<server>/mirrors/, for each mirror (setup.yml writes the .json, forward() the others):
  <mirror>.json       {"mirror": NAME, "ssh": "user@host", "port": 22, "identity_file": PATH, "known_hosts": PATH}
  <mirror>.forwarded  {"last": WAL, "time": EPOCH, "acknowledged": [WAL, ...]}: the files the mirror answered
                      as durable, and the last of the archive's names up to which it answered every one
  <mirror>.error      {"time": EPOCH, "error": WHY, "wal": WAL or null, "refused": BOOL} while forwarding
                      fails; removed once a pass succeeds
  <mirror>.lock       flock: one forwarder per mirror at a time

Order. Files go in the order of their names (WalArchive.archived_names()), which is how PostgreSQL archives
them nearly always; in particular 00000002.history sorts after every segment of timeline 1 and before
those of timeline 2, which the mirror needs (its receiver refuses WAL of a timeline it holds no history
file of). A cursor alone ("all names up to LAST") would miss a file archived after one whose name sorts
after it: a file of an older timeline archived after the newer timeline's history (the .partial segment
that a promotion leaves comes after 00000002.history), but also a backup history file (named after the
backup's first segment, archived at its end) or a segment a sender delivered again after a failure. So
the state keeps the set of names the mirror acknowledged, and each pass sends, in name order, every
archived name not in it: a late file goes at the next pass, first; what retention removed from the
primary drops out of the set. "last" summarises it for people and status.

A pass stops at the first file the mirror refuses or fails to store, or when the connection fails, and
records why in <mirror>.error. A refused file is not sent again before REFUSED_RETRY_SECONDS (each try
leaves one more copy in the mirror's errors/) unless the command line asks; a failed one is retried by the
next pass. After a pass the lock is released and the archive looked at again: only a file that arrived
during the pass (its own trigger may have found the lock taken) makes it go on, so nothing loops.
"""

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set, TextIO

from ansible_collections.barman.postgresql.plugins.module_utils import catalog, lockfile, ssh, wal, wal_store
from ansible_collections.barman.postgresql.plugins.module_utils.errors import (
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_TEMPORARY,
    BarmanError,
    shown,
)
from ansible_collections.barman.postgresql.runtime import framing, pipes

MIRRORS_DIR = 'mirrors'
SSH_FAILED = 255
CONNECT_TIMEOUT_SECONDS = 10
# A long pass (a mirror's first copy of a whole archive) notes what was acknowledged this often, so that a
# pass cut short does not send it all again.
CHECKPOINT_SECONDS = 30
# How long a background pass leaves a refused file alone: a human must compare the two copies first.
REFUSED_RETRY_SECONDS = 3600
_MIRROR_NAME_RE = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z')

Mirror = collections.namedtuple('Mirror', 'name target identity_file known_hosts')
Mirror.__doc__ = "Where one mirror receives a server's WAL: its name, an ssh.SshTarget and the two key files."


# A file found neither in incoming/ nor in wals/ is looked for this many times (it may be moving between them).
VANISHED_TRIES = 5
# Passes of one call while names stay unacknowledged (a refusal or an error ends it sooner).
MAX_PASSES = 5


class MirrorConfigError(BarmanError, ValueError):
    """A mirror's configuration file is missing or cannot be used."""

    code = 'INVALID_ARGUMENT'


def mirrors_dir(layout: catalog.ServerLayout) -> str:
    return os.path.join(layout.root, MIRRORS_DIR)


def configured_mirrors(layout: catalog.ServerLayout) -> List[str]:
    """The names of the server's mirrors (one <mirror>.json each), sorted; [] when it has none."""
    try:
        entries = os.listdir(mirrors_dir(layout))
    except FileNotFoundError:
        return []
    # A name starting with '.' is a temporary file (atomic_write's, Ansible's).
    return sorted(entry[: -len('.json')] for entry in entries if entry.endswith('.json') and not entry.startswith('.'))


def read_mirror(layout: catalog.ServerLayout, name: str) -> Mirror:
    """The validated configuration of mirror ``name``, or MirrorConfigError."""
    if not isinstance(name, str) or not _MIRROR_NAME_RE.match(name) or '..' in name:
        raise MirrorConfigError(
            'mirror name %s is not valid' % shown(name),
            'Use 1 to 64 letters, digits, ".", "_" or "-", starting with a letter or digit',
            mirror=name,
        )
    path = os.path.join(mirrors_dir(layout), name + '.json')
    try:
        text = catalog.read_text(path)
        config = json.loads(text) if text is not None else None
    except (OSError, ValueError) as error:
        raise MirrorConfigError('cannot read %s: %s' % (path, error), 'Run setup.yml again', mirror=name) from None
    if config is None:
        raise MirrorConfigError(
            'server %s has no mirror %s (no %s)' % (layout.server, name, path),
            'Name a mirror of this server, or run setup.yml to configure it',
            mirror=name,
        )

    def refuse(why):
        return MirrorConfigError('%s is not a usable mirror configuration: %s' % (path, why), 'Run setup.yml again')

    if not isinstance(config, dict):
        raise refuse('it is not a JSON object')
    if config.get('mirror') != name:
        raise refuse('it names mirror %s, not %s as its file name says' % (shown(config.get('mirror')), name))
    for key in ('ssh', 'identity_file', 'known_hosts'):
        if not isinstance(config.get(key), str) or not config[key]:
            raise refuse('"%s" must be a non-empty string' % key)
    if '@' not in config['ssh']:
        raise refuse('"ssh" must be user@host, got %s' % shown(config['ssh']))
    user, _at, host = config['ssh'].rpartition('@')
    try:
        target = ssh.validate_ssh_target(user, host, config.get('port'))
        mirror = Mirror(name, target, config['identity_file'], config['known_hosts'])
        mirror_ssh_argv(mirror)  # refuses a key path ssh could misread, before any connection
    except (ssh.InvalidSshTarget, ssh.InvalidSshArgument) as error:
        raise refuse(_one_line(error)) from None
    return mirror


def mirror_ssh_argv(mirror: Mirror) -> List[str]:
    """ssh to the mirror's receiver, asking for its stream (its forced command knows the server)."""
    return ssh.ssh_argv(
        mirror.target,
        ['stream'],
        identity_file=mirror.identity_file,
        known_hosts_file=mirror.known_hosts,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
    )


def _one_line(error):
    return ' '.join(str(error).split())


def contiguous_last(names: Iterable[str], acknowledged: Set[str]) -> Optional[str]:
    """The last of the sorted ``names`` up to which every one is in ``acknowledged`` (None: not the first)."""
    last = None
    for name in names:
        if name not in acknowledged:
            break
        last = name
    return last


class MirrorState:
    """The forwarding files of one mirror, beside its configuration (see the module's docstring)."""

    def __init__(self, layout: catalog.ServerLayout, mirror: str) -> None:
        base = os.path.join(mirrors_dir(layout), mirror)
        self.forwarded_path = base + '.forwarded'
        self.error_path = base + '.error'
        self.lock_path = base + '.lock'
        self._stored = None  # (last, names) as last read or written: an unchanged state is not written again

    @staticmethod
    def _read_json(path):
        try:
            value = json.loads(catalog.read_text(path) or 'null')
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    def acknowledged(self, names: Sequence[str]) -> Set[str]:
        """The names the mirror acknowledged. A state without the list (written by hand, to skip what the
        mirror got otherwise) counts every name of ``names`` up to its "last"; an unreadable one, none: the
        mirror answers "identical" to what it has."""
        state = self._read_json(self.forwarded_path) or {}
        listed, last = state.get('acknowledged'), state.get('last')
        if isinstance(listed, list):
            found = set(name for name in listed if isinstance(name, str) and wal.is_wal_name(name))
        elif isinstance(last, str) and wal.is_wal_name(last):
            found = set(name for name in names if name <= last)
        else:
            found = set()
        self._stored = (last, found if isinstance(listed, list) else None)
        return set(found)

    def save(self, names: Sequence[str], acknowledged: Set[str]) -> None:
        """Write the state, unless it would say what it says: ``names`` is the archive as listed."""
        kept = acknowledged.intersection(names)  # what retention removed from the primary drops out
        last = contiguous_last(names, kept)
        if self._stored == (last, kept):
            return
        text = json.dumps(dict(last=last, time=int(time.time()), acknowledged=sorted(kept)))
        catalog.atomic_write(self.forwarded_path, text + '\n')
        self._stored = (last, kept)

    def error(self) -> Optional[Dict[str, Any]]:
        return self._read_json(self.error_path)

    def record_error(self, why: str, wal_name: Optional[str] = None, refused: bool = False) -> None:
        text = json.dumps(dict(time=int(time.time()), error=why, wal=wal_name, refused=refused))
        catalog.atomic_write(self.error_path, text + '\n')

    def forget(self) -> None:
        """Forget what the mirror acknowledged (its catalog was made anew): the next pass sends everything, and the
        mirror answers "identical" to what it holds."""
        for path in (self.forwarded_path, self.error_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self._stored = None

    def clear_error(self) -> None:
        try:
            os.unlink(self.error_path)
        except FileNotFoundError:
            pass


Failure = collections.namedtuple('Failure', 'why wal refused')


def _answer_failure(mirror, verdict, expected, answered, said):
    """What a "refused"/"error" answer (or one that makes no sense) means, as a Failure."""
    said = said.strip()
    prefix = 'refused %s: ' % answered
    if said.startswith(prefix):  # the receiver's reason repeats the verdict and the name
        said = said[len(prefix) :]
    if verdict == 'refused' and answered == expected:
        why = '%s refused %s: %s; nothing on %s was overwritten' % (mirror, expected, said, mirror)
        return Failure(why, expected, True)
    if verdict == 'refused' and answered == '-':
        return Failure('%s refused the stream before %s: %s' % (mirror, expected, said), expected, False)
    if verdict == 'error' and answered == expected:
        return Failure('%s could not store %s: %s' % (mirror, expected, said), expected, False)
    return Failure(
        '%s answered %s while %s was awaited' % (mirror, shown(' '.join((verdict, answered, said)).strip()), expected),
        expected,
        False,
    )


def _copy_out(wal_archive, name, content):
    """The original content of ``name`` into the file ``content``; False if the archive no longer holds it."""
    for attempt in range(VANISHED_TRIES):
        content.seek(0)
        content.truncate()
        try:
            wal_archive.send(name, content)
            content.flush()
            return True
        except (wal_store.WalNotFound, FileNotFoundError):
            # Moved from incoming/ into wals/ between locate's look and the open: another look finds it.
            time.sleep(0.05 * attempt)
    return False  # removed since the listing (retention), or still moving: the next pass looks again


def _ssh_failure(mirror, code, said, missing):
    lines = [line.strip() for line in said.decode('utf-8', errors='replace').splitlines() if line.strip()]
    said = ': %s' % lines[-1] if lines else ''
    if code == SSH_FAILED:
        why = 'cannot reach %s (ssh exit 255)%s' % (mirror, said)
    elif code < 0:
        why = 'the connection to %s was killed by signal %d' % (mirror, -code)
    else:
        why = 'the stream to %s ended (exit %d) before it acknowledged %s%s' % (mirror, code, missing, said)
    return Failure(why, None, False)


def _send(wal_archive, mirror, state, names, acknowledged, pending):
    """Send ``pending`` in order over one connection to the mirror's receiver, until a failure.

    ``acknowledged`` grows with the mirror's "ok" answers (they come in order, once each file is durable).
    Returns (how many it acknowledged, the Failure or None)."""
    guard = threading.Lock()
    in_flight = collections.deque()
    outcome = dict(count=0, failure=None)
    failed = threading.Event()
    directory = mirrors_dir(wal_archive.layout)  # the catalog's disk, not a small /tmp
    with tempfile.TemporaryFile(dir=directory) as said, tempfile.TemporaryFile(dir=directory) as content:
        proc = subprocess.Popen(mirror_ssh_argv(mirror), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=said)
        pipes.widen(proc.stdin)

        def read_answers():
            try:
                for line in proc.stdout:
                    verdict, _space, rest = line.decode('utf-8', errors='replace').strip().partition(' ')
                    answered, _space, why = rest.partition(' ')
                    with guard:
                        expected = in_flight.popleft() if in_flight else None
                        if verdict == 'ok' and answered == expected:
                            acknowledged.add(expected)  # durable there, even after a failure of an earlier file
                            outcome['count'] += 1
                            continue
                        if outcome['failure'] is None:
                            outcome['failure'] = _answer_failure(mirror.name, verdict, expected, answered, why)
                    failed.set()  # nothing more is sent; the answers to what is on its way are still read
            except Exception as error:  # unread answers would stall the stream: end it
                with guard:
                    why = 'cannot read the answers of %s: %s' % (mirror.name, error)
                    outcome['failure'] = outcome['failure'] or Failure(why, None, False)
                failed.set()
                proc.kill()

        reader = threading.Thread(target=read_answers)
        reader.start()
        vanished, checkpoint = set(), time.monotonic()
        try:
            for name in pending:
                if failed.is_set() or proc.poll() is not None:
                    break
                try:
                    if not _copy_out(wal_archive, name, content):
                        vanished.add(name)
                        continue
                except Exception as error:  # noqa: BLE001 - the primary's copy cannot be read: stop here
                    with guard:
                        outcome['failure'] = outcome['failure'] or Failure(
                            'cannot read %s from the archive of %s: %s' % (name, wal_archive.layout.server, error),
                            name,
                            False,
                        )
                    break
                with guard:  # known before its answer can come
                    in_flight.append(name)
                framing.send_file(content, name, proc.stdin)
                proc.stdin.flush()
                if time.monotonic() - checkpoint > CHECKPOINT_SECONDS:
                    with guard:
                        so_far = set(acknowledged)
                    state.save(names, so_far)
                    checkpoint = time.monotonic()
        except OSError:
            pass  # the connection broke: the exit code and what ssh said tell why
        finally:
            try:
                proc.stdin.close()  # the end of the stream: the receiver answers what it has, then exits
            except OSError:
                pass
            code = proc.wait()
            reader.join()
        said.seek(0)
        failure = outcome['failure']
        missing = [name for name in pending if name not in acknowledged and name not in vanished]
        if failure is None and missing:
            failure = _ssh_failure(mirror.name, code, said.read(), missing[0])
    return outcome['count'], failure


def _standing_refusal(state, pending, retry_refused_after):
    """The Failure a recent pass recorded for a refused file that is still to forward, or None: that file
    is not sent again yet."""
    error = state.error()
    if not error or error.get('refused') is not True or error.get('wal') not in pending:
        return None
    recorded = error.get('time')
    if isinstance(recorded, (int, float)) and time.time() - recorded < retry_refused_after:
        return Failure(str(error.get('error')), error['wal'], True)
    return None


def _forward_pass(wal_archive, mirror, state, names, retry_refused_after, stderr):
    """One pass, the lock held: send what the mirror has not acknowledged. Returns (count, why or None)."""
    acknowledged = state.acknowledged(names)
    pending = [name for name in names if name not in acknowledged]
    refused = _standing_refusal(state, pending, retry_refused_after)
    to_send = pending[: pending.index(refused.wal)] if refused else pending
    count, failure = _send(wal_archive, mirror, state, names, acknowledged, to_send) if to_send else (0, None)
    state.save(names, acknowledged)
    if failure is not None:
        state.record_error(_one_line(failure.why), failure.wal, failure.refused)
    elif refused:
        failure = refused  # left as it was recorded: its time says when to try again
    else:
        state.clear_error()
    if failure is not None and stderr is not None:
        stderr.write('barman-wal-forwarder: %s\n' % _one_line(failure.why))
    return count, failure and _one_line(failure.why)


def forward_to(
    wal_archive: wal_store.WalArchive,
    mirror_name: str,
    wait_seconds: float = 0,
    stderr: Optional[TextIO] = None,
    retry_refused_after: float = REFUSED_RETRY_SECONDS,
    resync: bool = False,
) -> Dict[str, Any]:
    """Forward to one mirror what it has not acknowledged; see forward()."""
    layout = wal_archive.layout
    state = MirrorState(layout, mirror_name)
    result = dict(mirror=mirror_name, forwarded=0, last=None, behind=None, error=None, busy=False)
    try:
        mirror = read_mirror(layout, mirror_name)
    except MirrorConfigError as error:
        result['error'] = _one_line(error)
        if os.path.isdir(mirrors_dir(layout)):
            state.record_error(result['error'])
        if stderr is not None:
            stderr.write('barman-wal-forwarder: %s\n' % result['error'])
        mirror = None
    passes = 0
    while mirror is not None:
        try:
            lock = lockfile.ServerLock(state.lock_path, 'forward', wait_seconds=wait_seconds).acquire()
        except lockfile.LockBusy:
            result['busy'] = passes == 0  # later, the holder goes on with what this one left
            break
        try:
            if resync and passes == 0:
                state.forget()
            names = wal_archive.archived_names()
            count, result['error'] = _forward_pass(wal_archive, mirror, state, names, retry_refused_after, stderr)
        finally:
            lock.release()
        passes += 1
        result['forwarded'] += count
        if result['error']:
            break
        # Looked at only now that the lock is free: a delivery whose own forwarder found it taken was
        # archived before that, so it is listed here. A name this pass did not see, or one it found moving
        # (vanished between the listing and the read), makes it go on, a few passes at most.
        now = wal_archive.archived_names()
        if not set(now).difference(state.acknowledged(now)) or passes >= MAX_PASSES:
            break
    names = wal_archive.archived_names()
    acknowledged = state.acknowledged(names)
    result['last'] = contiguous_last(names, acknowledged)
    result['behind'] = sum(1 for name in names if name not in acknowledged)
    return result


def forward(
    barman_home: str,
    server: str,
    mirror: Optional[str] = None,
    wait_seconds: float = 0,
    stderr: Optional[TextIO] = None,
    retry_refused_after: float = REFUSED_RETRY_SECONDS,
    resync: bool = False,
) -> Dict[str, Dict[str, Any]]:
    """Forward the server's archive to each of its mirrors (or only to ``mirror``), one after another.

    Returns {mirror: dict(mirror, forwarded, last, behind, error, busy)}: how many files it acknowledged in
    this call, the last archived name up to which it holds every one, how many it lacks, why forwarding
    stopped (None: it did not), and whether another forwarder held the lock (``wait_seconds``, 0: do not
    wait; then that one forwards). ``resync``: forget what each mirror acknowledged first (a mirror's catalog
    made anew lacks what the primary's state says it has). {} when the server has no mirrors. MirrorConfigError
    when ``mirror`` is not one of them; a mirror whose configuration cannot be used gets its error, the others
    go on."""
    wal_archive = wal_store.WalArchive(barman_home, server)
    if mirror is not None and mirror not in configured_mirrors(wal_archive.layout):
        read_mirror(wal_archive.layout, mirror)  # raises: a name that is no mirror of this server is the caller's
    names = [mirror] if mirror is not None else configured_mirrors(wal_archive.layout)
    return dict(
        (name, forward_to(wal_archive, name, wait_seconds, stderr, retry_refused_after, resync)) for name in names
    )


def _seconds(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be 0 or more seconds, got %s' % text)
    return value


def main(argv: Optional[Sequence[str]] = None, stdout: Optional[TextIO] = None, stderr: Optional[TextIO] = None) -> int:
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(prog='barman-wal-forwarder', description=__doc__.split('\n\n', maxsplit=1)[0])
    parser.add_argument('--barman-home', required=True)
    parser.add_argument('--server', required=True)
    parser.add_argument('--mirror', help='only this mirror (default: every mirror of the server)')
    parser.add_argument(
        '--wait',
        type=_seconds,
        default=0,
        help='wait this long for a forwarder that runs (default %(default)s: report it busy)',
    )
    parser.add_argument(
        '--resync',
        action='store_true',
        help='forget what the mirror acknowledged and send it all again (its catalog was made anew)',
    )
    args = parser.parse_args(argv)
    try:
        # Asked by a person or a playbook: a refused file is tried again at once (it may have been resolved).
        results = forward(
            args.barman_home, args.server, args.mirror, args.wait, stderr, retry_refused_after=0, resync=args.resync
        )
    except ValueError as error:
        stderr.write('barman-wal-forwarder: %s\n' % error)
        return EXIT_REFUSED
    except (BarmanError, OSError) as error:
        stderr.write('barman-wal-forwarder: %s\n' % error)
        return EXIT_TEMPORARY
    for result in results.values():
        stdout.write(json.dumps(result, sort_keys=True) + '\n')
    stdout.flush()
    caught_up = all(result['error'] is None and result['behind'] == 0 for result in results.values())
    return EXIT_OK if caught_up else EXIT_TEMPORARY
