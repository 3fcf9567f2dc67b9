"""Putting config values into a bash script so that no value can ever run a command.

Three ways a value reaches the script, one function each:

* ``quote``: a literal shell word (``shlex.quote``): nothing in it is special to bash.
* ``expand``: a double-quoted word in which ``$NAME`` and ``${NAME}`` expand (``$USER``,
  ``$SLURM_NODEID`` in cache paths) and nothing else does: every other ``$``, every backtick,
  backslash and double quote is escaped, so ``$(...)``, backticks and quotes stay literal text.
* ``sbatch_value``: a value on an ``#SBATCH`` line. Bash reads those lines as comments, so only a
  line break could escape; sbatch splits them on blanks and reads quotes itself, so blanks and quotes
  would smuggle in options. Such values are refused (``UnsafeValue``) rather than altered.

The renderer marks the output of these functions as ``Shell``; every other value the template
prints is passed through ``quote`` (the Jinja ``finalize`` hook), so forgetting a filter is safe.
"""

from __future__ import annotations

import re
import shlex
from typing import Iterable

from ..config import ConfigError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# $NAME or ${NAME}; any other use of $ is escaped.
_VARIABLE = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
# What an #SBATCH value may hold: names, numbers, paths, times, lists, Slurm's %-patterns and the
# constraint operators & | ! [ ] * ( ).
_SBATCH_SAFE = re.compile(r"[A-Za-z0-9_.,:@%=+/&|!^*~\[\]()\-]+")


class UnsafeValue(ConfigError):
    """A config value cannot be placed where it was asked to go without changing its meaning."""


class Shell(str):
    """Text that is already safe to place in the script as it is."""


def quote(value: object) -> Shell:
    if isinstance(value, Shell):
        return value
    if isinstance(value, bool):
        value = "true" if value else "false"
    return Shell(shlex.quote(str(value)))


def quote_all(values: Iterable[object]) -> Shell:
    return Shell(" ".join(quote(v) for v in values))


def expand(value: object) -> Shell:
    """A double-quoted word where only $NAME / ${NAME} expand."""
    text = str(value)
    out, pos = ['"'], 0
    for match in _VARIABLE.finditer(text):
        out.append(_escape_in_double_quotes(text[pos:match.start()]))
        out.append("${" + (match.group(1) or match.group(2)) + "}")
        pos = match.end()
    out.append(_escape_in_double_quotes(text[pos:]))
    out.append('"')
    return Shell("".join(out))


def _escape_in_double_quotes(text: str) -> str:
    # Inside "...", bash treats only $ ` \ " specially (and ! in interactive shells, not in scripts).
    return re.sub(r'([$`"\\])', r"\\\1", text)


def env_name(name: object, key: str = "cluster.env") -> Shell:
    text = str(name)
    if not _NAME.fullmatch(text):
        raise UnsafeValue(f"{key}: {text!r} is not a valid environment variable name "
                          f"(letters, digits and _, not starting with a digit)")
    return Shell(text)


def sbatch_value(value: object, key: str = "value") -> Shell:
    text = str(value)
    if not _SBATCH_SAFE.fullmatch(text):
        raise UnsafeValue(
            f"{key}={text!r}: goes into an #SBATCH line, which cannot hold blanks, quotes, line breaks, "
            f"$, `, ; or other shell characters; use only letters, digits and _ . , : @ % = + / - & | ! [ ] * ( )")
    return Shell(text)


def sbatch_option(option: str, key: str = "cluster.slurm.extra") -> Shell:
    """One whole sbatch option such as --mail-type=END (the name and value both checked)."""
    text = str(option)
    if not re.fullmatch(r"--?[A-Za-z][A-Za-z0-9-]*(=.+)?", text, flags=re.S):
        raise UnsafeValue(f"{key}: {text!r} is not an sbatch option of the form --name or --name=value")
    name, _, val = text.partition("=")
    if val:
        sbatch_value(val, key)
    return Shell(text)


def job_name(name: str) -> Shell:
    """A Slurm job name from a run name: unsafe characters become _ (the name is only a label)."""
    cleaned = re.sub(r"[^A-Za-z0-9_.,:@%=+\-]", "_", name)[:128] or "eurotron"
    return Shell(cleaned)
