"""The Omniglot loader: zip and folder sources, caching, rotations, splits by alphabet, zip
safety and checksums. Real-data tests read ../shared/data/omniglot (or $FASTMAML_DATA)."""

import io
import os
import zipfile
from pathlib import Path

import pytest
import torch

from fastmaml.tasks import omniglot as og

REPO = Path(__file__).resolve().parents[2]


def data_root() -> Path | None:
    for candidate in (os.environ.get("FASTMAML_DATA"), REPO.parent / "shared" / "data" / "omniglot"):
        if candidate and (Path(candidate) / "images_background_small1.zip").is_file():
            return Path(candidate)
    return None


needs_data = pytest.mark.skipif(data_root() is None, reason="Omniglot small splits not found in $FASTMAML_DATA "
                                "or ../shared/data/omniglot")


def png(value: int, size: int = 105) -> bytes:
    from PIL import Image

    img = Image.new("L", (size, size), 255)
    img.putpixel((value % size, 0), 0)  # one black pixel (a stroke) at a position we can find
    buf = io.BytesIO()
    img.convert("1").save(buf, format="PNG")
    return buf.getvalue()


def make_set(path: Path, name: str, layout: dict[str, int], drawers: int = 3, as_zip: bool = True) -> Path:
    """A tiny image set: layout maps alphabet -> number of characters."""
    files = {}
    for alphabet, chars in layout.items():
        for c in range(1, chars + 1):
            for d in range(1, drawers + 1):
                files[f"{name}/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"] = png(c * 10 + d)
    if as_zip:
        target = path / f"{name}.zip"
        with zipfile.ZipFile(target, "w") as zf:
            for member, data in files.items():
                zf.writestr(member, data)
        return target
    for member, data in files.items():
        (path / member).parent.mkdir(parents=True, exist_ok=True)
        (path / member).write_bytes(data)
    return path / name


@pytest.fixture
def cache(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("FASTMAML_CACHE", str(folder))
    return folder


@pytest.mark.parametrize("as_zip", [True, False])
def test_load_synthetic_zip_and_folder(tmp_path, cache, as_zip):
    make_set(tmp_path, "images_background_small1", {"Alpha": 2, "Beta": 1}, as_zip=as_zip)
    data = og.Omniglot.load(["images_background_small1"], root=tmp_path, rotations=(0, 90))
    assert data.images.shape == (3 * 2 * 3, 1, 28, 28) and data.images.dtype == torch.float32
    assert data.num_classes == 6 and data.alphabets == ["Alpha", "Beta"]
    assert data.class_names[:2] == ["Alpha/character01/rot0", "Alpha/character01/rot90"]
    assert torch.bincount(data.labels).tolist() == [3] * 6
    assert 0 <= data.images.min() and data.images.max() <= 1 and data.images.sum() > 0  # strokes are 1
    r0, r90 = data.images[data.labels == 0], data.images[data.labels == 1]
    assert torch.equal(torch.rot90(r0, 1, dims=(-2, -1)), r90)
    assert len(list(cache.glob("omniglot-images_background_small1-28px-*.pt"))) == 1


def test_cache_is_used_and_loaded_weights_only(tmp_path, cache, monkeypatch):
    make_set(tmp_path, "images_background_small1", {"Alpha": 1})
    first = og.Omniglot.load(["images_background_small1"], root=tmp_path, rotations=(0,))
    [cache_file] = cache.glob("*.pt")
    torch.load(cache_file, weights_only=True)  # plain tensors, strings and ints only
    monkeypatch.setattr(og, "_decode", lambda *a: pytest.fail("decoded again despite the cache"))
    second = og.Omniglot.load(["images_background_small1"], root=tmp_path, rotations=(0,))
    assert torch.equal(first.images, second.images)


def test_alphabet_filter_and_dedup(tmp_path, cache):
    make_set(tmp_path, "images_background_small1", {"Greek": 2, "Korean": 1})
    make_set(tmp_path, "images_background_small2", {"Greek": 2, "Tagalog": 1})
    both = og.Omniglot.load(["images_background_small1", "images_background_small2"], root=tmp_path, rotations=(0,))
    assert both.num_classes == 4  # Greek counted once
    only = og.Omniglot.load([("images_background_small2", ["Tagalog"])], root=tmp_path, rotations=(0,))
    assert only.alphabets == ["Tagalog"]
    with pytest.raises(og.OmniglotError, match="no alphabet"):
        og.Omniglot.load([("images_background_small2", ["Sanskrit"])], root=tmp_path)


def test_missing_data_messages(tmp_path, cache, monkeypatch):
    monkeypatch.delenv("FASTMAML_DATA", raising=False)
    with pytest.raises(og.OmniglotError, match="--data-root"):
        og.resolve_root(None)
    with pytest.raises(og.OmniglotError, match="does not exist"):
        og.resolve_root(tmp_path / "nope")
    with pytest.raises(og.OmniglotError, match="images_evaluation.zip"):
        og.load_split("standard", "test", root=tmp_path)
    monkeypatch.setenv("FASTMAML_DATA", str(tmp_path))
    assert og.resolve_root(None) == tmp_path


@pytest.mark.parametrize("member", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt", "..\\evil.txt",
                                    "C:/evil.txt"])
