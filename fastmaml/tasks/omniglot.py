"""Omniglot (Lake, Salakhutdinov & Tenenbaum, 2015) for few-shot learning.

Reads the official image sets, as zips or as the folders they extract to, from a data root:

    <root>/images_background.zip          30 alphabets, 964 characters   (or <root>/images_background/)
    <root>/images_evaluation.zip          20 alphabets, 659 characters
    <root>/images_background_small1.zip   5 alphabets, 136 characters    ("minimal" split 1)
    <root>/images_background_small2.zip   5 alphabets, 156 characters    ("minimal" split 2)

each holding `<set>/<Alphabet>/characterNN/*.png` (105x105, 20 drawers per character). Images
are resized to 28x28 (Lanczos), inverted so that strokes are 1 and paper 0 (as in the MAML code),
and cached as one uint8 tensor file per set under the cache folder after the first load.
Rotations by multiples of 90 degrees make new classes (Santoro et al., 2016; Finn et al., 2017).

    data = Omniglot.load(["images_background_small1"], root="../shared/data/omniglot")
    data.images  # [N, 1, 28, 28] float32 in [0, 1];  data.labels  # [N] class ids
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import posixpath
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

DATA_ENV = "FASTMAML_DATA"
CACHE_ENV = "FASTMAML_CACHE"
CACHE_VERSION = 1

# The official files (github.com/brendenlake/omniglot, folder python/). The md5 of the two full
# sets are the ones torchvision checks; those of the small splits were computed from the copies in
# ../shared/data/omniglot, which the project's tests read.
URL_PREFIX = "https://github.com/brendenlake/omniglot/raw/master/python"
MD5 = {
    "images_background": "68d2efa1b9178cc56df9314c21c6e718",
    "images_evaluation": "6b91aef0f799c5bb55b94e3f2daec811",
    "images_background_small1": "e704a628b5459e08445c13499850abc4",
    "images_background_small2": "b75a71a51d3b13f821f212756fe481fd",
}
SETS = tuple(MD5)

# Splits by alphabet. "small": meta-train on the five alphabets of small1, meta-test on the
# three alphabets of small2 that small1 lacks (small2's Greek and Latin are small1's files).
# "standard": the dataset authors' background / evaluation split.
SPLITS: dict[str, dict[str, tuple[tuple[str, tuple[str, ...] | None], ...]]] = {
    "small": {
        "train": (("images_background_small1", None),),
        "test": (("images_background_small2", ("Japanese_(katakana)", "Sanskrit", "Tagalog")),),
    },
    "standard": {
        "train": (("images_background", None),),
        "test": (("images_evaluation", None),),
    },
}


class OmniglotError(Exception):
    """The data is missing, corrupt or unsafe; the message says which file and what to do."""


# ---- paths -------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """$FASTMAML_CACHE, else $XDG_CACHE_HOME/fastmaml, else ~/.cache/fastmaml."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fastmaml"


def resolve_root(root: str | os.PathLike | None, download: bool = False) -> Path:
    """The data root: `root`, else $FASTMAML_DATA, else (only when downloading) <cache>/omniglot."""
    if root is None:
        root = os.environ.get(DATA_ENV) or None
    if root is None:
        if download:
            return default_cache_dir() / "omniglot"
        raise OmniglotError(f"no Omniglot data folder given: pass --data-root (or set ${DATA_ENV}), "
                            "or --download to fetch the official files")
    path = Path(root).expanduser()
    if not path.is_dir() and not download:
        raise OmniglotError(f"Omniglot data folder {str(path)!r} does not exist")
    return path


def find_source(root: Path, name: str) -> Path:
    """The folder `<root>/<name>` if it exists, else the zip `<root>/<name>.zip`."""
    if name not in SETS:
        raise OmniglotError(f"unknown Omniglot set {name!r}; the sets are {list(SETS)}")
    folder, archive = root / name, root / f"{name}.zip"
    if folder.is_dir():
        return folder
    if archive.is_file():
        return archive
    raise OmniglotError(f"{name} not found in {str(root)!r}: expected {archive.name} or the folder {name}/ "
                        "(--download fetches the official files)")


