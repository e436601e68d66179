"""infomax_ext.data: the digits, users' files, validation with clear messages, splits."""
import contextlib
import pickle
import warnings

import numpy as np
import pytest
import torch

from infomax_ext.data import (
    DataError,
    DataWarning,
    MappedSamples,
    check_samples,
    load_dataset,
    load_digits,
    load_file,
    normalize_samples,
    train_val_split,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def samples(n=20, shape=(6,), seed=0):
    return np.random.default_rng(seed).random((n, *shape)).astype(np.float32)


def test_digits_are_real_8x8_images_in_unit_range():
    data = load_digits()
    assert data.x.shape == (1797, 64) and data.x.dtype == torch.float32
    assert float(data.x.min()) == 0.0 and float(data.x.max()) == 1.0
    assert data.y.shape == (1797,) and set(data.y.tolist()) == set(range(10))
    assert data.image_shape == (8, 8) and data.classes == [str(k) for k in range(10)]
    assert load_dataset(None).fingerprint() == data.fingerprint()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_converted_to_float32_with_a_warning(tmp_path, dtype):
    x = torch.from_numpy(samples()).to(dtype)
    torch.save((x, torch.arange(20) % 2), tmp_path / "half.pt")
    name = str(dtype).removeprefix("torch.")
    with pytest.warns(DataWarning, match=f"item 0 \\(samples\\) holds {name} values; converted"):
        data = load_file(tmp_path / "half.pt")
    assert data.x.dtype == torch.float32 and torch.equal(data.x, x.float())
    with pytest.warns(DataWarning, match=f"arrays holds {name} values"):
        assert torch.equal(check_samples(x, source="arrays"), x.float())


def test_normalize_samples():
    x = np.array([[0.0, 5.0, 7.0], [2.0, 6.0, 9.0]])  # mean 29 / 6, variance 329 / 36
    assert np.array_equal(normalize_samples(x, "unit"),
                          np.array([[0, 5, 7], [2, 6, 9]], dtype=np.float32) / np.float32(9))
    want = (6 * x - 29) / np.sqrt(329)
    assert np.allclose(normalize_samples(x, "standardize"), want, rtol=1e-6)
    assert normalize_samples(x, "none") is x
    for mode in ("unit", "standardize"):
        assert not normalize_samples(np.full((4, 2), 3.0), mode).any()
    raw = samples(20, (3, 3)) * 255
    data = check_samples(raw, "bernoulli", normalize="unit")
    assert float(data.min()) == 0.0 and float(data.max()) == 1.0 and data.shape == (20, 3, 3)
    with pytest.raises(DataError, match="unknown normalization 'z'"):
        check_samples(raw, "gaussian", normalize="z")
    with pytest.warns(DataWarning, match="rescale them with --normalize standardize"):
        check_samples(raw, "gaussian")
    digits = load_dataset(None, likelihood="gaussian", normalize="standardize").x.double()
    assert abs(float(digits.mean())) < 1e-6 and float(digits.std(unbiased=False)) == \
        pytest.approx(1.0, rel=1e-6)


def test_npy_with_labels_file(tmp_path):
    x = samples(20, (4, 4))
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.array(["cat", "dog"] * 10))
    data = load_file(tmp_path / "x.npy", labels=tmp_path / "y.npy")
    assert torch.equal(data.x, torch.from_numpy(x))
    assert data.y.tolist() == [0, 1] * 10 and data.classes == ["cat", "dog"]
    assert data.image_shape == (4, 4) and data.sample_shape == (4, 4)


def test_npz_and_pt_forms(tmp_path):
    x, y = samples(), np.arange(20) % 3
    np.savez(tmp_path / "a.npz", images=x, labels=y)
    np.savez(tmp_path / "b.npz", x)  # a single unnamed array: the samples
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "c.pt")
    torch.save((torch.from_numpy(x), torch.from_numpy(y).float()), tmp_path / "d.pt")
    torch.save(torch.from_numpy(x), tmp_path / "e.pt")
    for name, has_labels in [("a.npz", True), ("b.npz", False), ("c.pt", True), ("d.pt", True),
                             ("e.pt", False)]:
        data = load_file(tmp_path / name)
        assert torch.equal(data.x, torch.from_numpy(x)), name
        assert (data.y is not None) == has_labels, name
        if has_labels:
            assert data.y.tolist() == y.tolist(), name


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "data file not found"),
    (lambda p: p.write_bytes(b"\x93NUMPY garbage"), "corrupt or not a valid .npy"),
    (lambda p: p.write_bytes(b"random bytes"), "corrupt"),
])
def test_missing_or_corrupt_npy(tmp_path, make, message):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(DataError, match=message):
        load_file(path)


