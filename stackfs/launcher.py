"""The ``stackfs`` command in ``/usr/local/bin``: a launcher that names the checkout it runs.

``provision.sh`` installs the checkout it is run from into the venv (editable) and writes this
launcher; a second clone's ``provision.sh`` re-points both, so it says so first, from where to
where (:func:`repoint_notes`). The launcher checks that the user running it can read the
checkout, and otherwise says so in one line instead of Python's traceback from the import.

Standard library only: ``provision.sh`` runs this file with the system python, before the venv
holds this checkout (``python3 stackfs/launcher.py notes|write BINDIR VENV CHECKOUT``).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlparse

#: the line of the launcher that names its checkout (read back by :func:`command_checkout`)
CHECKOUT_LINE = "checkout="

TEMPLATE = """#!/bin/sh
# The stackfs command, written by provision.sh: it runs the checkout below with the venv's
# python. Another checkout's provision.sh re-points it (and says so).
{checkout_line}{checkout}
if [ ! -r "$checkout/stackfs/__init__.py" ]; then
    echo "stackfs: cannot read the checkout $checkout that this command runs" \\
         "(user $(id -un)); run it as a user who can, or provision a readable checkout" >&2
    exit 1
fi
exec {stackfs} "$@"
"""


def launcher_text(venv: Path, checkout: Path) -> str:
    return TEMPLATE.format(
        checkout_line=CHECKOUT_LINE,
        checkout=shlex.quote(str(checkout)),
        stackfs=shlex.quote(str(venv / "bin" / "stackfs")),
    )


def write_launcher(bindir: Path, venv: Path, checkout: Path) -> Path:
    """Write ``BINDIR/stackfs`` (mode 0755) atomically: a temporary file renamed over it."""
    bindir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".stackfs-", dir=bindir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(launcher_text(venv, checkout))
        os.chmod(tmp, 0o755)
        os.replace(tmp, bindir / "stackfs")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return bindir / "stackfs"


def venv_checkout(venv: Path) -> Path | None:
    """The checkout the venv's stackfs is installed from in editable mode (pip's
    ``direct_url.json``), or None (not installed, or not editable)."""
    for meta in sorted(venv.glob("lib/python3*/site-packages/stackfs-*.dist-info")):
        try:
            url = json.loads((meta / "direct_url.json").read_text())
        except (OSError, ValueError):
            continue
        parsed = urlparse(str(url.get("url", "")))
        if parsed.scheme == "file" and url.get("dir_info", {}).get("editable"):
            return Path(unquote(parsed.path))
    return None


def command_checkout(command: Path) -> tuple[Path | None, Path | None]:
    """(checkout, venv) that the installed command runs: a launcher names its checkout; the
    symlink of older set-ups points into a venv, whose editable install names it."""
    if command.is_symlink():
        linked = Path(os.path.realpath(command)).parent.parent
        return venv_checkout(linked), linked
    try:
        text = command.read_text(errors="replace")
    except OSError:
        return None, None
    checkout: Path | None = None
    venv: Path | None = None
    for line in text.splitlines():
        if line.startswith(CHECKOUT_LINE):
            words = shlex.split(line[len(CHECKOUT_LINE) :])
            checkout = Path(words[0]) if words else None
        elif line.startswith("exec "):
            words = shlex.split(line[len("exec ") :])
            venv = Path(words[0]).parent.parent if words else None
    return checkout, venv


def repoint_notes(bindir: Path, venv: Path, checkout: Path) -> list[str]:
    """What installing ``checkout`` into ``venv`` and writing ``BINDIR/stackfs`` re-points,
    from where to where; empty when both already run ``checkout`` (or nothing was there)."""
    notes = []
    command = bindir / "stackfs"
    old, old_venv = command_checkout(command) if os.path.lexists(command) else (None, None)
    if old is not None and old != checkout:
        via = f" (venv {old_venv})" if old_venv is not None and old_venv != venv else ""
        notes.append(
            f"re-pointing the command {command} from the checkout {old}{via} to {checkout}: "
            f"whoever ran {old} through it now runs {checkout}"
        )
    installed = venv_checkout(venv)
    if installed is not None and installed != checkout:
        notes.append(
            f"re-pointing the venv {venv} (editable install) from the checkout {installed} "
            f"to {checkout}: {venv}/bin/stackfs and its pytest plugin will run {checkout}"
        )
    return notes


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 4 or args[0] not in ("notes", "write"):
        print("usage: launcher.py notes|write BINDIR VENV CHECKOUT", file=sys.stderr)
        return 2
    bindir, venv, checkout = (Path(os.path.abspath(a)) for a in args[1:])
    if args[0] == "notes":
        for note in repoint_notes(bindir, venv, checkout):
            print(note)
    else:
        print(write_launcher(bindir, venv, checkout))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
