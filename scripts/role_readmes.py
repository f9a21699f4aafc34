# Copyright: barman.postgresql contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writes the top of each role's README.md (what the role is, and the table of its variables) from the role's
meta/argument_specs.yml, the one place they are written; the rest of the README is kept as it is.

    scripts/role-readmes            rewrite the READMEs that are out of date
    scripts/role-readmes --check    only say which are, and exit 1
"""

import os
import re
import sys

import yaml

ROLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'roles')
BEGIN = '<!-- Generated from meta/argument_specs.yml by scripts/role-readmes: edit that file, then run it. -->'
END = '<!-- End of the generated part. -->'
# Ansible's documentation markup: C, V, O and E are code in Markdown, I italics, B bold.
MARKUP = re.compile(r'\b([CVOEIB])\(([^)]*)\)')


def role_names():
    return sorted(name for name in os.listdir(ROLES_DIR) if os.path.isdir(os.path.join(ROLES_DIR, name, 'meta')))


def load_yaml(role, *path):
    with open(os.path.join(ROLES_DIR, role, *path)) as handle:
        return yaml.safe_load(handle) or {}


def _plain(text):
    """Text outside code: a <placeholder> would be read as an HTML tag and vanish."""
    return text.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def _markdown(kind, inner):
    if kind in 'CVOE':
        return '`%s`' % inner
    return ('*%s*' if kind == 'I' else '**%s**') % _plain(inner)


def _text(description):
    text = ' '.join(description) if isinstance(description, list) else str(description)
    parts, done = [], 0
    for markup in MARKUP.finditer(text):
        parts += [_plain(text[done : markup.start()]), _markdown(*markup.groups())]
        done = markup.end()
    return ''.join(parts) + _plain(text[done:])


def _value(value):
    """A default as the inventory would write it, in YAML."""
    return '`%s`' % yaml.safe_dump(value, default_flow_style=True, width=1000).strip().removesuffix('\n...').strip()


def _cell(text):
    return text.replace('|', '\\|')


def _row(name, option, role_defaults):
    kind = option.get('type', 'str')
    if 'elements' in option:
        kind += ' of ' + option['elements']
    if 'default' in option:
        default = _value(option['default'])
    elif option.get('required'):
        default = 'required'
    else:
        # A templated default (defaults/main.yml) is described, not given.
        default = 'computed' if name in role_defaults else 'unset'
    description = _text(option.get('description', ''))
    if 'choices' in option:
        description += ' One of %s.' % ', '.join(_value(choice) for choice in option['choices'])
    return '| `%s` | %s | %s | %s |' % (name, kind, _cell(default), _cell(description))


def generated_part(role):
    """The README's generated lines, markers included, from the role's main entry point."""
    spec = load_yaml(role, 'meta', 'argument_specs.yml')['argument_specs']['main']
    role_defaults = load_yaml(role, 'defaults', 'main.yml')
    lines = [BEGIN, '# barman.postgresql.%s' % role, '', _text(spec['short_description']) + '.', '']
    lines += ['- %s' % _text(paragraph) for paragraph in spec.get('description', [])]
    lines += ['', '## Variables', '', '| variable | type | default | description |', '|---|---|---|---|']
    lines += [_row(name, option, role_defaults) for name, option in spec.get('options', {}).items()]
    lines.append(END)
    return '\n'.join(lines) + '\n'


def wanted_readme(role, current):
    """The README with its generated part replaced (or put first, when it has none yet)."""
    part = generated_part(role)
    if BEGIN in current and END in current:
        before, rest = current.split(BEGIN, 1)
        after = rest.split(END, 1)[1].lstrip('\n')
        return before + part + ('\n' + after if after else '')
    return part + ('\n' + current if current else '')


def main(argv):
    check = argv == ['--check']
    if argv and not check:
        sys.exit('usage: scripts/role-readmes [--check]')
    stale = []
    for role in role_names():
        path = os.path.join(ROLES_DIR, role, 'README.md')
        current = open(path).read() if os.path.exists(path) else ''
        wanted = wanted_readme(role, current)
        if wanted != current:
            stale.append(os.path.relpath(path, os.path.dirname(ROLES_DIR)))
            if not check:
                with open(path, 'w') as handle:
                    handle.write(wanted)
    for path in stale:
        print('%s %s' % ('out of date:' if check else 'wrote', path))
    return 1 if check and stale else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
