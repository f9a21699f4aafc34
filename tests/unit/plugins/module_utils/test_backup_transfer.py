"""Whole files or rsync's delta algorithm: the choice from earlier copies' statistics, and the files to recheck."""

import collections
import datetime
import os

import pytest

from ansible_collections.barman.postgresql.plugins.module_utils import backup, catalog, infofile

MB = 1000 * 1000
BIG = backup.MIN_MEASURED_BYTES


def _infos(*stats):
    """{backup_id: info} oldest first, one backup per copy_stats given (None: no copy_stats)."""
    infos = collections.OrderedDict()
    for number, copy_stats in enumerate(stats):
        infos['2026112%dT010000' % number] = dict(status=infofile.DONE, copy_stats=copy_stats)
    return infos


def _stats(transfer, rate, sent=BIG):
    return dict(copy_time=1.0, transferred_bytes=sent, transfer=transfer, throughput=rate)


# --------------------------------------------------------------------------- measured_rates


def test_a_full_measures_the_link():
    rates = backup.measured_rates(_infos(_stats(backup.WHOLE_FILE, 300 * MB)))
    assert rates == {backup.WHOLE_FILE: (300.0 * MB, '20261120T010000')}


def test_the_newest_copy_of_each_mode_counts():
    infos = _infos(
        _stats(backup.WHOLE_FILE, 300 * MB),
        _stats(backup.DELTA, 80 * MB),
        _stats(backup.WHOLE_FILE, 200 * MB),
        dict(copy_time=1.0),  # a backup taken before transfer was recorded
        None,  # the backup being taken: no statistics yet
    )
    assert backup.measured_rates(infos) == {
        backup.WHOLE_FILE: (200.0 * MB, '20261122T010000'),
        backup.DELTA: (80.0 * MB, '20261121T010000'),
    }


def test_small_copies_and_missing_rates_measure_nothing():
    infos = _infos(
        _stats(backup.WHOLE_FILE, 300 * MB, sent=BIG - 1),
        _stats(backup.DELTA, None),
        _stats(backup.WHOLE_FILE, 0),
    )
    assert backup.measured_rates(infos) == {}


def test_only_recent_backups_count():
    infos = _infos(*([_stats(backup.WHOLE_FILE, 300 * MB)] + [_stats(backup.DELTA, 10 * MB)] * 10))
    assert list(backup.measured_rates(infos)) == [backup.DELTA]


def test_rates_survive_backup_info(tmp_path):
    """copy_stats as the backup writes it, read back from backup.info."""
    layout = catalog.ServerLayout(str(tmp_path), 'pg1')
    catalog.ensure_directories(layout)
    info = dict(
        status=infofile.DONE,
        begin_time=datetime.datetime(2026, 11, 20, 1, 0, tzinfo=datetime.timezone.utc),
        copy_stats=dict(
            copy_time=3.4,
            transferred_bytes=980 * MB,
            transfer=backup.WHOLE_FILE,
            transfer_reason=backup.choose_transfer('auto', False, {})[1],
            throughput=288 * MB,
        ),
    )
    infofile.write_backup_info(layout.backup_info_path('20261120T010000'), info)
    rates = backup.measured_rates(infofile.backup_infos(layout))
    assert backup.choose_transfer('auto', True, rates)[0] == backup.WHOLE_FILE


# --------------------------------------------------------------------------- choose_transfer

FAST = {backup.WHOLE_FILE: (300.0 * MB, 'F')}
SLOW = {backup.WHOLE_FILE: (10.0 * MB, 'F')}


@pytest.mark.parametrize('mode', backup.DELTA_TRANSFER_MODES)
def test_without_an_older_copy_files_go_whole(mode):
    assert backup.choose_transfer(mode, False, SLOW)[0] == backup.WHOLE_FILE
    assert not backup.needs_change_estimate(mode, False, {})


def test_the_option_overrides_the_measures():
    assert backup.choose_transfer('never', True, SLOW) == (backup.WHOLE_FILE, 'delta_transfer=never')
    assert backup.choose_transfer('always', True, FAST) == (backup.DELTA, 'delta_transfer=always')
    assert not backup.needs_change_estimate('never', True, {})
    assert not backup.needs_change_estimate('always', True, {})


