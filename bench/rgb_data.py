"""Fetch the RGB image sets the quality benchmarks use, from package registries (never committed).

    python -m bench.rgb_data emoji --dest /work/data       # -> /work/data/emoji/*.png (3,786 64-px RGBA PNGs)
    python -m bench.rgb_data tuxpaint --dest /work/data    # -> /work/data/tuxpaint/<category>/*.png (~800 stamps)

- ``emoji``: the npm package ``emoji-datasource-twitter`` (``npm pack``), its ``img/twitter/64`` folder
  copied flat: an unlabelled folder, as most users bring.
- ``tuxpaint``: Debian's ``tuxpaint-stamps-default`` (``apt-get download``, then unpacked with
  ``dpkg -x``), its PNG stamps gathered into one folder per top-level category: a limited-data case.

Each needs ``npm`` or ``apt-get`` and ``dpkg``, and network access to its registry; a missing tool or an
offline machine ends with one line saying so. The folder printed last is what ``--data-root`` takes.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path


def _run(cmd: list[str], cwd: Path) -> None:
    if shutil.which(cmd[0]) is None:
        sys.exit(f"error: {cmd[0]} is not installed; it fetches this dataset")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        sys.exit(f"error: {' '.join(cmd)} failed ({last[0]}); is the package registry reachable?")


def fetch_emoji(dest: Path) -> Path:
    out = dest / "emoji"
    with tempfile.TemporaryDirectory() as tmp:
        _run(["npm", "pack", "emoji-datasource-twitter"], Path(tmp))
        (archive,) = Path(tmp).glob("*.tgz")
        with tarfile.open(archive) as tar:
            tar.extractall(tmp, filter="data")
        out.mkdir(parents=True, exist_ok=True)
        for png in sorted((Path(tmp) / "package" / "img" / "twitter" / "64").glob("*.png")):
            shutil.copy2(png, out / png.name)
    return out


def fetch_tuxpaint(dest: Path) -> Path:
    out = dest / "tuxpaint"
    with tempfile.TemporaryDirectory() as tmp:
        _run(["apt-get", "download", "tuxpaint-stamps-default"], Path(tmp))
        (deb,) = Path(tmp).glob("*.deb")
        _run(["dpkg", "-x", str(deb), "root"], Path(tmp))
        stamps = Path(tmp) / "root" / "usr" / "share" / "tuxpaint" / "stamps"
        for png in sorted(stamps.rglob("*.png")):
            category = png.relative_to(stamps).parts[0]
            target = out / category / "_".join(png.relative_to(stamps).parts[1:])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(png, target)
    return out


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.rgb_data", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["emoji", "tuxpaint"])
    p.add_argument("--dest", type=Path, default=Path("bench/results/data"))
    args = p.parse_args()
    folder = {"emoji": fetch_emoji, "tuxpaint": fetch_tuxpaint}[args.dataset](args.dest.resolve())
    print(f"{sum(1 for _ in folder.rglob('*.png'))} images in {folder}")


if __name__ == "__main__":
    main()