def test_extraction_refuses_escaping_members(tmp_path, member):
    archive = tmp_path / "crafted.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/ok.txt", b"ok")
        zf.writestr(member, b"evil")
    target = tmp_path / "out"
    with pytest.raises(og.OmniglotError, match="refusing zip member"):
        og.safe_extract(archive, target)
    assert not (tmp_path / "evil.txt").exists() and not (target / "fine").exists()  # nothing written


def test_reading_a_crafted_zip_is_refused(tmp_path, cache):
    archive = tmp_path / "images_background_small1.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("images_background_small1/A/character01/x.png", png(1))
        zf.writestr("../../etc/x.png", png(2))
    with pytest.raises(og.OmniglotError, match="escapes"):
        og.Omniglot.load(["images_background_small1"], root=tmp_path)


def test_safe_extract_and_checksum(tmp_path):
    src = make_set(tmp_path, "images_background_small1", {"Alpha": 1}, drawers=2)
    out = og.safe_extract(src, tmp_path / "out")
    assert len(list((out / "images_background_small1").rglob("*.png"))) == 2
    good = og.file_md5(src)
    og.verify_checksum(src, good)
    with pytest.raises(og.OmniglotError, match="expected 0+"):
        og.verify_checksum(src, "0" * 32)


def test_fetch_verifies_before_keeping(tmp_path, monkeypatch):
    """fetch() through a file:// URL: a wrong checksum leaves nothing behind."""
    served = tmp_path / "served"
    served.mkdir()
    make_set(served, "images_background_small1", {"Alpha": 1})
    root = tmp_path / "root"
    with pytest.raises(og.OmniglotError, match="md5"):
        og.fetch("images_background_small1", root, url_prefix=served.as_uri())
    assert list(root.iterdir()) == []
    monkeypatch.setitem(og.MD5, "images_background_small1", og.file_md5(served / "images_background_small1.zip"))
    path = og.fetch("images_background_small1", root, url_prefix=served.as_uri())
    assert path.read_bytes() == (served / "images_background_small1.zip").read_bytes()


@needs_data
def test_real_small_split_by_alphabet():
    root = data_root()
    train = og.load_split("small", "train", root=root)
    test = og.load_split("small", "test", root=root)
    assert train.num_classes == 136 * 4 and len(train) == 136 * 4 * 20
    assert test.num_classes == 106 and len(test) == 106 * 20
    assert test.alphabets == ["Japanese_(katakana)", "Sanskrit", "Tagalog"]
    assert not set(train.alphabets) & set(test.alphabets)
    assert train.images.shape[1:] == (1, 28, 28)
    assert 0.03 < float(train.images.mean()) < 0.2  # thin strokes on blank paper


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_corrupt_image_in_a_folder_is_named(tmp_path, cache, damage):
    source = make_set(tmp_path, "images_background_small1", {"Alpha": 1}, as_zip=False)
    bad = source / "Alpha" / "character01" / "0001_02.png"
    data = bad.read_bytes()
    bad.write_bytes({"garbage": b"not a png at all", "empty": b"", "truncated": data[: len(data) // 2]}[damage])
    with pytest.raises(og.OmniglotError, match=r"cannot read the Omniglot image '.*0001_02.png'.*the file is corrupt"):
        og.Omniglot.load(["images_background_small1"], root=tmp_path)


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_a_bit_flipped_zip_member_is_named(tmp_path, cache, compression):
    archive = tmp_path / "images_background_small1.zip"
    name = "images_background_small1/Alpha/character01/0001_01.png"
    with zipfile.ZipFile(archive, "w", compression=compression) as zf:
        zf.writestr(name, png(1))
        zf.writestr("images_background_small1/Alpha/character01/0001_02.png", png(2))
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(name)
    raw = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[start + info.compress_size // 2] ^= 0xFF  # one byte in the middle of the member's data
    archive.write_bytes(bytes(raw))
    with pytest.raises(og.OmniglotError, match=rf"cannot read the Omniglot image '{name} in .*images_background_small1"
                                               rf"\.zip'"):
        og.Omniglot.load(["images_background_small1"], root=tmp_path)