def test_a_fast_link_sends_whole_files_a_slow_one_deltas():
    transfer, why = backup.choose_transfer('auto', True, FAST)
    assert transfer == backup.WHOLE_FILE
    assert '300 MB/s (backup F)' in why
    assert backup.choose_transfer('auto', True, {backup.WHOLE_FILE: (backup.FAST_LINK, 'F')})[0] == backup.WHOLE_FILE
    transfer, why = backup.choose_transfer('auto', True, SLOW)
    assert transfer == backup.DELTA
    assert 'slow link' in why


def test_with_both_measures_the_faster_wins():
    # A 30 MB/s link beats a delta algorithm that managed 20 MB/s on it, whatever the fixed threshold says.
    rates = {backup.WHOLE_FILE: (30.0 * MB, 'F'), backup.DELTA: (20.0 * MB, 'I')}
    transfer, why = backup.choose_transfer('auto', True, rates)
    assert transfer == backup.WHOLE_FILE
    assert why == 'whole files went at 30 MB/s (backup F), the delta algorithm at 20 MB/s (backup I)'
    rates = {backup.WHOLE_FILE: (300.0 * MB, 'F'), backup.DELTA: (400.0 * MB, 'I')}
    assert backup.choose_transfer('auto', True, rates)[0] == backup.DELTA


def test_unknown_link_decides_on_the_changed_share():
    only_delta = {backup.DELTA: (80.0 * MB, 'I')}
    assert backup.needs_change_estimate('auto', True, only_delta)
    assert not backup.needs_change_estimate('auto', True, FAST)
    transfer, why = backup.choose_transfer('auto', True, only_delta, (90, 100))
    assert (transfer, why) == (backup.WHOLE_FILE, 'link speed not measured yet; 90% of the bytes are in changed files')
    assert backup.choose_transfer('auto', True, {}, (50, 100))[0] == backup.WHOLE_FILE
    assert backup.choose_transfer('auto', True, {}, (49, 100))[0] == backup.DELTA
    assert backup.choose_transfer('auto', True, {}, (0, 0)) == (backup.DELTA, 'link speed not measured yet')
    assert backup.choose_transfer('auto', True, {}) == (backup.DELTA, 'link speed not measured yet')


# --------------------------------------------------------------------------- what changed


def test_changed_bytes_compares_size_and_whole_second_mtime():
    reference = {'base/1/1': (8192, 1000), 'base/1/2': (8192, 1000), 'base/1/3': (100, 1000)}
    listing = [
        (8192, 1000.0, 'base/1/1'),  # unchanged
        (8192, 1001.0, 'base/1/2'),  # rewritten, same size
        (200, 1000.0, 'base/1/3'),  # grown within the second
        (300, 1000.0, 'base/1/4'),  # new
    ]
    assert backup.changed_bytes(listing, reference) == (8192 + 200 + 300, 8192 * 2 + 200 + 300)


def test_reference_stats_reads_the_older_copy(tmp_path):
    (tmp_path / 'base').mkdir()
    path = tmp_path / 'base' / '1'
    path.write_bytes(b'x' * 10)
    os.utime(path, (1000.7, 1000.7))
    assert backup.reference_stats(str(tmp_path), ['base/1', 'base/gone']) == {'base/1': (10, 1000)}


def test_linked_since_lists_the_files_rsync_trusted_recently(tmp_path):
    reference, copy = tmp_path / 'ref', tmp_path / 'new'
    for directory in (reference / 'base', copy / 'base'):
        directory.mkdir(parents=True)
    for name, mtime in (('old', 500), ('recent', 1500), ('sent', 1500), ('copied', 1500)):
        (reference / 'base' / name).write_bytes(b'a')
        os.utime(reference / 'base' / name, (mtime, mtime))
    os.link(reference / 'base' / 'old', copy / 'base' / 'old')
    os.link(reference / 'base' / 'recent', copy / 'base' / 'recent')
    (copy / 'base' / 'sent').write_bytes(b'bb')  # sent by rsync (its size changed): read during this backup
    os.utime(copy / 'base' / 'sent', (1500, 1500))
    # Trusted by size and mtime but not linkable (other permissions): rsync copies the older copy locally.
    (copy / 'base' / 'copied').write_bytes(b'a')
    os.utime(copy / 'base' / 'copied', (1500.4, 1500.4))
    (copy / 'base' / 'new').write_bytes(b'c')
    os.symlink('recent', copy / 'base' / 'link')
    assert sorted(backup.linked_since(str(copy), str(reference), 1000)) == ['base/copied', 'base/recent']
    assert sorted(backup.linked_since(str(copy), str(reference), 0)) == ['base/copied', 'base/old', 'base/recent']