# ---- zip safety --------------------------------------------------------------------------------
def safe_member_path(member: str, target: str | os.PathLike) -> Path:
    """Where zip member `member` lands under `target`; raises OmniglotError if it would land
    outside (absolute path, drive letter, `..` climbing out, backslash tricks)."""
    target = Path(target).resolve()
    name = member.replace("\\", "/")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":") or "\x00" in name:
        raise OmniglotError(f"refusing zip member {member!r}: absolute path")
    normal = posixpath.normpath(name)
    if normal == ".." or normal.startswith("../"):
        raise OmniglotError(f"refusing zip member {member!r}: its path escapes the target folder")
    dest = (target / normal).resolve()
    if dest != target and target not in dest.parents:
        raise OmniglotError(f"refusing zip member {member!r}: its path escapes the target folder")
    return dest


def check_archive(zf: zipfile.ZipFile, target: str | os.PathLike = ".") -> None:
    """Refuse the whole archive if any member would escape `target`."""
    for info in zf.infolist():
        safe_member_path(info.filename, target)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract `archive` into `target`, after checking that no member escapes it (nothing is
    written if one does). Symbolic-link members are refused."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        check_archive(zf, target)
        for info in zf.infolist():
            mode = (info.external_attr >> 16) & 0o170000
            if mode == 0o120000:
                raise OmniglotError(f"refusing zip member {info.filename!r}: symbolic link")
        for info in zf.infolist():
            dest = safe_member_path(info.filename, target)
            if info.is_dir():
                dest.mkdir(parents=True, exist_ok=True)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(dest, "wb") as out:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
    return target


# ---- download ----------------------------------------------------------------------------------
def file_md5(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike, md5: str) -> None:
    actual = file_md5(path)
    if actual != md5:
        raise OmniglotError(f"{str(path)!r} has md5 {actual}, expected {md5}: the file is corrupt or not "
                            "the official one; delete it and download again")


def fetch(name: str, root: str | os.PathLike, url_prefix: str = URL_PREFIX) -> Path:
    """Fetch `<name>.zip` into `root` (kept if already there with the right checksum); the file
    appears only once complete and verified."""
    if name not in MD5:
        raise OmniglotError(f"unknown Omniglot set {name!r}; the sets are {list(SETS)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    dest = root / f"{name}.zip"
    if dest.is_file():
        verify_checksum(dest, MD5[name])
        return dest
    url = f"{url_prefix}/{name}.zip"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                out.write(chunk)
        verify_checksum(tmp, MD5[name])
        os.replace(tmp, dest)
    except OSError as err:
        raise OmniglotError(f"downloading {url} failed: {err}") from err
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


# ---- decoding and caching ----------------------------------------------------------------------
def _decode(data: bytes, size: int) -> Tensor:
    from PIL import Image  # Pillow comes with matplotlib, a dependency

    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.LANCZOS)
        pixels = torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).reshape(size, size)
    return 255 - pixels  # strokes 1, paper 0


def _decode_member(source: Path, zf: zipfile.ZipFile | None, member: str, size: int) -> Tensor:
    """One image of a folder (`member` a path) or a zip (`member` a member name); an unreadable
    or undecodable image is an OmniglotError naming it."""
    where = member if zf is None else f"{member} in {source}"
    try:
        return _decode(Path(member).read_bytes() if zf is None else zf.read(member), size)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:  # PIL's errors are OSErrors
        raise OmniglotError(f"cannot read the Omniglot image {where!r}: {type(err).__name__}: {err}; "
                            f"the file is corrupt: restore it (or fetch the set again with --download)") from err


def _parse(relpath: str) -> tuple[str, str] | None:
    """('Alphabet', 'characterNN') of `<set>/<Alphabet>/<characterNN>/<file>.png`, else None."""
    parts = [p for p in relpath.replace("\\", "/").split("/") if p]
    if len(parts) < 3 or not parts[-1].lower().endswith(".png"):
        return None
    return parts[-3], parts[-2]


