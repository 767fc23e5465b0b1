"""CelebA faces from each raw form (tutorial HDF5, JPEG folder, zip read in place) to the prepared HDF5."""

from __future__ import annotations

import csv
import json
import zipfile
from collections import Counter
from pathlib import Path

import h5py
import numpy as np
import pytest
from configs import face_data_config
from hostile_files import OUTSIDE, add_huge, add_outside, png_header, zip_with_member
from PIL import Image

from gan_pipeline.data.faces import chunk_rows, crop_resize, prepare_faces, read_identities, read_partition
from gan_pipeline.errors import DataError


def _prepare(tmp_path, **cfg):
    cfg = {"split": "seeded", "partition_file": None, "identity_file": None, "on_bad_image": "error", **cfg}
    stats = prepare_faces(face_data_config(**cfg), tmp_path / "out.h5", tmp_path / "out.json")
    with h5py.File(tmp_path / "out.h5") as f:
        images, names = f["images"][()], [n.decode() for n in f["names"][()]]
        attrs = dict(f.attrs)
        chunks = f["images"].chunks
    return stats, images, names, attrs, chunks


def _decoded(folder, name):
    return np.asarray(Image.open(folder / name).convert("RGB"))


def test_crop_resize_takes_the_centre_square(face_arrays):
    face = face_arrays[3]
    assert np.array_equal(crop_resize(face, 128, 128), face[45:173, 25:153])  # (218-128)/2, (178-128)/2
    small = crop_resize(face, 128, 64)
    assert small.shape == (64, 64, 3) and small.dtype == np.uint8
    # Each 2x2 block of the crop, averaged, is close to the resized pixel (gradients are smooth).
    pooled = face[45:173, 25:153].reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    assert np.abs(small[4:-4, 4:-4] - pooled[4:-4, 4:-4]).mean() < 2


def test_jpeg_draft_decoding_matches_a_full_decode(tmp_path, face_arrays, write_face_jpegs):
    names = write_face_jpegs(tmp_path, face_arrays[:2])
    data = (tmp_path / names[0]).read_bytes()
    draft = crop_resize(data, 128, 64)
    full = crop_resize(_decoded(tmp_path, names[0]), 128, 64)
    assert draft.shape == full.shape == (64, 64, 3)
    assert np.abs(draft.astype(int) - full).mean() < 3
    assert np.array_equal(crop_resize(data, 128, 128), _decoded(tmp_path, names[0])[45:173, 25:153])


def test_a_jpeg_folder_becomes_one_chunked_dataset_train_rows_first(tmp_path, face_arrays, write_face_jpegs):
    folder = tmp_path / "img_align_celeba"
    names = write_face_jpegs(folder, face_arrays)
    (folder / "notes.txt").write_text("not an image")  # ignored in a folder
    stats, images, kept, attrs, chunks = _prepare(
        tmp_path, source="jpeg_folder", path=str(folder), test_fraction=0.25, image_size=128
    )
    assert images.shape == (12, 128, 128, 3) and images.dtype == np.uint8
    assert chunks == (chunk_rows(128), 128, 128, 3)
    assert (attrs["n_train"], attrs["n_test"], attrs["kind"]) == (9, 3, "faces")
    assert sorted(kept) == names and kept[:9] == sorted(kept[:9]) and kept[9:] == sorted(kept[9:])
    for row, name in enumerate(kept):
        assert np.array_equal(images[row], _decoded(folder, name)[45:173, 25:153])
    assert stats["n_train"] == 9 and stats["skipped"] == {}
    assert json.loads((tmp_path / "out.json").read_text())["content_hash"] == attrs["content_hash"]


