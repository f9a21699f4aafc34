# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The files the programs we install on hosts need: derived from their imports, never listed by hand."""

# The filter is documented in runtime_files.yml beside this file.

import ast
import os

from ansible.errors import AnsibleFilterError

PACKAGE = 'ansible_collections.barman.postgresql.'
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _collection_imports(path):
    """The modules of this collection that the Python file at path imports, as relative file paths."""
    with open(path, 'rb') as handle:
        tree = ast.parse(handle.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and (node.module + '.').startswith(PACKAGE):
            package = node.module[len(PACKAGE) :].replace('.', '/')
            for alias in node.names:
                # "from package import module" or "from package.module import name"
                as_module = '%s/%s.py' % (package, alias.name)
                found.append(as_module if os.path.isfile(os.path.join(COLLECTION_ROOT, as_module)) else package + '.py')
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if (alias.name + '.').startswith(PACKAGE):
                    found.append(alias.name[len(PACKAGE) :].replace('.', '/') + '.py')
    return found


def runtime_files(entry_points):
    """Every file (path relative to the collection) that the given programs import, themselves included,
    sorted."""
    wanted, seen = list(entry_points), set()
    while wanted:
        relative = wanted.pop()
        if relative in seen:
            continue
        path = os.path.join(COLLECTION_ROOT, relative)
        if not os.path.isfile(path):
            raise AnsibleFilterError('runtime_files: %s is not a file of the collection (%s)' % (relative, path))
        seen.add(relative)
        wanted.extend(_collection_imports(path))
    return sorted(seen)


class FilterModule:
    def filters(self):
        return {'runtime_files': runtime_files}
