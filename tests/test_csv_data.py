"""CSV and TSV input: header detection, the label column, and errors that name row and column."""
import numpy as np
import pytest
import torch

from infomax_ext.csv_data import (TableError, parse_label_column, read_delimited,
                                  read_label_table)
from infomax_ext.data import DataError, load_dataset, load_file


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


ROWS = [[1.5, -2.0, 3.25], [4.0, 5.5, -6.0], [7.0, 8.0, 9.125]]


def table(rows, sep=",", header=None, labels=None):
    lines = [] if header is None else [sep.join(header)]
    for k, row in enumerate(rows):
        fields = [repr(v) for v in row] + ([] if labels is None else [str(labels[k])])
        lines.append(sep.join(fields))
    return "\n".join(lines) + "\n"


def test_numbers_without_a_header(tmp_path):
    x, y, names = read_delimited(write(tmp_path, "a.csv", table(ROWS)))
    assert x.dtype == np.float64 and np.array_equal(x, np.array(ROWS))
    assert y is None and names is None


def test_a_header_is_detected_and_kept_as_names(tmp_path):
    path = write(tmp_path, "a.csv", table(ROWS, header=["a", "b", "c"]))
    x, y, names = read_delimited(path)
    assert np.array_equal(x, np.array(ROWS)) and names == ["a", "b", "c"]


def test_header_can_be_forced_either_way(tmp_path):
    path = write(tmp_path, "a.csv", "1,2,3\n4,5,6\n")
    x, _, names = read_delimited(path, header=True)
    assert names == ["1", "2", "3"] and np.array_equal(x, [[4.0, 5.0, 6.0]])
    assert read_delimited(path, header=False)[0].shape == (2, 3)


def test_tsv_quotes_bom_blank_lines_and_spaces(tmp_path):
    text = "\ufeffx\t\"y\"\n 1.0 \t2e3\n\n\"3\"\t-4\n"
    x, _, names = read_delimited(write(tmp_path, "a.tsv", text))
    assert names == ["x", "y"]
    assert np.array_equal(x, [[1.0, 2000.0], [3.0, -4.0]])


@pytest.mark.parametrize("column", ["label", 3, -1, "3", "-1"])
def test_label_column_by_name_or_index(tmp_path, column):
    text = table(ROWS, header=["a", "b", "c", "label"], labels=["cat", "dog", "cat"])
    x, y, names = read_delimited(write(tmp_path, "a.csv", text), parse_label_column(column))
    assert np.array_equal(x, np.array(ROWS)) and names == ["a", "b", "c"]
    assert list(y) == ["cat", "dog", "cat"]


def test_label_column_in_the_middle_and_text_labels_without_a_header(tmp_path):
    path = write(tmp_path, "a.csv", "1,cat,2\n3,dog,4\n")
    x, y, names = read_delimited(path, 1)
    assert names is None and np.array_equal(x, [[1.0, 2.0], [3.0, 4.0]])
    assert list(y) == ["cat", "dog"]


def test_numeric_labels_are_numbers(tmp_path):
    path = write(tmp_path, "a.csv", table(ROWS, labels=[2, 10, 2]))
    _, y, _ = read_delimited(path, -1)
    assert y.dtype == np.float64 and list(y) == [2.0, 10.0, 2.0]


def test_a_header_name_that_is_a_number_is_matched_before_the_index(tmp_path):
    path = write(tmp_path, "a.csv", "a,0,b\n1,7,2\n3,8,4\n")
    x, y, names = read_delimited(path, parse_label_column("0"))
    assert names == ["a", "b"] and list(y) == [7.0, 8.0]