def test_the_seeded_split_is_fixed_by_its_seed(tmp_path, face_arrays, write_face_jpegs):
    write_face_jpegs(tmp_path / "f", face_arrays)
    cfg = {"source": "jpeg_folder", "path": str(tmp_path / "f"), "test_fraction": 0.25}
    a, b = _prepare(tmp_path, **cfg)[2], _prepare(tmp_path, **cfg)[2]
    c = _prepare(tmp_path, **cfg, split_seed=1)[2]
    assert a == b and set(a[9:]) != set(c[9:])


@pytest.mark.parametrize("form", ["txt", "csv"])
def test_the_official_split_follows_the_partition_file(tmp_path, face_arrays, write_face_jpegs, form):
    names = write_face_jpegs(tmp_path / "f", face_arrays)
    partition = {name: (0, 0, 1, 2)[i % 4] for i, name in enumerate(names)}
    if form == "txt":  # list_eval_partition.txt
        text = "".join(f"{n} {p}\n" for n, p in partition.items())
    else:
        text = "filename,identity,eval_partition\n" + "".join(f"{n},7,{p}\n" for n, p in partition.items())
    (tmp_path / "part").write_text(text)
    assert read_partition(tmp_path / "part") == partition
    _, _, kept, attrs, _ = _prepare(
        tmp_path, source="jpeg_folder", path=str(tmp_path / "f"), split="official",
        partition_file=str(tmp_path / "part"),
    )  # fmt: skip
    assert kept[:6] == [n for n in names if partition[n] == 0]  # val (1) and test (2) are held out
    assert (attrs["n_train"], attrs["n_test"]) == (6, 6)


def test_a_partition_file_missing_an_image_is_an_error(tmp_path, face_arrays, write_face_jpegs):
    names = write_face_jpegs(tmp_path / "f", face_arrays[:3])
    (tmp_path / "part.txt").write_text(f"{names[0]} 0\n{names[1]} 1\n")
    with pytest.raises(DataError, match=rf"part.txt: no partition for 1 of 3 images \(first: {names[2]}\)"):
        _prepare(
            tmp_path, source="jpeg_folder", path=str(tmp_path / "f"), split="official",
            partition_file=str(tmp_path / "part.txt"),
        )  # fmt: skip


def test_the_tutorial_hdf5_gives_what_its_jpegs_give(
    tmp_path, face_arrays, write_face_jpegs, write_celeba_h5
):
    """The tutorial stored decoded arrays; from the same pixels both forms give the same crops."""
    names = write_face_jpegs(tmp_path / "f", face_arrays)
    decoded = np.array([_decoded(tmp_path / "f", n) for n in names])
    h5 = write_celeba_h5(tmp_path / "celeba_aligned_small.h5py", decoded)
    common = {"test_fraction": 0.25, "image_size": 128}
    from_h5 = _prepare(tmp_path, source="celeba_h5", path=str(h5), **common)
    from_folder = _prepare(tmp_path, source="jpeg_folder", path=str(tmp_path / "f"), **common)
    assert np.array_equal(from_h5[1], from_folder[1])
    train_numbers = [int(n.removesuffix(".jpg")) for n in from_h5[2][:9]]
    assert train_numbers == sorted(train_numbers) and max(train_numbers) >= 10  # by N, not "10.jpg" < "2.jpg"
    assert from_h5[0]["content_hash"] == from_folder[0]["content_hash"]