def _members(source: Path) -> list[tuple[str, str, str]]:
    """Sorted (alphabet, character, member) of every image of a zip or folder."""
    found = []
    if source.is_dir():
        for path in source.rglob("*.png"):
            key = _parse(path.relative_to(source).as_posix())
            if key:
                found.append((*key, str(path)))
    else:
        try:
            with zipfile.ZipFile(source) as zf:
                check_archive(zf)
                for name in zf.namelist():
                    key = _parse(name)
                    if key:
                        found.append((*key, name))
        except zipfile.BadZipFile as err:
            raise OmniglotError(f"{str(source)!r} is not a readable zip file ({err})") from err
    found.sort()
    if not found:
        raise OmniglotError(f"{str(source)!r} holds no <Alphabet>/<character>/*.png images")
    return found


def _signature(source: Path) -> str:
    st = source.stat()
    if source.is_dir():
        pngs = list(source.rglob("*.png"))
        key = f"{source.resolve()}|dir|{len(pngs)}|{max((p.stat().st_mtime_ns for p in pngs), default=0)}"
    else:
        key = f"{source.resolve()}|zip|{st.st_size}|{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files of `path` (".<name>.<pid>.*.tmp") left by writers that were
    killed mid-write; those of a live process (same host) are its writes in progress."""
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].partition(".")[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        with contextlib.suppress(OSError):
            tmp.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save to a temporary file in the same folder, then os.replace: readers see the old
    file or the complete new one, never a partial one. Temporaries of killed writers are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_set(source: Path, image_size: int = 28, cache_dir: str | os.PathLike | None = None) -> dict:
    """One image set as {"images": uint8 [n, s, s], "character": int64 [n], "characters": list of
    "Alphabet/characterNN"}; read from the cache when the source has not changed."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"omniglot-{source.name.removesuffix('.zip')}-{image_size}px-{_signature(source)}.pt"
    if cache_file.is_file():
        try:
            data = torch.load(cache_file, weights_only=True)
            if data.get("version") == CACHE_VERSION:
                return data
        except Exception as err:  # a corrupt cache is rebuilt, never trusted
            warnings.warn(f"ignoring unreadable Omniglot cache {cache_file}: {err}", stacklevel=2)
    members = _members(source)
    characters = sorted({f"{a}/{c}" for a, c, _ in members})
    index = {name: i for i, name in enumerate(characters)}
    images = torch.empty(len(members), image_size, image_size, dtype=torch.uint8)
    try:
        zf = None if source.is_dir() else zipfile.ZipFile(source)
        with zf or contextlib.nullcontext():
            for i, (_, _, member) in enumerate(members):
                images[i] = _decode_member(source, zf, member, image_size)
    except zipfile.BadZipFile as err:
        raise OmniglotError(f"{str(source)!r} is not a readable zip file ({err})") from err
    data = {
        "version": CACHE_VERSION,
        "images": images,
        "character": torch.tensor([index[f"{a}/{c}"] for a, c, _ in members], dtype=torch.int64),
        "characters": characters,
    }
    try:
        atomic_save(data, cache_file)
    except OSError as err:
        warnings.warn(f"could not write the Omniglot cache {cache_file} ({err}); set --cache-dir or "
                      f"${CACHE_ENV} to a writable folder to avoid decoding the images every time", stacklevel=2)
    return data