@pytest.mark.parametrize("text, column, message", [
    ("a,b\n1,2\n3,x\n", None, "row 3, column 2 ('b'): 'x' is not a number"),
    ("1,2\n3,4\n5,zz\n", None, "row 3, column 2: 'zz' is not a number"),
    # Python's float reads "1_0" as 10: a typo is never a value
    ("a,b\n1,2\n3,1_0\n", None, "row 3, column 2 ('b'): '1_0' is not a number"),
    ("a,b\n1,2\n\n3,\n", None, "row 4, column 2 ('b'): empty field"),
    ("a,b\n1,nan\n", None, "row 2, column 2 ('b'): 'nan' is not a finite number"),
    ("a,b\n1,inf\n", None, "'inf' is not a finite number"),
    ("a,b\n1,2\n3,4,5\n", None, "row 3 has 3 fields, the first row has 2"),
    ("a,b,y\n1,2,\n", "y", "row 2, column 3 ('y'): empty label"),
    ("1,2\n3,4\n", "y", "label column 'y' is a name but the file has no header"),
    ("a,b\n1,2\n", "c", "no column named 'c'; the header holds ['a', 'b']"),
    ("1,2\n3,4\n", 5, "label column 5 is out of range for 2 columns"),
    ("a,a\n1,2\n", "a", "the header names 'a' more than once"),
    ("a,b\n", None, "holds a header and no rows of data"),
    ("\n\n", None, "holds no rows"),
    ("a\n1\n", "a", "the label column is the only column"),
])
def test_errors_name_the_row_and_column(tmp_path, text, column, message):
    with pytest.raises(TableError, match=None) as exc:
        read_delimited(write(tmp_path, "bad.csv", text), column)
    assert message in str(exc.value) and "bad.csv" in str(exc.value)


def test_not_utf8_is_named(tmp_path):
    path = tmp_path / "bin.csv"
    path.write_bytes(b"1,2\n\xff\xfe,3\n")
    with pytest.raises(TableError, match="not a UTF-8 text file"):
        read_delimited(path)


def test_load_file_reads_a_table_as_samples_and_labels(tmp_path):
    rows = np.random.default_rng(1).normal(size=(12, 16)) * 2
    labels = ["b", "a", "c"] * 4
    path = write(tmp_path, "t.csv", table(rows.tolist(), header=[f"f{k}" for k in range(16)]
                                          + ["kind"], labels=labels))
    data = load_file(path, likelihood="gaussian", label_column="kind")
    assert torch.equal(data.x, torch.from_numpy(rows.astype(np.float32)))
    assert data.classes == ["a", "b", "c"] and data.y.tolist() == [1, 0, 2] * 4
    assert data.image_shape is None  # 16 features of a table are not a 4x4 image
    assert data.normalization == ("none", 0.0, 1.0)
    # the same through load_dataset, memory mapping asked for (a table is read into memory)
    mapped = load_dataset(str(path), None, "gaussian", "none", mmap=True, label_column="kind")
    assert torch.equal(mapped.x, data.x)


def test_load_file_errors_are_data_errors(tmp_path):
    path = write(tmp_path, "t.csv", "a,b\n" + "1,2\n" * 8 + "3,?\n")
    with pytest.raises(DataError, match=r"row 10, column 2 \('b'\): '\?' is not a number"):
        load_file(path)
    np.save(tmp_path / "x.npy", np.zeros((8, 2)))
    with pytest.raises(DataError, match="a label column selects a column of a .csv or .tsv"):
        load_file(tmp_path / "x.npy", label_column=0)
    with pytest.raises(DataError, match="labels go with a data file"):
        load_dataset(None, label_column="y")


@pytest.mark.parametrize("text, n, want", [
    ("cls0\ncls1\ncls0\n", 3, ["cls0", "cls1", "cls0"]),          # no header: n rows
    ("label\ncls0\ncls1\ncls0\n", 3, ["cls0", "cls1", "cls0"]),  # a header: n + 1 rows
    ("label\n1\n2\n1\n", None, [1.0, 2.0, 1.0]),                 # text over numbers: a header
    ("1\n2\n1\n", 3, [1.0, 2.0, 1.0]),
    ("\"a, b\"\n\n c \n", None, ["a, b", "c"]),                   # quoted, blank line, spaces
])
def test_a_labels_table_is_one_column_of_labels(tmp_path, text, n, want):
    y = read_label_table(write(tmp_path, "labels.csv", text), n)
    assert y.tolist() == want and y.dtype.kind == ("f" if isinstance(want[0], float) else "U")


@pytest.mark.parametrize("text, message", [
    ("", "holds no rows"),
    ("a,1\nb,2\n", "row 1 has 2 fields; a labels file holds one column, one label per row"),
])
def test_a_bad_labels_table_is_named(tmp_path, text, message):
    with pytest.raises(TableError, match=message):
        read_label_table(write(tmp_path, "labels.csv", text))