def test_an_hdf5_without_the_tutorial_group_is_named(tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"] = np.zeros((1, 2, 2, 3), np.uint8)
    with pytest.raises(DataError, match="x.h5: no 'img_align_celeba' group"):
        _prepare(tmp_path, source="celeba_h5", path=str(tmp_path / "x.h5"))


def _zip(tmp_path, face_arrays, write_face_jpegs, bad: bool):
    names = write_face_jpegs(tmp_path / "src", face_arrays[:8])
    path = tmp_path / "img_align_celeba.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.mkdir("img_align_celeba")
        for name in names:
            archive.write(tmp_path / "src" / name, f"img_align_celeba/{name}")
        if bad:
            archive.writestr("../evil.jpg", (tmp_path / "src" / names[0]).read_bytes())
            archive.writestr("img_align_celeba/readme.txt", "CelebA")
            archive.writestr("img_align_celeba/999999.jpg", (tmp_path / "src" / names[0]).read_bytes()[:600])
            archive.writestr("img_align_celeba/999998.jpg", b"\xff\xd8 not really a jpeg")
    return path


def test_a_zip_is_read_in_place_like_the_folder(tmp_path, face_arrays, write_face_jpegs):
    path = _zip(tmp_path, face_arrays, write_face_jpegs, bad=False)
    from_zip = _prepare(tmp_path, source="zip", path=str(path), test_fraction=0.25)
    from_folder = _prepare(tmp_path, source="jpeg_folder", path=str(tmp_path / "src"), test_fraction=0.25)
    assert np.array_equal(from_zip[1], from_folder[1]) and from_zip[1].shape == (8, 64, 64, 3)
    assert from_zip[2][0].startswith("img_align_celeba/")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img_align_celeba.zip", "out.h5", "out.json", "src"]


def test_bad_zip_members_are_skipped_and_counted(tmp_path, face_arrays, write_face_jpegs):
    path = _zip(tmp_path, face_arrays, write_face_jpegs, bad=True)
    stats, images, kept, _, _ = _prepare(tmp_path, source="zip", path=str(path), on_bad_image="skip")
    assert stats["skipped"] == {"corrupt": 2, "not_an_image": 1, "unsafe_name": 1}
    assert len(images) == 8 and not any("99999" in n or "evil" in n for n in kept)


@pytest.mark.parametrize(
    ("member", "problem"),
    [
        ("../evil.jpg", "member name escapes the archive"),
        ("img_align_celeba/readme.txt", r"not a .jpg/.jpeg/.png member"),
        ("img_align_celeba/999999.jpg", "cannot decode the image"),
    ],
)
def test_bad_zip_members_are_errors_by_default(tmp_path, face_arrays, write_face_jpegs, member, problem):
    path = _zip(tmp_path, face_arrays, write_face_jpegs, bad=True)
    with zipfile.ZipFile(path) as archive, zipfile.ZipFile(tmp_path / "one.zip", "w") as one:
        for info in archive.infolist():
            if not info.filename.startswith(("../", "img_align_celeba/9", "img_align_celeba/r")) or (
                info.filename == member
            ):
                one.writestr(info, archive.read(info))
    (tmp_path / "out.h5").write_bytes(b"earlier")
    with pytest.raises(DataError, match=rf"one.zip: {member}: {problem}.*on_bad_image: skip"):
        _prepare(tmp_path, source="zip", path=str(tmp_path / "one.zip"))
    assert (tmp_path / "out.h5").read_bytes() == b"earlier" and not (tmp_path / "out.json").exists()


def test_small_and_truncated_jpegs_in_a_folder(tmp_path, face_arrays, write_face_jpegs):
    folder = tmp_path / "f"
    write_face_jpegs(folder, face_arrays[:4])
    Image.fromarray(face_arrays[0][:100, :100]).save(folder / "small.jpg")
    (folder / "cut.jpg").write_bytes((folder / "000001.jpg").read_bytes()[:2000])
    stats = _prepare(
        tmp_path, source="jpeg_folder", path=str(folder), on_bad_image="skip", test_fraction=0.25
    )[0]
    assert stats["skipped"] == {"corrupt": 1, "too_small": 1} and stats["n_total"] == 4
    with pytest.raises(DataError, match=r"cut.jpg: cannot decode the image"):
        _prepare(tmp_path, source="jpeg_folder", path=str(folder))


def test_not_a_zip_and_empty_sources_are_named(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"nope")
    with pytest.raises(DataError, match="x.zip: not a readable zip archive"):
        _prepare(tmp_path, source="zip", path=str(tmp_path / "x.zip"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images found"):
        _prepare(tmp_path, source="jpeg_folder", path=str(tmp_path / "empty"))
    with pytest.raises(DataError, match="missing: folder not found"):
        _prepare(tmp_path, source="jpeg_folder", path=str(tmp_path / "missing"))


def test_decode_workers_and_max_images(tmp_path, face_arrays, write_face_jpegs):
    write_face_jpegs(tmp_path / "f", face_arrays)
    cfg = {"source": "jpeg_folder", "path": str(tmp_path / "f"), "test_fraction": 0.25}
    one = _prepare(tmp_path, **cfg, decode_workers=1)
    three = _prepare(tmp_path, **cfg, decode_workers=3)
    assert np.array_equal(one[1], three[1]) and one[0]["content_hash"] == three[0]["content_hash"]
    assert len(_prepare(tmp_path, **cfg, max_images=4)[1]) == 4


def test_grayscale_and_cmyk_jpegs_become_rgb_faces(tmp_path, face_arrays, write_face_jpegs):
    """CelebA holds RGB JPEGs; a grayscale or CMYK one is converted (as PIL's convert("RGB") does), not
    refused: a gray face is a face. Its pixels come out the same in R, G and B."""
    folder = tmp_path / "f"
    write_face_jpegs(folder, face_arrays[:4])
    Image.fromarray(face_arrays[4]).convert("L").save(folder / "000005.jpg", quality=95)
    Image.fromarray(face_arrays[5]).convert("CMYK").save(folder / "000006.jpg", quality=95)
    assert Image.open(folder / "000006.jpg").mode == "CMYK"
    _, images, names, _, _ = _prepare(
        tmp_path, source="jpeg_folder", path=str(folder), split="seeded", test_fraction=0.5, image_size=64
    )
    assert images.shape == (6, 64, 64, 3)
    gray = images[names.index("000005.jpg")]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])
    cmyk = images[names.index("000006.jpg")].astype(int)
    reference = crop_resize(_decoded(folder, "000006.jpg"), 128, 64).astype(int)
    assert np.abs(cmyk - reference).mean() < 3


@pytest.mark.parametrize("kind", sorted(OUTSIDE))
def test_a_celeba_hdf5_reading_other_files_is_refused_and_nothing_is_written(tmp_path, face_arrays, kind):
    """External storage over /etc/passwd or mlflow.db, an external link, a virtual dataset or a soft link
    would put other files' bytes into the prepared faces."""
    path = tmp_path / "celeba.h5py"
    with h5py.File(path, "w") as f:
        f.create_dataset("img_align_celeba/0.jpg", data=face_arrays[0])
        add_outside(f, "img_align_celeba/1.jpg", kind, tmp_path, face_arrays[1].shape)
    (tmp_path / "out.h5").write_bytes(b"earlier")
    with pytest.raises(DataError, match=rf"celeba.h5py: /img_align_celeba/1.jpg {OUTSIDE[kind]} .*\(refused"):
        _prepare(tmp_path, source="celeba_h5", path=str(path), on_bad_image="skip")
    assert (tmp_path / "out.h5").read_bytes() == b"earlier" and not (tmp_path / "out.json").exists()


def test_a_celeba_hdf5_declaring_a_huge_image_is_refused_before_reading(tmp_path, face_arrays):
    path = tmp_path / "celeba.h5py"
    with h5py.File(path, "w") as f:
        f.create_dataset("img_align_celeba/0.jpg", data=face_arrays[0])
        add_huge(f, "img_align_celeba/1.jpg", (40000, 40000, 3))  # 4.5 GiB declared
    assert path.stat().st_size < 200_000
    with pytest.raises(DataError, match=r"1.jpg declares shape \(40000, 40000, 3\) uint8, 4.5 GiB, over the "
                       r"48.0 MiB cap for one image \(4096x4096 RGB\)"):  # fmt: skip
        _prepare(tmp_path, source="celeba_h5", path=str(path), on_bad_image="skip")


def test_zip_members_over_the_size_caps_are_errors_or_skipped_and_counted(
    tmp_path, face_arrays, write_face_jpegs
):
    names = write_face_jpegs(tmp_path / "src", face_arrays[:4])
    faces = {f"img_align_celeba/{n}": (tmp_path / "src" / n).read_bytes() for n in names}
    big = zip_with_member(tmp_path / "big.zip", "img_align_celeba/big.png", 65 << 20, faces)
    ratio = zip_with_member(tmp_path / "ratio.zip", "img_align_celeba/zeros.jpg", 1 << 20, faces)
    assert big.stat().st_size < 200_000
    with pytest.raises(DataError, match=r"big.zip: img_align_celeba/big.png: declares 65.0 MiB uncompressed, "
                       r"over the 64.0 MiB cap for one image \(set on_bad_image: skip"):  # fmt: skip
        _prepare(tmp_path, source="zip", path=str(big))
    with pytest.raises(DataError, match=r"zeros.jpg: declares 1048576 bytes uncompressed from \d+ "
                       r"compressed, a ratio over the 100:1 cap"):  # fmt: skip
        _prepare(tmp_path, source="zip", path=str(ratio))
    for archive in (big, ratio):
        stats, images, _, _, _ = _prepare(
            tmp_path, source="zip", path=str(archive), on_bad_image="skip", test_fraction=0.25
        )
        assert stats["skipped"] == {"too_large": 1} and len(images) == 4


def test_png_bombs_are_skipped_and_counted_or_one_line_errors(tmp_path, face_arrays, write_face_jpegs):
    """Over the 4096x4096 cap (5000x5000, made with Pillow: 24 KB), over Pillow's warning limit (10000x10000)
    and over its error limit (20000x20000): none is decoded."""
    folder = tmp_path / "f"
    write_face_jpegs(folder, face_arrays[:4])
    Image.new("L", (5000, 5000)).save(folder / "bomb1.png")
    assert (folder / "bomb1.png").stat().st_size < 100_000
    (folder / "bomb2.png").write_bytes(png_header(10000, 10000))
    (folder / "bomb3.png").write_bytes(png_header(20000, 20000))
    stats = _prepare(
        tmp_path, source="jpeg_folder", path=str(folder), on_bad_image="skip", test_fraction=0.25
    )[0]
    assert stats["skipped"] == {"too_large": 3} and stats["n_total"] == 4
    for name, problem in [
        ("bomb1.png", r"5000x5000 pixels, over the 4096x4096 cap: not decoded \(set"),
        ("bomb2.png", r"not decoded: Image size \(100000000 pixels\) exceeds limit of 89478485 pixels"),
        ("bomb3.png", r"not decoded: Image size \(400000000 pixels\) exceeds limit"),
    ]:
        one = tmp_path / name
        one.mkdir()
        (one / name).write_bytes((folder / name).read_bytes())
        with pytest.raises(DataError, match=rf"{name}: {problem}.*on_bad_image: skip"):
            _prepare(tmp_path, source="jpeg_folder", path=str(one))


def test_faces_all_smaller_than_the_crop_say_which_crop_size_would_keep_them(tmp_path, face_arrays):
    folder = tmp_path / "f"
    folder.mkdir()
    for i, side in enumerate((90, 100, 100, 60)):
        Image.fromarray(face_arrays[i][:side, :side]).save(folder / f"{i:06d}.jpg")
    with pytest.raises(
        DataError, match=r"000000.jpg: 90x90 is smaller than the 128x128 crop \(set crop_size to at most 90, "
        r"or on_bad_image: skip to leave such images out\)$",
    ):  # fmt: skip
        _prepare(tmp_path, source="jpeg_folder", path=str(folder))
    with pytest.raises(DataError) as caught:
        _prepare(tmp_path, source="jpeg_folder", path=str(folder), on_bad_image="skip", test_fraction=0.25)
    assert str(caught.value) == (
        f"{folder}: the seeded split gives 0 train and 0 test images (each needs at least 1); on_bad_image: "
        "skip left out 4 of 4 images (too_small: 4); the too_small ones are narrower than crop_size 128 (the "
        "widest, on its shorter side, 100 px): set crop_size to at most 100"
    )
    stats = _prepare(tmp_path, source="jpeg_folder", path=str(folder), crop_size=100, test_fraction=0.5,
                     on_bad_image="skip")[0]  # fmt: skip
    assert stats["n_total"] == 2 and stats["skipped"] == {"too_small": 2}


# --- identities -------------------------------------------------------------------------------------------

SHARED_CELEBA = Path(__file__).resolve().parents[2] / "shared" / "data" / "celeba"


def _identity_file(path: Path, identity: dict[str, str], form: str) -> Path:
    """identity_CelebA.txt ("000001.jpg 2880" per line) or a CSV with filename and identity columns."""
    if form == "txt":
        path.write_text("".join(f"{n} {p}\n" for n, p in identity.items()))
    else:
        path.write_text("filename,identity,male\n" + "".join(f"{n},{p},1\n" for n, p in identity.items()))
    return path


def _faces_of_people(tmp_path, face_arrays, write_face_jpegs, sizes: list[int]) -> dict[str, str]:
    """sum(sizes) generated faces in tmp_path/f, the images of person i being the next sizes[i] files
    (000001.jpg, ...); returns each file's identity (CelebA-like numbers, person i is 100 + 7 * i)."""
    arrays = np.concatenate([face_arrays] * -(-sum(sizes) // len(face_arrays)))[: sum(sizes)]
    names = write_face_jpegs(tmp_path / "f", arrays)
    people = [str(100 + 7 * i) for i, size in enumerate(sizes) for _ in range(size)]
    return dict(zip(names, people, strict=True))


def _split_by_identity(tmp_path, identity_file: Path, **cfg):
    stats, _, kept, attrs, _ = _prepare(
        tmp_path, source="jpeg_folder", path=str(tmp_path / "f"), identity_file=str(identity_file),
        image_size=16, crop_size=128, **cfg,
    )  # fmt: skip
    return stats, kept[: attrs["n_train"]], kept[attrs["n_train"] :]


def test_a_seeded_split_with_an_identity_file_sends_whole_people_to_test(
    tmp_path, face_arrays, write_face_jpegs
):
    """8 people of 3 faces each and test_fraction 0.25: exactly 2 people (6 faces) go to test."""
    identity = _faces_of_people(tmp_path, face_arrays, write_face_jpegs, [3] * 8)
    path = _identity_file(tmp_path / "identity_CelebA.txt", identity, "txt")
    stats, train, test = _split_by_identity(tmp_path, path, test_fraction=0.25)
    assert len(test) == 6 and len({identity[n] for n in test}) == 2
    assert not {identity[n] for n in train} & {identity[n] for n in test}
    assert (stats["n_identities_train"], stats["n_identities_test"], stats["identities_shared"]) == (6, 2, 0)
    assert stats["identity_file"] == str(path)
    written = json.loads((tmp_path / "out.json").read_text())
    assert {k: written[k] for k in ("n_identities_train", "n_identities_test", "identities_shared")} == {
        "n_identities_train": 6, "n_identities_test": 2, "identities_shared": 0,
    }  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_identity_split_takes_the_fewest_people_that_reach_test_fraction(
    tmp_path, face_arrays, write_face_jpegs, seed
):
    """People of 1 to 6 faces (30 in all), test_fraction 0.3: the test side holds at least 9 faces, and the
    person taken last was needed to reach them (without the largest test person it would hold fewer)."""
    identity = _faces_of_people(tmp_path, face_arrays, write_face_jpegs, [6, 1, 4, 2, 5, 3, 1, 6, 2])
    path = _identity_file(tmp_path / "id.txt", identity, "txt")
    _, train, test = _split_by_identity(tmp_path, path, test_fraction=0.3, split_seed=seed)
    people = Counter(identity[n] for n in test)
    assert not set(people) & {identity[n] for n in train}
    assert len(test) >= 9 and len(test) - max(people.values()) < 9
    assert len(train) + len(test) == 30


def test_the_identity_split_is_fixed_by_its_seed_and_the_same_from_txt_and_csv(
    tmp_path, face_arrays, write_face_jpegs
):
    identity = _faces_of_people(tmp_path, face_arrays, write_face_jpegs, [2, 3, 1, 4, 2, 3, 1, 2, 2])
    txt = _identity_file(tmp_path / "id.txt", identity, "txt")
    csv_file = _identity_file(
        tmp_path / "id.csv", dict(reversed(identity.items())), "csv"
    )  # order: no matter
    a, b = _split_by_identity(tmp_path, txt)[2], _split_by_identity(tmp_path, txt)[2]
    assert a == b and _split_by_identity(tmp_path, csv_file)[2] == a
    others = [_split_by_identity(tmp_path, txt, split_seed=s)[2] for s in (1, 2, 3)]
    assert any(set(o) != set(a) for o in others)
    assert read_identities(txt) == read_identities(csv_file) == identity


def test_an_image_without_an_identity_is_a_one_line_error(tmp_path, face_arrays, write_face_jpegs):
    identity = _faces_of_people(tmp_path, face_arrays, write_face_jpegs, [3, 3, 3, 3])
    path = _identity_file(
        tmp_path / "id.txt", {n: p for n, p in identity.items() if n != "000011.jpg"}, "txt"
    )
    (tmp_path / "out.h5").write_bytes(b"earlier")
    with pytest.raises(DataError) as err:
        _split_by_identity(tmp_path, path)
    assert str(err.value) == f"{path}: no identity for 1 of 12 images (first: 000011.jpg)"
    assert (tmp_path / "out.h5").read_bytes() == b"earlier" and not (tmp_path / "out.json").exists()


def test_with_the_official_split_the_identity_file_is_only_counted(
    tmp_path, face_arrays, write_face_jpegs, capsys
):
    """The partition decides; the stats count the identities of each side. A person on both sides is a
    warning naming how many (CelebA's own official split has none)."""
    identity = _faces_of_people(tmp_path, face_arrays, write_face_jpegs, [4, 4, 4])
    path = _identity_file(tmp_path / "id.txt", identity, "txt")
    disjoint = {n: "0" if p != "114" else "2" for n, p in identity.items()}  # the third person held out
    (tmp_path / "part.txt").write_text("".join(f"{n} {p}\n" for n, p in disjoint.items()))
    official = {"split": "official", "partition_file": str(tmp_path / "part.txt")}
    stats, train, test = _split_by_identity(tmp_path, path, **official)
    assert test == [n for n, p in identity.items() if p == "114"]
    assert (stats["n_identities_train"], stats["n_identities_test"], stats["identities_shared"]) == (2, 1, 0)
    out = capsys.readouterr()
    assert (
        "2 identities in train, 1 in test, none in both: the official split is identity-disjoint" in out.out
    )
    mixed = {n: str(i % 2) for i, n in enumerate(identity)}  # every person's faces on both sides
    (tmp_path / "part.txt").write_text("".join(f"{n} {p}\n" for n, p in mixed.items()))
    stats = _split_by_identity(tmp_path, path, **official)[0]
    assert (stats["n_identities_train"], stats["n_identities_test"], stats["identities_shared"]) == (3, 3, 3)
    (warning,) = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith(
        f"warning: {tmp_path / 'part.txt'}: 3 of the identities in {path} have faces in both train "
        "(3 identities) and test (3): the official split is not identity-disjoint"
    )


def test_without_an_identity_file_the_stats_have_no_identity_counts(tmp_path, face_arrays, write_face_jpegs):
    write_face_jpegs(tmp_path / "f", face_arrays[:4])
    stats = _prepare(tmp_path, source="jpeg_folder", path=str(tmp_path / "f"), test_fraction=0.25)[0]
    assert {k: stats[k] for k in ("identity_file", "n_identities_train", "identities_shared")} == {
        "identity_file": None, "n_identities_train": None, "identities_shared": None,
    }  # fmt: skip


def test_a_split_by_identity_that_empties_a_side_says_how_many_people_it_had(
    tmp_path, face_arrays, write_face_jpegs
):
    identity = _faces_of_people(tmp_path, face_arrays, write_face_jpegs, [5])
    path = _identity_file(tmp_path / "id.txt", identity, "txt")
    with pytest.raises(DataError, match=rf"gives 0 train and 5 test images \(each needs at least 1\); it "
                       rf"moves whole identities, and {path} gives these images 1$"):  # fmt: skip
        _split_by_identity(tmp_path, path)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "000001.jpg 7\n000002.jpg\n",
            r"id: line 2: expected a file name and an identity, found \['000002.jpg'\]",
        ),
        (
            "000001.jpg 7 8\n",
            r"id: line 1: expected a file name and an identity, found \['000001.jpg', '7', '8'\]",
        ),
        (
            "filename,person\n000001.jpg,7\n",
            r"id: expected CSV columns filename and identity, found \['filename'",
        ),
        ("filename,identity\n000001.jpg,\n", r"id: line 2: expected a file name and an identity, found"),
    ],
)
def test_a_malformed_identity_file_is_named_with_its_line(tmp_path, text, problem):
    (tmp_path / "id").write_text(text)
    with pytest.raises(DataError, match=problem):
        read_identities(tmp_path / "id")
    with pytest.raises(DataError, match="missing: cannot read the identity file"):
        read_identities(tmp_path / "missing")