def test_corrupt_npz_and_pt(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"PK\x03\x04 truncated zip")
    (tmp_path / "x.pt").write_bytes(b"\x80\x02 not a torch file")
    for name in ("x.npz", "x.pt"):
        with pytest.raises(DataError, match=f"x{name[1:]} is corrupt"):
            load_file(tmp_path / name)


def test_pickled_objects_are_refused(tmp_path):
    np.save(tmp_path / "x.npy", np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickled Python objects"):
        load_file(tmp_path / "x.npy")


@pytest.mark.parametrize("normalize, likelihood", [
    ("unit", "bernoulli"), ("standardize", "gaussian"), ("none", "gaussian")])
def test_a_mapped_npy_file_reads_as_the_loaded_one(tmp_path, normalize, likelihood):
    raw = (np.random.default_rng(1).random((40, 3, 5)) * 255).astype(np.uint8)
    raw[3, 0, 0], raw[7, 2, 4] = 0, 255
    np.save(tmp_path / "x.npy", raw)
    def large():  # both ways warn alike about unscaled pixels
        if normalize == "none":
            return pytest.warns(DataWarning, match="inputs this large")
        return contextlib.nullcontext()

    with large():
        loaded = load_file(tmp_path / "x.npy", likelihood=likelihood, normalize=normalize)
    with large():
        mapped = load_file(tmp_path / "x.npy", likelihood=likelihood, normalize=normalize,
                           mmap=True)
    assert isinstance(mapped.x, MappedSamples) and mapped.x.shape == (40, 3, 5)
    assert torch.equal(mapped.x[:], loaded.x) and mapped.fingerprint() == loaded.fingerprint()
    train, val = train_val_split(mapped, 0.25, seed=2)
    want_train, want_val = train_val_split(loaded, 0.25, seed=2)
    rows = torch.tensor([4, 0, 29, 4])
    assert torch.equal(train.x[rows], want_train.x[rows]) and torch.equal(train.x[5], want_train.x[5])
    assert torch.equal(val.x.to("cpu"), want_val.x) and train.fingerprint() == want_train.fingerprint()
    sent = pickle.dumps(train.x)  # a copy for another process maps the file again
    assert len(sent) < raw.nbytes and torch.equal(pickle.loads(sent)[rows], want_train.x[rows])


@pytest.mark.parametrize("x, likelihood, message", [
    (np.full((20, 4), np.nan), "gaussian", "NaN or infinite"),
    (np.full((20, 4), 255.0), "bernoulli", r"values range over \[255, 255\] but the Bernoulli"),
    (np.zeros((3, 4)), "bernoulli", "need at least 8"),
    (np.array([{"a": 1}] * 10, dtype=object), "bernoulli", "pickled Python objects"),
])
def test_a_mapped_npy_file_is_refused_like_a_loaded_one(tmp_path, x, likelihood, message):
    np.save(tmp_path / "x.npy", x, allow_pickle=True)
    for mmap in (False, True):
        with pytest.raises(DataError, match=message):
            load_file(tmp_path / "x.npy", likelihood=likelihood, mmap=mmap)


@pytest.mark.parametrize("x, likelihood, message", [
    (np.zeros(20), "bernoulli", r"shape \(N, features\.\.\.\)"),
    (np.zeros((3, 4)), "bernoulli", "need at least 8"),
    (np.full((20, 4), np.nan), "gaussian", "NaN or infinite"),
    (np.full((20, 4), 255.0), "bernoulli",
     r"\[0, 1\]; rescale them with --normalize unit .*divide by 255.*--likelihood gaussian"),
    (np.array([["a"] * 4] * 20), "bernoulli", "must be numeric"),
])
def test_bad_samples_are_named(x, likelihood, message):
    with pytest.raises(DataError, match=message):
        check_samples(x, likelihood, "my.npy")


def test_gaussian_likelihood_accepts_any_finite_values():
    assert check_samples(np.full((20, 4), -10.0), "gaussian").shape == (20, 4)
    with pytest.warns(DataWarning, match=r"values range over \[255, 255\]; inputs this large"):
        assert check_samples(np.full((20, 4), 255.0), "gaussian").shape == (20, 4)


def test_bad_files_and_labels(tmp_path):
    np.save(tmp_path / "x.npy", samples())
    np.save(tmp_path / "short.npy", np.arange(5))
    np.save(tmp_path / "frac.npy", np.linspace(0, 1, 20))
    np.savez(tmp_path / "many.npz", a=samples(), b=samples())
    (tmp_path / "x.txt").write_text("1,2\n")
    cases = [
        (lambda: load_file(tmp_path / "x.npy", labels=tmp_path / "short.npy"), "5 labels for 20"),
        (lambda: load_file(tmp_path / "x.npy", labels=tmp_path / "frac.npy"), "whole numbers"),
        (lambda: load_file(tmp_path / "many.npz"), "cannot tell which entry"),
        (lambda: load_file(tmp_path / "x.txt"), "unsupported file type '.txt'; use .npy, .npz, .pt, .csv or .tsv"),
        (lambda: load_file(tmp_path), "not a file"),
        (lambda: load_dataset("digits", labels=tmp_path / "short.npy"), "digits carry"),
    ]
    for call, message in cases:
        with pytest.raises(DataError, match=message):
            call()


def test_split_is_seeded_disjoint_and_complete():
    data = load_file_free(30)
    a_train, a_val = train_val_split(data, 0.2, seed=3)
    b_train, b_val = train_val_split(data, 0.2, seed=3)
    assert len(a_val) == 6 and len(a_train) == 24
    assert torch.equal(a_train.indices, b_train.indices) and torch.equal(a_val.indices, b_val.indices)
    together = torch.cat([a_train.indices, a_val.indices]).sort().values
    assert torch.equal(together, torch.arange(30))
    assert torch.equal(a_val.x, data.x[a_val.indices]) and torch.equal(a_val.y, data.y[a_val.indices])
    c_train, _ = train_val_split(data, 0.2, seed=4)
    assert not torch.equal(a_train.indices, c_train.indices)
    for fraction in (0.0, 1.0, 0.01):
        with pytest.raises(DataError, match="held-out fraction"):
            train_val_split(data, fraction, seed=0)


def load_file_free(n):
    from infomax_ext.data import ArrayDataset

    return ArrayDataset(torch.from_numpy(samples(n)), torch.arange(n) % 2)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2])
