"""What the experiment entry points share: the config flag, read from anywhere.

`define_config_flag` defines ``--config`` (an ``ml_collections`` config file,
``--config=FILE[:ARG]`` with ``--config.FIELD=VALUE`` overrides) so that

* its default file is found inside the installed package, whatever the
  working directory (``configs/shift.py`` of this project);
* a ``--config`` path that does not exist where the job runs is looked up
  beside the installed ``configs`` package (so ``--config=configs/shift.py``
  works from any directory), and otherwise is one line naming the path;
* an unknown override (``--config.num_task=3``) is one line naming the field
  and the closest valid name.

Every such error prints ``error: ...`` on stderr and exits with status 2
before anything is loaded or compiled.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import NoReturn, Sequence

import configs
from ml_collections import config_flags

USAGE_ERROR = 2
CONFIGS_DIR = os.path.dirname(os.path.abspath(configs.__file__))
PROJECT_DIR = os.path.dirname(CONFIGS_DIR)
# The command line as typed, before `define_config_flag` resolved the config path.
ORIGINAL_ARGV: list[str] = []


def fail(message: str) -> NoReturn:
  """Prints ``error: <message>`` on stderr and exits with status 2."""
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(USAGE_ERROR)


def default_config(name: str) -> str:
  """The absolute path of config file `name` (``"shift.py"``) of the installed package."""
  return os.path.join(CONFIGS_DIR, name)


def _split_arg(value: str) -> tuple[str, str | None]:
  """``"file.py:arg"`` -> ``("file.py", "arg")``; ``"file.py"`` -> ``("file.py", None)``."""
  path, sep, arg = value.partition(":")
  return path, (arg if sep else None)


def resolve_config_path(value: str) -> str:
  """The config file `value` (``FILE[:ARG]``) names, as a path that exists.

  A relative path is taken from the working directory, else from the project
  folder that holds the installed ``configs`` package. Exits with status 2
  naming the path if neither holds it.
  """
  path, arg = _split_arg(value)
  candidates = [path] if os.path.isabs(path) else [path, os.path.join(PROJECT_DIR, path)]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate if arg is None else f"{candidate}:{arg}"
  where = "" if os.path.isabs(path) else f" (looked in {os.getcwd()} and {PROJECT_DIR})"
  fail(f"--config: no config file {path!r}{where}")


def _config_value(argv: Sequence[str], name: str) -> tuple[int, str] | None:
  """``(index, value)`` of the last ``--name=value`` or ``--name value`` in argv."""
  found = None
  for i, a in enumerate(argv):
    if a.startswith(f"--{name}="):
      found = (i, a.split("=", 1)[1])
    elif a == f"--{name}" and i + 1 < len(argv):
      found = (i + 1, argv[i + 1])
  return found


def _load_config(value: str):
  """The ConfigDict of config file ``FILE[:ARG]`` (its ``get_config([ARG])``)."""
  path, arg = _split_arg(value)
  spec = importlib.util.spec_from_file_location("_plastix_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config() if arg is None else module.get_config(arg)


def unknown_field(config, argv: Sequence[str], name: str = "config") -> str | None:
  """A one-line message for the first ``--config.FIELD`` override naming a field
  `config` lacks, with the closest valid name; None if every field exists."""
  prefix = f"--{name}."
  for a in argv:
    if not a.startswith(prefix):
      continue
    field = a[len(prefix):].split("=", 1)[0]
    node, parts = config, field.split(".")
    for depth, part in enumerate(parts):
      keys = list(node.keys()) if hasattr(node, "keys") else []
      if part in keys:
        node = node[part]
        continue
      parent = ".".join(parts[:depth])
      full = lambda k, parent=parent: f"{parent}.{k}" if parent else k
      close = difflib.get_close_matches(part, keys, n=1, cutoff=0.5)
      hint = f"; did you mean {full(close[0])!r}?" if close else (
          f"; {parent or 'the config'} has {', '.join(sorted(keys))}" if keys else
          f"; {parent} is a value, not a section")
      return f"unknown config field {full(part)!r} (in {a}){hint}"
  return None


def define_config_flag(default_name: str | None, help_text: str = "Experiment config file.",
                       name: str = "config", argv: list[str] | None = None):
  """Defines the ``--config`` flag (see the module docstring) and returns its holder.

  `default_name` is a file of the package's ``configs/`` (None: no default, the
  flag's value is then None unless given).

  Rewrites the ``--config`` value in `argv` (default ``sys.argv``) to the
  path it resolves to, and moves it first, before ``ml_collections`` reads it
  (which otherwise refuses an override typed before the file).
  """
  argv = sys.argv if argv is None else argv
  ORIGINAL_ARGV[:] = list(argv)
  found = _config_value(argv, name)
  if found is not None:
    index, value = found
    resolved = resolve_config_path(value)
    # The file first: ml_collections reads overrides only after it, in any order typed.
    if argv[index].startswith(f"--{name}="):
      del argv[index]
    else:
      del argv[index - 1:index + 1]
    argv.insert(1, f"--{name}={resolved}")
    value = resolved
  elif default_name is None:
    return config_flags.DEFINE_config_file(name, None, help_text)
  else:
    value = default_config(default_name)
  default = default_config(default_name) if default_name else None
  try:
    return config_flags.DEFINE_config_file(name, default, help_text)
  except (AttributeError, KeyError) as e:  # An override names a field the config lacks.
    try:
      message = unknown_field(_load_config(value), argv, name)
    except Exception:  # pylint: disable=broad-except
      message = None
    fail(message or f"--{name}: {str(e).splitlines()[0].strip(chr(39))}")
  except Exception as e:  # pylint: disable=broad-except
    # The config file itself fails to load (a syntax error, a bad get_config argument).
    fail(f"--{name} {value!r}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def unknown_field_message(error: Exception, argv: Sequence[str], name: str = "config") -> str:
  """The one line for a flag-parsing error that names a field the config lacks."""
  found = _config_value(argv, name)
  try:
    message = unknown_field(_load_config(found[1]), argv, name) if found else None
  except Exception:  # pylint: disable=broad-except
    message = None
  return message or f"--{name}: {str(error).splitlines()[0]}"


def default_verbosity() -> None:
  """absl's verbosity WARNING unless the command line sets ``-v`` / ``--verbosity``.

  absl's own default is INFO, at which orbax and JAX log every checkpoint
  step and backend probe; the user's value always wins (``-v 0`` shows INFO,
  ``-v 1`` DEBUG) and applies to stderr and to the workdir's ``log.txt``.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)


def parse_flags(argv):
  """absl's flag parsing for an entry point (``app.run(main, flags_parser=...)``):
  a bad flag or override is one line and exit status 2."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:  # config_flags: a field the config lacks.
    fail(unknown_field_message(e, argv))
  except (flags.Error, ValueError, TypeError, OSError) as e:
    fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
