"""Debian package fetching, without network: fake ``apt-get`` scripts on PATH, a real ``.deb`` built locally."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ultrafastbert.data import sources
from ultrafastbert.data.sources import PackageFetchError, cache_root, fetch_debian_packages, is_unpacked


def _fake_tool(folder: Path, name: str, script: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)


def _path_with(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ULTRAFASTBERT_CACHE", str(tmp_path / "elsewhere"))
    assert cache_root() == tmp_path / "elsewhere"
    monkeypatch.delenv("ULTRAFASTBERT_CACHE")
    assert cache_root() == Path.home() / ".cache" / "ultrafastbert"


def test_missing_apt_says_to_use_local_text(monkeypatch, tmp_path):
    monkeypatch.setattr(sources.shutil, "which", lambda tool: None)
    with pytest.raises(PackageFetchError, match="apt-get.*not found.*plain-text or JSONL"):
        fetch_debian_packages(("fortunes",), tmp_path)


def test_failed_download_names_the_package_and_the_fixes(monkeypatch, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_tool(bin_dir, "apt-get", 'echo "E: Unable to locate package $2" >&2; exit 100\n')
    _fake_tool(bin_dir, "dpkg", "exit 0\n")
    _path_with(monkeypatch, bin_dir)
    with pytest.raises(PackageFetchError, match=r"downloading nosuchpkg failed.*Unable to locate.*apt-get update"):
        fetch_debian_packages(("nosuchpkg",), tmp_path / "cache")
    assert not is_unpacked("nosuchpkg", tmp_path / "cache")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build a test package")
def test_download_unpack_and_reuse(monkeypatch, tmp_path):
    # a real (tiny) Debian package, served by a fake apt-get that counts its calls
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: tiny\nVersion: 1:1.0-1\nArchitecture: all\nMaintainer: nobody <n@example.org>\nDescription: t\n"
    )
    (tree / "usr/share/tiny").mkdir(parents=True)
    (tree / "usr/share/tiny/words").write_text("hello world\n")
    deb = tmp_path / "tiny.deb"
    subprocess.run(["dpkg-deb", "--build", str(tree), str(deb)], check=True, capture_output=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    _fake_tool(bin_dir, "apt-get", f'echo "$@" >> {calls}\ncp {deb} "tiny_1%3a1.0-1_all.deb"\n')
    _path_with(monkeypatch, bin_dir)

    roots = fetch_debian_packages(("tiny",), tmp_path / "cache")
    assert (roots["tiny"] / "usr/share/tiny/words").read_text() == "hello world\n"
    assert is_unpacked("tiny", tmp_path / "cache")
    assert fetch_debian_packages(("tiny",), tmp_path / "cache") == roots
    assert calls.read_text().splitlines() == ["download tiny"]  # the second call fetched nothing