def test_float8_is_converted_to_float32_with_a_warning(tmp_path, dtype):
    x = torch.from_numpy(samples()).to(dtype)
    torch.save({"x": x, "y": (torch.arange(20) % 3).to(dtype)}, tmp_path / "f8.pt")
    name = str(dtype).removeprefix("torch.")
    with pytest.warns(DataWarning) as caught:
        data = load_file(tmp_path / "f8.pt")
    assert [str(w.message) for w in caught] == [
        f"{tmp_path / 'f8.pt'}: entry {key!r} holds {name} values; converted to float32 (exactly)"
        for key in ("x", "y")]
    assert data.x.dtype == torch.float32 and torch.equal(data.x, x.float())  # exactly
    assert data.y.tolist() == (torch.arange(20) % 3).tolist() and data.classes == ["0", "1", "2"]


@pytest.mark.parametrize("make, message", [
    (lambda x: x.to_sparse(), "holds a sparse_coo tensor; save a dense one (tensor.to_dense())"),
    (lambda x: x.to_sparse_csr(),
     "holds a sparse_csr tensor; save a dense one (tensor.to_dense())"),
    (lambda x: torch.quantize_per_tensor(x, 0.1, 0, torch.quint8),
     "holds a quantized tensor (quint8); save its values (tensor.dequantize())"),
    (lambda x: x.to(torch.complex32), "holds complex32 values, which cannot be read as numbers "
     "here; save float32, float64 or integer values"),
])
def test_tensors_numpy_cannot_hold_are_refused_by_name(tmp_path, make, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # complex32 is "experimental"
        torch.save({"x": make(torch.from_numpy(samples()))}, tmp_path / "odd.pt")
    with pytest.raises(DataError) as exc:
        load_file(tmp_path / "odd.pt")
    assert str(exc.value) == f"{tmp_path / 'odd.pt'}: entry 'x' {message}"


def test_labels_csv_of_class_names(tmp_path):
    np.save(tmp_path / "x.npy", samples())
    names = [f"cls{k % 3}" for k in range(20)]
    (tmp_path / "header.csv").write_text("label\n" + "\n".join(names) + "\n")
    (tmp_path / "bare.tsv").write_text("\n".join(names) + "\n")
    np.save(tmp_path / "names.npy", np.array(names))
    want = load_file(tmp_path / "x.npy", labels=tmp_path / "names.npy")
    for name in ("header.csv", "bare.tsv"):
        data = load_file(tmp_path / "x.npy", labels=tmp_path / name)
        assert data.classes == ["cls0", "cls1", "cls2"] == want.classes
        assert torch.equal(data.y, want.y)
    (tmp_path / "two.csv").write_text("id,label\n" + "\n".join(f"{k},{n}" for k, n in
                                                               enumerate(names)) + "\n")
    with pytest.raises(DataError, match=r"two\.csv: row 1 has 2 fields; a labels file holds one "
                                        "column"):
        load_file(tmp_path / "x.npy", labels=tmp_path / "two.csv")


def test_labels_a_use_does_not_need_are_not_read(tmp_path):
    np.savez(tmp_path / "short.npz", x=samples(), y=np.arange(19))
    with pytest.raises(DataError, match="19 labels for 20 samples"):
        load_file(tmp_path / "short.npz")
    data = load_file(tmp_path / "short.npz", keep_labels=False)
    assert data.y is None and data.classes is None and data.x.shape == (20, 6)
