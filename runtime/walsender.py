# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL sender: PostgreSQL's archive_command and restore_command, talking to the WAL receiver.

  archive_command = 'barman-wal-sender --ssh barman@backup ... put %p'
  restore_command = 'barman-wal-sender --ssh barman@backup ... get %f %p'

One SSH connection per server is kept open for a minute (ControlMaster), so that a segment costs a
round trip on it rather than a new handshake. A put exits below 126, so PostgreSQL counts failures
and retries; ssh's own 255 becomes EXIT_TEMPORARY. A get exits 1 ("not found") only when the
receiver says the archive does not hold the file: PostgreSQL ends recovery on it. Any other failure
is retried for --retry-seconds, then stops recovery (EXIT_STOP_RECOVERY, see errors.py).

When WAL piles up, PostgreSQL still archives one file per call, in order. So a put also starts a
look-ahead agent (one per server): it sends every file PostgreSQL has
marked ready (pg_wal/archive_status/*.ready) over one long stream to the receiver, and notes each
one the receiver answered as durable. While an agent runs, a put waits for its note and returns
(no second connection competes with the stream). Agent and put claim a file before sending it
(<key>.spool/NAME.claim), so that no file is sent twice at a time; a file the agent could not
deliver is sent by the put itself, which reports why it failed. The agent stays up for
AGENT_IDLE_SECONDS after the last file (longer than a usual archive_timeout), so that on a quiet
server the next segment also goes over its open stream, answered by the shell launcher.

An agent serves the archive_command it was started under: its notes name its target (--ssh, --port),
and only a put of that target takes them for an answer. It ends when its spool goes (set up again:
the role removes the spool when archive_command changes) and, once idle, after AGENT_MAX_SECONDS in
all, so that the next put starts one with the current code and options.
"""

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional, Sequence, TextIO, Tuple

from ansible_collections.barman.postgresql.plugins.module_utils import ssh, wal
from ansible_collections.barman.postgresql.runtime import pipes, walfetch

# The framing is shared with the forwarder (walforwarder.py); the sender's names stay for its tests.
from ansible_collections.barman.postgresql.runtime.framing import (
    copy_with_checksum as _copy_with_checksum,
    put_request as _put_request,
    send_file as _send_file,
)
from ansible_collections.barman.postgresql.runtime.spool import Spool, stat_key, try_lock, target_of
from ansible_collections.barman.postgresql.plugins.module_utils.errors import (
    EXIT_NOT_ARCHIVED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_STOP_RECOVERY,
    EXIT_TEMPORARY,
)

SSH_FAILED = 255
# The agent ends when nothing was ready for this long: longer than a usual archive_timeout (60 s),
# so that on a quiet server the next segment finds the agent and its stream up and goes at once,
# answered by the shell launcher without a Python start, a new ssh session or a receiver start.
AGENT_IDLE_SECONDS = 75
# ...and once idle past this age: a new put starts a fresh one (code, options and key of now).
AGENT_MAX_SECONDS = 600
# How often an idle agent drops the notes of files PostgreSQL no longer lists as ready.
AGENT_FORGET_SECONDS = 5
AGENT_POLL_SECONDS = 0.02  # how often an agent looks for ready files while they come
AGENT_QUIET_POLL_SECONDS = 0.05  # ...and after a second of none (an idle agent costs ~0.4 % of a core)
CLAIM_WAIT_SECONDS = 60  # a put waits this long for the agent's answer, then sends the file itself
POLL_SECONDS = 0.005
RETRY_SECONDS = 60  # a get that keeps failing stops recovery after this long
RELEASE_SECONDS = 30  # end-recovery waits this long for the backup server to release the hold (promotion waits)
FIRST_RETRY_PAUSE = 0.5
MAX_RETRY_PAUSE = 5
# PostgreSQL's own rule (timeline.c): timeline 1 has no history file. The shell launcher knows it too.
FIRST_TIMELINE_HISTORY = '00000001.history'
# How a receiver of 1.0 said "not archived": exit 1, as any Python crash does, but with this line.
OLD_NOT_ARCHIVED = 'barman-wal-receiver: %s is not in the archive of server '


def _ssh_argv(args, remote_argv):
    user, host = args.ssh.rsplit('@', 1) if '@' in args.ssh else ('', args.ssh)
    target = ssh.validate_ssh_target(user, host, args.port)
    return ssh.ssh_argv(
        target,
        remote_argv,
        identity_file=args.identity_file,
        known_hosts_file=args.known_hosts,
        # One master per key: two clusters of one host must never share a connection.
        control_path=args.identity_file + '.cm-%C',
    )


def _exit_code(code, stderr):
    if code == SSH_FAILED or code < 0 or code > 125:
        stderr.write('barman-wal-sender: ssh failed (exit %d); PostgreSQL will retry\n' % code)
        return EXIT_TEMPORARY
    return code


def put(args: argparse.Namespace, stderr: TextIO) -> int:
    name = os.path.basename(args.path)
    wal.parse_wal_name(name)
    spool = Spool(args.identity_file, target_of(args.ssh, args.port))
    pg_wal = os.path.dirname(os.path.abspath(args.path))
    if args.look_ahead and _is_ready(pg_wal, name) and _agent_runs(args, spool, pg_wal, name):
        if _delivered_by_agent(spool, name, args.path):
            return 0
    deadline = time.time() + CLAIM_WAIT_SECONDS
    claimed = False
    while not claimed:
        if spool.was_delivered(name, args.path):
            return 0
        claimed = spool.claim(name)
        if not claimed and time.time() > deadline:
            break  # the agent is stuck: send it ourselves (an identical second copy is accepted)
        if not claimed:
            time.sleep(POLL_SECONDS)
    try:
        code = _put_now(args, name, stderr)
        if code == 0 and _agent_alive(spool):
            # Until PostgreSQL marks it done, the agent still sees it ready: tell it not to send it.
            spool.note_delivered(name, stat_key(os.stat(args.path)))
        return code
    finally:
        if claimed:
            spool.release(name)


def _is_ready(pg_wal, name):
    return os.path.exists(os.path.join(pg_wal, 'archive_status', name + '.ready'))


def _delivered_by_agent(spool, name, path):
    """Wait for the running agent to deliver ``name``: True once it did; False as soon as it gave
    the file up, sent it to another target (an agent of a former archive_command), ended, or took
    too long."""
    deadline = time.time() + CLAIM_WAIT_SECONDS
    while True:
        if spool.was_delivered(name, path):
            return True
        if spool.given_up(name) or spool.delivered_elsewhere(name) or time.time() > deadline:
            return spool.was_delivered(name, path)
        if not spool.claimed(name) and not _agent_alive(spool):
            return spool.was_delivered(name, path)  # its note may have come with the release
        time.sleep(POLL_SECONDS)


def _put_now(args, name, stderr):
    with open(args.path, 'rb') as source:
        size = os.fstat(source.fileno()).st_size
        proc = subprocess.Popen(_ssh_argv(args, _put_request(name, size)), stdin=subprocess.PIPE)
        try:
            _copy_with_checksum(source, proc.stdin)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the receiver refused early; its exit code says why
    return _exit_code(proc.wait(), stderr)


def _agent_lock(spool):
    """The agent's lock, held (an open fd), or None if an agent runs."""
    return try_lock(os.path.join(spool.path, 'agent.lock'))


def _agent_alive(spool):
    lock = _agent_lock(spool)
    if lock is None:
        return True
    os.close(lock)
    return False


def _agent_runs(args, spool, pg_wal, name=None):
    """True if a look-ahead agent runs for this server to send ``name``. Otherwise one is started
    (it outlives this call): True when more than one file waits in ``pg_wal`` (a backlog: the agent
    sends them all); False when ``name`` is alone, which this put sends itself at once while the
    agent waits for the next file (a quiet server: the next put finds it up).

    The agent inherits the lock taken here, so that it counts as running from this moment on."""
    lock = _agent_lock(spool)
    if lock is None:
        return True
    try:
        ready = ready_names(pg_wal)
        backlog = len(ready) > 1
        if not backlog and (name is None or name not in ready):
            return False
        argv = [sys.executable, '-IS', os.path.abspath(sys.argv[0]), '--ssh', args.ssh]
        argv += ['--port', str(args.port)] if args.port else []
        argv += ['--identity-file', args.identity_file, '--known-hosts', args.known_hosts]
        argv += ['agent', '--lock-fd', str(lock), pg_wal]
        with open(os.devnull, 'r+b') as null:
            subprocess.Popen(argv, stdin=null, stdout=null, stderr=null, pass_fds=(lock,), start_new_session=True)
        return backlog
    finally:
        os.close(lock)


def ready_names(pg_wal: str) -> List[str]:
    """What PostgreSQL waits to archive, in the order it archives: history files first."""
    names = []
    status = os.path.join(pg_wal, 'archive_status')
    for entry in os.listdir(status) if os.path.isdir(status) else []:
        if entry.endswith('.ready') and wal.is_wal_name(entry[: -len('.ready')]):
            names.append(entry[: -len('.ready')])
    return sorted(names, key=lambda n: (not n.endswith('.history'), n))


def agent(args: argparse.Namespace, stderr: TextIO) -> int:
    """Send every ready file over one stream until none has been ready for AGENT_IDLE_SECONDS."""
    # Never made again here: a spool removed under a running agent means it must stop.
    spool = Spool(args.identity_file, target_of(args.ssh, args.port), create=False)
    try:
        lock = args.lock_fd if args.lock_fd is not None else _agent_lock(spool)
    except FileNotFoundError:
        return 0
    if lock is None:
        return 0
    try:
        _serve(args, spool, stderr, os.fstat(lock))
    finally:
        os.close(lock)  # the agent's end (an exit would close it too)
    return 0


def _serve(args, spool, stderr, held):
    if _spool_lost(spool, held):
        return
    spool.forget_old(set(ready_names(args.pg_wal)))
    # For the shell launcher: while this pid lives, a ready file is about to be claimed by it.
    pid_file = os.path.join(spool.path, 'agent.pid')
    with open(pid_file + '.tmp', 'w') as handle:
        handle.write('%d\n' % os.getpid())
    os.rename(pid_file + '.tmp', pid_file)
    try:
        _stream(args, spool, stderr, held)
    finally:
        try:
            with open(pid_file) as handle:
                mine = handle.read().strip() == str(os.getpid())
            if mine:  # not another agent's, in a spool made again meanwhile
                os.unlink(pid_file)
        except OSError:
            pass
    if not _spool_lost(spool, held):
        spool.forget_old(set(ready_names(args.pg_wal)))


def _spool_lost(spool, held):
    """True once the spool whose agent.lock this agent holds (``held``, its fstat) was removed, or
    removed and made again: the server was set up again, maybe for another backup server."""
    try:
        now = os.stat(os.path.join(spool.path, 'agent.lock'))
    except OSError:
        return True
    return (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)


def _stream(args, spool, stderr, held):
    """The agent's stream: one ssh connection to the receiver's stream mode."""
    # On the shared connection: when WAL piles up after single puts, the stream starts without a handshake.
    proc = subprocess.Popen(_ssh_argv(args, ['stream']), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    pipes.widen(proc.stdin)
    in_flight = {}
    guard = threading.Lock()

    def read_answers():
        try:
            for line in proc.stdout:
                words = line.decode('utf-8', errors='replace').split()
                with guard:
                    sent_as = in_flight.pop(words[1], None) if len(words) > 1 else None
                if sent_as is None:
                    continue  # not a file of this stream (a framing refusal ends the stream anyway)
                if words[0] == 'ok':
                    spool.note_delivered(words[1], sent_as)
                else:
                    spool.note_given_up(words[1])  # sending it again would fail again (or fill errors/)
                spool.release(words[1])
        except Exception as error:  # e.g. no space for a note: end the stream, the puts take over
            stderr.write('barman-wal-sender agent: %s\n' % error)
            proc.kill()

    reader = threading.Thread(target=read_answers)
    reader.start()
    started = idle_since = forgotten = time.time()
    try:
        while time.time() - idle_since < AGENT_IDLE_SECONDS and proc.poll() is None:
            sent = False
            for name in ready_names(args.pg_wal):
                if _spool_lost(spool, held):
                    break  # checked before each claim: never claim in another agent's spool
                if spool.delivered(name) or spool.given_up(name) or not spool.claim(name):
                    continue
                if spool.delivered(name) or not _is_ready(args.pg_wal, name):  # a put sent it meanwhile
                    spool.release(name)
                    continue
                try:
                    source = open(os.path.join(args.pg_wal, name), 'rb')
                except FileNotFoundError:  # archived and removed meanwhile
                    spool.release(name)
                    continue
                with source:
                    with guard:  # known before the answer can come
                        in_flight[name] = stat_key(os.fstat(source.fileno()))
                    _send_file(source, name, proc.stdin)
                proc.stdin.flush()
                sent = True
            now = time.time()
            if _spool_lost(spool, held):
                stderr.write('barman-wal-sender agent: its spool was removed (set up again); it stops\n')
                break
            if sent:
                idle_since = now
                continue
            if now - started > AGENT_MAX_SECONDS:
                break  # idle and old: the next put starts a fresh agent
            if now - forgotten > AGENT_FORGET_SECONDS:
                spool.forget_old(set(ready_names(args.pg_wal)))  # the notes of files archived since
                forgotten = now
            time.sleep(AGENT_POLL_SECONDS if now - idle_since < 1 else AGENT_QUIET_POLL_SECONDS)
    except (BrokenPipeError, OSError) as error:
        stderr.write('barman-wal-sender agent: %s\n' % error)
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
        proc.wait()
        reader.join()
        for name in list(in_flight):
            spool.release(name)


def answer_of_get(name: str, code: int, receiver_stderr: str, size: int, head: bytes) -> Tuple[str, Optional[str]]:
    """What one fetch of ``name`` says: ('fetched'|'not archived'|'refused'|'failed', why).

    From what came back: ssh's exit code (the receiver's, 255 for ssh's own failure, negative for a
    signal), the receiver's stderr, and the answer's size and first bytes. Only 'not archived' may
    reach PostgreSQL as "not found"; 'refused' will not change by asking again; 'failed' may.
    """
    last_line = ([line.strip() for line in receiver_stderr.splitlines() if line.strip()] or [''])[-1]
    said = ': %s' % last_line if last_line else ''
    if code == EXIT_OK:
        return _check_answer(name, size, head)
    if code == EXIT_NOT_ARCHIVED:
        return 'not archived', 'the archive does not hold it'
    if code == EXIT_NOT_FOUND and any(
        line.startswith(OLD_NOT_ARCHIVED % name) for line in receiver_stderr.splitlines()
    ):
        # A receiver of 1.0 (the hosts not yet set up again) answered "not archived" with 1, the code
        # of any crash: its own message tells the two apart. Any other exit 1 is a failure.
        return 'not archived', 'the archive does not hold it'
    if code == EXIT_REFUSED:
        return 'refused', 'the receiver refused the request (exit 2)%s' % said
    if code == SSH_FAILED:
        return 'failed', 'ssh failed (exit 255)%s' % said
    if code < 0:
        return 'failed', 'ssh was killed by signal %d' % -code
    if code == EXIT_TEMPORARY:
        return 'failed', 'the receiver could not serve it (exit 3)%s' % said
    return 'failed', 'the receiver failed (exit %d)%s' % (code, said)


def _check_answer(name, size, head):
    """A complete answer, or why not: a segment must be whole and be the segment it is named after."""
    if wal.parse_wal_name(name).kind == 'segment':
        try:
            wal.check_segment_content(name, wal.parse_segment_header(head, name), size)
        except ValueError as error:
            return 'failed', 'the answer is not the whole segment: %s' % getattr(error, 'message', error)
    elif size == 0:
        return 'failed', 'the answer is empty'
    return 'fetched', None


class _Terminated(BaseException):
    """SIGTERM: PostgreSQL shuts down while a get runs."""


def _terminated(_signum, _frame):
    raise _Terminated()


def get(args: argparse.Namespace, stderr: TextIO) -> int:
    """restore_command: 0 with the file at PATH; EXIT_NOT_FOUND when the archive does not hold it;
    for any other outcome, after retrying for --retry-seconds, EXIT_STOP_RECOVERY."""
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        return _get(args, stderr)
    except _Terminated:
        # Die of SIGTERM, as PostgreSQL expects of a restore_command it stops (the partial file is gone).
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    except Exception as error:  # a surprise must not exit 1: PostgreSQL would read "not found"
        try:
            stderr.write(_stop_message(args, 'failed', '%s: %s' % (type(error).__name__, error)))
        except Exception:  # noqa: S110 - the exit code alone still stops recovery
            pass
        return EXIT_STOP_RECOVERY
    finally:
        signal.signal(signal.SIGTERM, previous)


def _get(args, stderr):
    try:
        name = wal.parse_wal_name(args.name).name
    except ValueError as error:  # restore_command is not "... get %f %p"
        stderr.write(_stop_message(args, 'refused', str(error)))
        return EXIT_STOP_RECOVERY
    if name == FIRST_TIMELINE_HISTORY:
        return EXIT_NOT_FOUND  # timeline 1 has no history file (PostgreSQL asks for it when it promotes from it)
    destination = os.path.abspath(args.path)
    _kick_look_ahead(args, stderr)
    spool = _look_ahead_spool(args, name)
    if spool is not None and (spool.take(name, destination) or spool.wait_for(name) and spool.take(name, destination)):
        # The fetcher had it (or was fetching it): checked as _fetch checks, already on this disk.
        _look_ahead(args, spool, name, destination, stderr)
        return EXIT_OK
    partial = '%s.barman-partial' % destination
    deadline = time.monotonic() + args.retry_seconds
    pause = FIRST_RETRY_PAUSE
    try:
        if spool is not None and _copy_kept(spool, name, destination, partial):
            os.rename(partial, destination)
            # A re-read: recovery did not move back, so neither does the look-ahead's window.
            stderr.write('barman-wal-sender: %s served again from the copy PostgreSQL kept in place\n' % name)
            return EXIT_OK
        while True:
            try:
                outcome, why = _fetch(args, name, partial, stderr)
                if outcome == 'fetched':
                    # Only a whole file ever gets the name PostgreSQL reads.
                    os.rename(partial, destination)
                    _look_ahead(args, spool, name, destination, stderr)
                    return EXIT_OK
            except Exception as error:  # no ssh, no room for the file...: a failure like any other
                outcome, why = 'failed', '%s: %s' % (type(error).__name__, error)
            if outcome == 'not archived':
                return EXIT_NOT_FOUND
            remaining = deadline - time.monotonic()
            if outcome == 'refused' or remaining <= 0:
                break
            stderr.write(
                'barman-wal-sender: get %s failed (%s); retrying in %.1f s\n' % (name, why, min(pause, remaining))
            )
            stderr.flush()
            time.sleep(min(pause, remaining))
            pause = min(pause * 2, MAX_RETRY_PAUSE)
    finally:
        try:
            os.unlink(partial)
        except OSError:
            pass
    stderr.write(_stop_message(args, outcome, why))
    return EXIT_STOP_RECOVERY


def _copy_kept(spool, name, destination, partial):
    """True once ``partial`` holds a copy of the segment ``name`` that PostgreSQL restored earlier and kept
    beside ``destination`` (pg_wal/), when it is the very file the fetcher fetched, unchanged, and checks as
    a fetch does: its re-read at the end of recovery then costs a local copy, not a fetch."""
    noted = spool.noted_identity(name)
    if noted is None:
        return False
    try:
        with open(os.path.join(os.path.dirname(destination), name), 'rb') as kept:
            if walfetch.identity(os.fstat(kept.fileno())) != noted:  # the file opened is the file copied
                return False
            with open(partial, 'wb') as copy:
                shutil.copyfileobj(kept, copy, walfetch.CHUNK)
        size, head = _size_and_head(partial)
    except OSError:
        return False
    return _check_answer(name, size, head)[0] == 'fetched'


def _size_and_head(path):
    """An answer's size and first bytes (a segment's long page header), as the checks take them."""
    with open(path, 'rb') as answer:
        return os.fstat(answer.fileno()).st_size, answer.read(wal.LONG_PAGE_HEADER_SIZE)


def _look_ahead_spool(args, name):
    """The recovered copy's look-ahead spool, or None: only for segments, and only when restore_command
    runs in a data directory (PostgreSQL runs it in PGDATA)."""
    try:
        if not args.look_ahead or wal.parse_wal_name(name).kind != 'segment' or not os.path.exists('PG_VERSION'):
            return None
        spool = walfetch.Spool(os.getcwd())
        return spool if spool.open() else None
    except OSError:
        return None


def _kick_look_ahead(args, stderr):
    """At a recovery's first call (often a timeline history probe): fetch the backup's first segment
    meanwhile, which PostgreSQL asks for next."""
    try:
        if args.look_ahead and os.path.exists('PG_VERSION') and os.path.exists('backup_label'):
            spool = walfetch.Spool(os.getcwd())
            if spool.open() and spool.kick(os.getcwd()):
                _look_ahead(args, spool, None, None, stderr)
    except Exception as error:  # noqa: BLE001 - speed only
        stderr.write('barman-wal-sender: no look-ahead: %s\n' % error)


def _look_ahead(args, spool, name, destination, stderr):
    """After ``name`` is in place: note where recovery is, and make sure the fetcher runs. A failure
    here costs speed only (the next get fetches for itself)."""
    if spool is None:
        return
    try:
        if name is not None:
            spool.note_asked(name, os.stat(destination).st_size)

        def fetch(wanted, partial):
            with open(os.devnull, 'w') as null:
                return _fetch(args, wanted, partial, null)[0]

        def open_stream(first):
            with open(os.devnull, 'wb') as null:
                # gzip: stored segments come as they are (a tenth of the bytes through ssh), inflated here.
                proc = subprocess.Popen(_ssh_argv(args, ['fetch', first, 'gzip']), stdout=subprocess.PIPE, stderr=null)
            pipes.widen(proc.stdout)
            return proc

        def check(wanted, size, head):
            return answer_of_get(wanted, EXIT_OK, '', size, head)[0]

        if walfetch.ensure_fetcher(spool, fetch, open_stream if args.stream else None, check):
            stderr.write(
                'barman-wal-sender: look-ahead: fetching up to %d segments after %s into %s/ while PostgreSQL '
                'replays\n' % (walfetch.LOOK_AHEAD, name or 'the backup_label start', walfetch.SPOOL_DIR)
            )
    except Exception as error:  # noqa: BLE001 - the file is in place: never fail the get for this
        stderr.write('barman-wal-sender: no look-ahead after %s: %s\n' % (name, error))


def end_recovery(args: argparse.Namespace, stderr: TextIO) -> int:
    """recovery_end_command: the look-ahead's spool goes with the recovery (run in PGDATA), and so does the
    recovery's hold on the backup server's catalog (--release-hold). Always 0: PostgreSQL would only warn."""
    try:
        walfetch.end_recovery(os.getcwd(), stderr)
    finally:
        _release_hold(args, stderr)
    return 0


def _release_hold(args, stderr):
    if args.release_hold:
        try:
            proc = subprocess.run(
                _ssh_argv(args, ['release-hold', args.release_hold]),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                timeout=RELEASE_SECONDS,
                check=False,
            )
            said = proc.stdout.decode('ascii', errors='replace').strip()
            why = proc.stderr.decode('utf-8', errors='replace').strip() or 'exit %d' % proc.returncode
        except (OSError, subprocess.TimeoutExpired) as error:
            said, why = '', str(error)
        if said in ('released', 'absent'):
            done = 'released' if said == 'released' else 'had already been released'
            stderr.write(
                'barman-wal-sender: recovery ended; its hold %s on the catalog %s\n' % (args.release_hold, done)
            )
        else:
            stderr.write(
                'barman-wal-sender: recovery ended but its hold %s was not released (%s): retention keeps its backup '
                'and WAL until the hold expires, or until released with pg_backup_catalog action=release-hold\n'
                % (args.release_hold, why)
            )


def _fetch(args, name, partial, stderr):
    """One try at ``name`` into ``partial``: answer_of_get()'s verdict."""
    with open(partial, 'wb') as target:
        proc = subprocess.Popen(_ssh_argv(args, ['get', name]), stdout=target, stderr=subprocess.PIPE)
        try:
            said = proc.communicate()[1].decode('utf-8', errors='replace')
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    size, head = _size_and_head(partial)
    outcome, why = answer_of_get(name, proc.returncode, said, size, head)
    if outcome in ('fetched', 'not archived'):
        stderr.write(said)  # what the receiver says on success (a failure's why quotes it)
    return outcome, why


def _stop_message(args, outcome, why):
    if outcome == 'refused':
        fix = (
            'Check restore_command: it must run "barman-wal-sender ... get %%f %%p" with this server\'s key (%s)'
            % args.identity_file
        )
    else:
        fix = (
            'Fix the backup server or the SSH connection to it (try the same get as the PostgreSQL OS user, '
            'into /tmp), then start PostgreSQL again: recovery resumes where it stopped'
        )
    return (
        'barman-wal-sender: could not fetch %s from %s, nor confirm that the archive does not hold it (%s; '
        'tried for %g s). Recovery stops here rather than end early: a failed fetch taken for the end of the '
        'archive would promote the server short of it. %s.\n' % (args.name, args.ssh, why, args.retry_seconds, fix)
    )


def _seconds(text):
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be 0 or more seconds, got %s' % text)
    return value


def main(argv: Optional[Sequence[str]] = None, stderr: Optional[TextIO] = None) -> int:
    stderr = stderr or sys.stderr
    parser = argparse.ArgumentParser(prog='barman-wal-sender', description=__doc__)
    parser.add_argument('--ssh', required=True, help='user@host of the backup server')
    parser.add_argument('--port', type=int)
    parser.add_argument('--identity-file', required=True)
    parser.add_argument('--known-hosts', required=True)
    commands = parser.add_subparsers(dest='command')
    commands.required = True
    put_parser = commands.add_parser('put', help='archive the WAL file at PATH (%%p)')
    put_parser.add_argument('path')
    put_parser.add_argument(
        '--no-look-ahead', dest='look_ahead', action='store_false', help='do not start the look-ahead agent'
    )
    agent_parser = commands.add_parser('agent', help='send the ready files of PG_WAL ahead of PostgreSQL')
    agent_parser.add_argument('--lock-fd', type=int, help='the agent lock, already taken by the put that starts it')
    agent_parser.add_argument('pg_wal')
    get_parser = commands.add_parser('get', help='restore the WAL file NAME (%%f) to PATH (%%p)')
    get_parser.add_argument('name')
    get_parser.add_argument('path')
    get_parser.add_argument(
        '--retry-seconds',
        type=_seconds,
        default=RETRY_SECONDS,
        help='retry a fetch that fails (not one of a file the archive does not hold) this long, then stop '
        'recovery (default %(default)s)',
    )
    get_parser.add_argument(
        '--no-look-ahead', dest='look_ahead', action='store_false', help='fetch only the file asked for'
    )
    get_parser.add_argument(
        '--look-ahead-per-file',
        dest='stream',
        action='store_false',
        help='the look-ahead fetches one file per request instead of streaming them in one (to measure both)',
    )
    end_parser = commands.add_parser(
        'end-recovery', help='recovery_end_command: remove the look-ahead spool of the current PGDATA'
    )
    end_parser.add_argument('--release-hold', metavar='TOKEN', help="release the recovery's hold on the catalog")
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code and 'get' in (sys.argv[1:] if argv is None else argv):
            # argparse exits 2, which PostgreSQL would read as "not found" and end recovery on.
            stderr.write(
                'barman-wal-sender: these arguments are not a get it can run (see above). Recovery stops here '
                'rather than end early. Fix restore_command: "barman-wal-sender ... get %f %p"\n'
            )
            return EXIT_STOP_RECOVERY
        raise
    try:
        return dict(put=put, get=get, agent=agent, **{'end-recovery': end_recovery})[args.command](args, stderr)
    except ValueError as error:
        stderr.write('barman-wal-sender: %s\n' % error)
        return EXIT_REFUSED
    except OSError as error:
        stderr.write('barman-wal-sender: %s\n' % error)
        return EXIT_TEMPORARY if not isinstance(error, FileNotFoundError) else EXIT_NOT_FOUND
