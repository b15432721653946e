"""Fetching the embedded default corpus: Debian packages downloaded and unpacked, never installed.

``apt-get download`` needs no root for the download itself and runs no install scripts; ``dpkg -x`` unpacks the
archive into our cache. Nothing is fetched at training time: once a package is unpacked it is reused.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from ..cache import cache_root

# the four packages of the default corpus (``docs/data.md``) and where each keeps its text
DEFAULT_PACKAGES = ("dict-gcide", "wordnet-base", "dict-foldoc", "fortunes")
_COMPLETE_MARKER = ".unpacked"
_NO_DEBIAN_HINT = (
    "the default corpus comes from Debian packages; on a machine without Debian's tools (or without access to a "
    "Debian mirror) pass your own plain-text or JSONL files instead (ultrafastbert.data.corpus_from_paths)"
)


class PackageFetchError(RuntimeError):
    """A Debian package could not be downloaded or unpacked."""


def package_dir(package: str, cache_dir: Path | str | None = None) -> Path:
    """Where ``package`` is (or will be) unpacked: ``<cache>/packages/<package>``."""
    return Path(cache_dir or cache_root()) / "packages" / package


def is_unpacked(package: str, cache_dir: Path | str | None = None) -> bool:
    """True when ``package`` was fully unpacked by an earlier :func:`fetch_debian_packages`."""
    return (package_dir(package, cache_dir) / _COMPLETE_MARKER).is_file()


def fetch_debian_packages(
    packages: tuple[str, ...] = DEFAULT_PACKAGES,
    cache_dir: Path | str | None = None,
    update_index: bool = False,
) -> dict[str, Path]:
    """Download (``apt-get download``) and unpack (``dpkg -x``) ``packages`` into the cache; returns their roots.

    Already unpacked packages are not fetched again. With ``update_index`` a download that fails because the
    package is unknown runs ``apt-get update`` once (needs root) and retries; otherwise the error says to.
    """
    cache = Path(cache_dir or cache_root())
    roots = {name: package_dir(name, cache) for name in packages}
    missing = [name for name in packages if not is_unpacked(name, cache)]
    if not missing:
        return roots
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise PackageFetchError(f"{tool!r} not found on this machine; {_NO_DEBIAN_HINT}")
    download_dir = cache / "debs"
    download_dir.mkdir(parents=True, exist_ok=True)
    for name in missing:
        deb = _download(name, download_dir, update_index)
        root = roots[name]
        if root.exists():
            shutil.rmtree(root)  # a half-unpacked folder from an interrupted run
        root.mkdir(parents=True)
        _run(["dpkg", "-x", str(deb), str(root)], f"unpacking {deb.name}")
        (root / _COMPLETE_MARKER).write_text(deb.name + "\n")
    return roots


def _download(package: str, download_dir: Path, update_index: bool) -> Path:
    """The ``.deb`` of ``package`` in ``download_dir``, downloaded unless an earlier run left it there."""
    existing = sorted(download_dir.glob(f"{package}_*.deb"))
    if existing:
        return existing[-1]
    try:
        _run(["apt-get", "download", package], f"downloading {package}", cwd=download_dir)
    except PackageFetchError:
        if not update_index:
            raise
        _run(["apt-get", "update"], "updating the package index")
        _run(["apt-get", "download", package], f"downloading {package}", cwd=download_dir)
    found = sorted(download_dir.glob(f"{package}_*.deb"))
    if not found:
        raise PackageFetchError(f"apt-get download {package} succeeded but left no {package}_*.deb in {download_dir}")
    return found[-1]


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        hint = "; if the package is unknown, run `apt-get update` once (as root)" if command[1] == "download" else ""
        raise PackageFetchError(
            f"{what} failed (`{' '.join(command)}` exited {result.returncode}): {detail}{hint}; or {_NO_DEBIAN_HINT}"
        )