# ---- the dataset -------------------------------------------------------------------------------
@dataclass
class Omniglot:
    """Labeled images: `images` [N, 1, s, s] float32 in [0, 1], `labels` [N] in 0..C-1, and per
    class its `class_names` ("Alphabet/characterNN/rot90") and `class_alphabets`.

    Attributes:
        images: [N, 1, s, s] float32 in [0, 1].
        labels: [N] in 0..C-1.
        class_names: each class's name.
        class_alphabets: each class's alphabet.
        sources: where the images came from (files or archives).
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    class_alphabets: list[str]
    sources: list[str] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def alphabets(self) -> list[str]:
        return sorted(set(self.class_alphabets))

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def load(cls, sets: Iterable[str | tuple[str, Sequence[str] | None]] = ("images_background_small1",),
             root: str | os.PathLike | None = None, image_size: int = 28,
             rotations: Sequence[int] = (0, 90, 180, 270), cache_dir: str | os.PathLike | None = None,
             download: bool = False) -> Omniglot:
        """Load image sets from `root`; each entry is a set name or (set name, alphabets to keep or
        None for all). A character present in several sets (small1 and small2 share Greek and
        Latin) is kept once. Every rotation in `rotations` (degrees, multiples of 90) makes a class."""
        for r in rotations:
            if r % 90:
                raise ValueError(f"rotations must be multiples of 90 degrees, got {r}")
        if not rotations:
            raise ValueError("rotations must hold at least one angle (0 for none)")
        base = resolve_root(root, download)
        chars: dict[str, Tensor] = {}
        sources = []
        for entry in sets:
            name, keep = (entry, None) if isinstance(entry, str) else entry
            if download and not (base / name).is_dir():
                fetch(name, base)
            source = find_source(base, name)
            sources.append(str(source))
            data = load_set(source, image_size, cache_dir)
            names = data["characters"]
            if keep is not None:
                present = {n.split("/")[0] for n in names}
                missing = [a for a in keep if a not in present]
                if missing:
                    raise OmniglotError(f"{source.name} has no alphabet {missing}; it has {sorted(present)}")
            for ci, cname in enumerate(names):
                if (keep is None or cname.split("/")[0] in keep) and cname not in chars:
                    chars[cname] = data["images"][data["character"] == ci]
        return cls.from_characters(chars, rotations, sources)

    @classmethod
    def from_characters(cls, chars: dict[str, Tensor], rotations: Sequence[int] = (0,),
                        sources: list[str] | None = None) -> Omniglot:
        """Build from {"Alphabet/character": uint8 images [n, s, s]}."""
        images: list[Tensor] = []
        labels: list[Tensor] = []
        class_names: list[str] = []
        class_alphabets: list[str] = []
        for cname in sorted(chars):
            imgs = chars[cname].float().div_(255).unsqueeze(1)
            for r in rotations:
                images.append(torch.rot90(imgs, (r // 90) % 4, dims=(-2, -1)))
                labels.append(torch.full((imgs.shape[0],), len(class_names), dtype=torch.int64))
                class_names.append(f"{cname}/rot{r % 360}")
                class_alphabets.append(cname.split("/")[0])
        if not images:
            raise OmniglotError("no Omniglot characters selected")
        return cls(torch.cat(images).contiguous(), torch.cat(labels), class_names, class_alphabets, sources or [])


def load_split(split: str = "small", part: str = "train", root: str | os.PathLike | None = None,
               rotations: Sequence[int] | None = None, image_size: int = 28,
               cache_dir: str | os.PathLike | None = None, download: bool = False) -> Omniglot:
    """One side of a split by alphabet (see SPLITS): part "train" (default rotations 0/90/180/270)
    or "test" (default no rotation: the unseen characters as drawn).

    Args:
        split: the split by alphabet (see SPLITS), "small" by default.
        part: "train" or "test".
        root: the Omniglot folder (None: the default data folder).
        rotations: the rotations added as new classes (default: train 0/90/180/270, test 0).
        image_size: the side the images are resized to.
        cache_dir: where the decoded tensors are cached (None: the default).
        download: download the archives if missing.
    """
    if split not in SPLITS:
        raise OmniglotError(f"unknown Omniglot split {split!r}; the splits are {list(SPLITS)}")
    if part not in SPLITS[split]:
        raise OmniglotError(f"split {split!r} has no part {part!r}; it has {list(SPLITS[split])}")
    if rotations is None:
        rotations = (0, 90, 180, 270) if part == "train" else (0,)
    return Omniglot.load(SPLITS[split][part], root, image_size, rotations, cache_dir, download)
