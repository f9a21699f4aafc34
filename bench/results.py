"""What every benchmark writes: its section of bench/RESULTS.md, and the machine it ran on."""

import os
import platform
import re

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'RESULTS.md')


def machine(pg_version, transport):
    """'2 cores, Linux-..., Python 3.11.7, PostgreSQL 15.18, <transport>'."""
    return '%d cores, %s, Python %s, PostgreSQL %s, %s' % (
        os.cpu_count(),
        platform.platform(terse=True),
        platform.python_version(),
        pg_version.split()[0] if pg_version else '?',
        transport,
    )


def write_results(section, text):
    """Replace ``section`` (a '## ' heading and what follows up to the next one) of RESULTS.md with ``text``."""
    old = open(RESULTS).read() if os.path.exists(RESULTS) else '# Benchmark results\n'
    pattern = re.compile(r'^%s\n.*?(?=^## |\Z)' % re.escape(section), re.S | re.M)
    if pattern.search(old):
        new = pattern.sub(lambda _m: text.rstrip('\n') + '\n\n', old)
    else:
        new = old.rstrip('\n') + '\n\n' + text.rstrip('\n') + '\n'
    with open(RESULTS, 'w') as handle:
        handle.write(new)