def test_real_celeba_faces_split_by_identity_share_no_person(tmp_path):
    """48 of the shared real CelebA faces, 6 each of 8 people (6 from the official train partition, 2 from
    val), with celeba_labels.csv as identity and partition file: the seeded split by identity sends exactly
    2 whole people to test (12 faces: test_fraction 0.25), and CelebA's official split shares no person."""
    labels = SHARED_CELEBA / "celeba_labels.csv"
    if not labels.is_file():
        pytest.skip(f"{SHARED_CELEBA}: the shared CelebA faces are not beside this checkout")
    by_person: dict[tuple[str, str], list[str]] = {}
    for row in sorted(csv.DictReader(labels.open()), key=lambda r: r["filename"]):
        by_person.setdefault((row["eval_partition"], row["identity"]), []).append(row["filename"])
    people = sorted(k for k in by_person if k[0] == "0")[:6] + sorted(k for k in by_person if k[0] == "1")[:2]
    identity = {name: person for partition, person in people for name in by_person[partition, person][:6]}
    assert len(identity) == 48
    (tmp_path / "f").mkdir()
    for name in identity:
        (tmp_path / "f" / name).write_bytes((SHARED_CELEBA / "img_align_celeba" / name).read_bytes())
    stats, train, test = _split_by_identity(tmp_path, labels, test_fraction=0.25)
    assert len(test) == 12 and not {identity[n] for n in train} & {identity[n] for n in test}
    assert (stats["n_identities_train"], stats["n_identities_test"], stats["identities_shared"]) == (6, 2, 0)
    stats, _, test = _split_by_identity(tmp_path, labels, split="official", partition_file=str(labels))
    assert {identity[n] for n in test} == {person for partition, person in people if partition == "1"}
    assert (stats["n_identities_train"], stats["n_identities_test"], stats["identities_shared"]) == (6, 2, 0)
