"""Feature exports: BigFile directories, zarr and HDF5 feature files, read back without the exporter's reader."""

import h5py
import numpy as np
import pytest
import zarr

from pipeline.exports import (
    BIGFILE,
    HDF5,
    ZARR,
    BigFileError,
    FeatureSet,
    SplitFeatures,
    export_split_features,
    read_bigfile,
    read_split_features,
    write_bigfile,
)


def independent_bigfile_reader(directory):
    """Parse a BigFile as TeachCLIP's reader does: shape.txt, whitespace-separated ids, raw float32 rows."""
    rows, dim = (int(value) for value in (directory / "shape.txt").read_text().split())
    ids = (directory / "id.txt").read_text().split()
    features = np.fromfile(directory / "feature.bin", dtype="<f4").reshape(rows, dim)
    return ids, features


@pytest.fixture
def split_features():
    rng = np.random.default_rng(0)
    return SplitFeatures(
        texts=FeatureSet(ids=("q0", "q1", "q2"), features=rng.standard_normal((3, 5)).astype(np.float32)),
        videos=FeatureSet(ids=("video7", "video9"), features=rng.standard_normal((2, 5)).astype(np.float32)),
        query_video_index=np.array([1, 0, 1]),
    )


def test_bigfile_read_independently(tmp_path):
    features = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    write_bigfile(tmp_path / "feats", ["a", "b1", "c_2", "video10"], features)

    ids, read = independent_bigfile_reader(tmp_path / "feats")
    assert ids == ["a", "b1", "c_2", "video10"]
    assert (tmp_path / "feats" / "id.txt").read_text() == "a b1 c_2 video10"
    assert (tmp_path / "feats" / "shape.txt").read_text() == "4 3"
    np.testing.assert_array_equal(read, features)


def test_bigfile_float64_stored_as_float32(tmp_path):
    features = np.array([[0.1, 0.2], [0.3, 0.4]], dtype=np.float64)
    write_bigfile(tmp_path / "feats", ["x", "y"], features)
    assert (tmp_path / "feats" / "feature.bin").stat().st_size == 4 * 4
    _, read = independent_bigfile_reader(tmp_path / "feats")
    np.testing.assert_array_equal(read, features.astype(np.float32))


def test_read_bigfile_roundtrip(tmp_path):
    features = np.random.default_rng(2).standard_normal((5, 2)).astype(np.float32)
    write_bigfile(tmp_path / "feats", [f"id{i}" for i in range(5)], features)
    loaded = read_bigfile(tmp_path / "feats")
    assert loaded.ids == tuple(f"id{i}" for i in range(5))
    np.testing.assert_array_equal(loaded.features, features)


def test_read_bigfile_newline_ids(tmp_path):
    directory = tmp_path / "feats"
    directory.mkdir()
    (directory / "id.txt").write_text("first\nsecond\n")
    (directory / "shape.txt").write_text("2 2\n")
    np.array([[1, 2], [3, 4]], dtype="<f4").tofile(directory / "feature.bin")
    loaded = read_bigfile(directory)
    assert loaded.ids == ("first", "second")
    np.testing.assert_array_equal(loaded.features, [[1, 2], [3, 4]])


def test_bigfile_whitespace_id_rejected(tmp_path):
    with pytest.raises(ValueError, match="'two words'"):
        write_bigfile(tmp_path / "feats", ["ok", "two words"], np.zeros((2, 3)))


def test_truncated_bigfile_rejected(tmp_path):
    write_bigfile(tmp_path / "feats", ["a", "b"], np.ones((2, 3)))
    with (tmp_path / "feats" / "feature.bin").open("r+b") as handle:
        handle.truncate(12)
    with pytest.raises(BigFileError, match="truncated"):
        read_bigfile(tmp_path / "feats")


def test_bigfile_missing_shape_named(tmp_path):
    write_bigfile(tmp_path / "feats", ["a"], np.ones((1, 3)))
    (tmp_path / "feats" / "shape.txt").unlink()
    with pytest.raises(BigFileError, match="shape.txt not found"):
        read_bigfile(tmp_path / "feats")


def test_bigfile_split_ground_truth(tmp_path, split_features):
    written = export_split_features(tmp_path, [BIGFILE], split_features, attributes={})
    directory = written[BIGFILE]
    lines = (directory / "ground_truth.txt").read_text().splitlines()
    assert lines == ["q0\tvideo9", "q1\tvideo7", "q2\tvideo9"]

    ids, features = independent_bigfile_reader(directory / "video_features")
    assert ids == ["video7", "video9"]
    np.testing.assert_array_equal(features, split_features.videos.features)


def test_zarr_export_read_with_zarr(tmp_path, split_features):
    written = export_split_features(tmp_path, [ZARR], split_features, attributes={"split": "test"})
    root = zarr.open_group(str(written[ZARR]), mode="r")
    assert root.attrs["split"] == "test"
    assert [str(item) for item in root["texts/ids"][:]] == ["q0", "q1", "q2"]
    np.testing.assert_array_equal(root["texts/features"][:], split_features.texts.features)
    np.testing.assert_array_equal(root["videos/features"][:], split_features.videos.features)
    np.testing.assert_array_equal(root["texts/video_index"][:], [1, 0, 1])


def test_hdf5_export_read_with_h5py(tmp_path, split_features):
    written = export_split_features(tmp_path, [HDF5], split_features, attributes={"split": "test"})
    with h5py.File(written[HDF5], "r") as handle:
        assert handle.attrs["split"] == "test"
        assert list(handle["videos/ids"].asstr()[:]) == ["video7", "video9"]
        np.testing.assert_array_equal(handle["texts/features"][:], split_features.texts.features)
        np.testing.assert_array_equal(handle["texts/video_index"][:], [1, 0, 1])


@pytest.mark.parametrize("name", [ZARR, HDF5])
def test_split_features_roundtrip(tmp_path, split_features, name):
    written = export_split_features(tmp_path, [name], split_features, attributes={})
    loaded = read_split_features(written[name])
    assert loaded.texts.ids == split_features.texts.ids
    assert loaded.videos.ids == split_features.videos.ids
    np.testing.assert_array_equal(loaded.texts.features, split_features.texts.features)
    np.testing.assert_array_equal(loaded.query_video_index, split_features.query_video_index)


def test_unknown_export_format_rejected(tmp_path, split_features):
    with pytest.raises(ValueError, match="unknown feature export format 'npy'"):
        export_split_features(tmp_path, ["npy"], split_features, attributes={})
