"""Tables of points in CSV files: tracked x, y coordinates, with whatever columns come along.

A points table is a text file of delimited columns whose first line is a header naming them.
Two columns must be named ``x`` and ``y`` (in any case: ``X``, ``Y`` too), in pixels of the
image they were measured on, pixel centers at integer coordinates (README, Conventions). Every
other column (a track id, a frame number, a label) is carried through untouched; only the x and
y values are replaced when a table is mapped. The delimiter is a comma, a tab or a semicolon,
whichever the header uses (the first of those that gives both an ``x`` and a ``y`` column), and
is kept when the table is written back.

Mapped coordinates are written as Python's shortest exact float repr, so reading them back
gives the very numbers computed. Blank lines are dropped; a UTF-8 byte-order mark is ignored.

:func:`parse_points` and :func:`format_points` work on text; :func:`read_points` and
:func:`write_points` on files (atomic writes, through :mod:`regtool.io`). Every problem is an
:class:`regtool.io.ImageError` whose one-line message names the file and, for a value, its line.
"""

from __future__ import annotations

import csv
import io as _io
import math
import os
from dataclasses import dataclass, replace

import numpy as np

from .io import ImageError, read_text, write_text

__all__ = ["PointTable", "parse_points", "format_points", "read_points", "write_points"]

#: Delimiters tried on the header line, in this order.
DELIMITERS = (",", "\t", ";")


@dataclass(frozen=True)
class PointTable:
    """A table of points: its header, its rows as text, and their x, y values.

    Attributes
    ----------
    header : tuple of str
        The column names, as written.
    rows : tuple of tuple of str
        Every data row's cells, as written (the x and y cells too, until replaced).
    x_column, y_column : int
        Which cells hold x and y (0-based).
    xy : (N, 2) ndarray of float64
        The points, x then y.
    delimiter : str
        The file's delimiter, kept on writing.
    """

    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    x_column: int
    y_column: int
    xy: np.ndarray
    delimiter: str = ","

    def with_xy(self, xy: np.ndarray) -> PointTable:
        """The same table with its x, y values replaced by ``xy`` (``(N, 2)``).

        Raises
        ------
        ValueError
            If ``xy`` does not hold one x, y pair per row.
        """
        new = np.asarray(xy, dtype=float)
        if new.shape != self.xy.shape:
            raise ValueError(f"expected {self.xy.shape[0]} x, y pairs, got shape {new.shape}")
        return replace(self, xy=new)


def _columns(header: list[str], name: str) -> tuple[int, int] | None:
    """Indices of the x and y columns, None if either is missing."""
    names = [cell.strip().lower() for cell in header]
    if "x" not in names or "y" not in names:
        return None
    for which in "xy":
        if names.count(which) > 1:
            raise ImageError(name, f"the header names {names.count(which)} columns {which} "
                             "(any case); keep one")
    return names.index("x"), names.index("y")


def _split(line: str, delimiter: str) -> list[str]:
    return next(csv.reader([line], delimiter=delimiter), [])


def _delimiter(text: str, name: str) -> str:
    """The delimiter under which the header line names both an x and a y column."""
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        raise ImageError(name, "empty file: a points table needs a header line naming its "
                         "columns, two of them x and y")
    for delimiter in DELIMITERS:
        if _columns(_split(first, delimiter), name) is not None:
            return delimiter
    cells = [c.strip() for c in _split(first, ",")]
    if all(_is_float(c) for c in cells if c):
        raise ImageError(name, "no header line: the first line must name the columns, two of "
                         "them x and y (any case), e.g. 'x,y'")
    shown = ", ".join(cells)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    raise ImageError(name, f"no columns named x and y in the header ({shown}); name the "
                     "coordinate columns x and y (any case)")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _value(cell: str | None, which: str, line: int, name: str) -> float:
    if cell is None:
        raise ImageError(name, f"line {line}: no {which} value (the row is too short)")
    text = cell.strip()
    if not text:
        raise ImageError(name, f"line {line}: {which} is empty, not a number")
    try:
        value = float(text)
    except ValueError:
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise ImageError(name, f"line {line}: {which} is {shown!r}, not a number") from None
    if not math.isfinite(value):
        raise ImageError(name, f"line {line}: {which} is {text!r}, not a finite number")
    return value


def parse_points(text: str, name: str) -> PointTable:
    """Parse a points table (see the module docstring for the format).

    Parameters
    ----------
    text : str
        The file's content.
    name : str
        The file's path, for the messages.

    Returns
    -------
    PointTable

    Raises
    ------
    regtool.io.ImageError
        One line naming the file: empty; no header; no column named x or y, or two of either;
        a row without an x or y value, or one that is not a finite number (with its line).

    Examples
    --------
    >>> table = parse_points("track,X,Y\\n1,10.5,20\\n2,3,4\\n", "pts.csv")
    >>> table.xy
    array([[10.5, 20. ],
           [ 3. ,  4. ]])
    >>> print(format_points(table.with_xy(table.xy + 1)), end="")
    track,X,Y
    1,11.5,21.0
    2,4.0,5.0
    """
    text = text.removeprefix("\ufeff")  # a byte-order mark, as spreadsheets write
    delimiter = _delimiter(text, name)
    reader = csv.reader(_io.StringIO(text), delimiter=delimiter)
    header: list[str] | None = None
    x_col = y_col = 0
    rows: list[tuple[str, ...]] = []
    xy: list[tuple[float, float]] = []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # a blank line
            if header is None:
                header = cells
                found = _columns(header, name)
                if found is None:  # a header with a quoted line break: not the line sniffed
                    raise ImageError(name, "no columns named x and y in the header; name "
                                     "the coordinate columns x and y (any case)")
                x_col, y_col = found
                continue
            line = reader.line_num
            x = _value(cells[x_col] if x_col < len(cells) else None, "x", line, name)
            y = _value(cells[y_col] if y_col < len(cells) else None, "y", line, name)
            rows.append(tuple(cells))
            xy.append((x, y))
    except csv.Error as exc:
        raise ImageError(name, f"line {reader.line_num}: not CSV ({exc})") from None
    assert header is not None  # _delimiter found a non-blank line
    points = np.array(xy, dtype=float).reshape(-1, 2)
    return PointTable(tuple(header), tuple(rows), x_col, y_col, points, delimiter)


def format_points(table: PointTable) -> str:
    """The text of a points table, its x and y cells holding ``table.xy``.

    Parameters
    ----------
    table : PointTable

    Returns
    -------
    str
        Header first, one line per row, ``\\n`` line endings, the table's delimiter.
    """
    out = _io.StringIO()
    writer = csv.writer(out, delimiter=table.delimiter, lineterminator="\n")
    writer.writerow(table.header)
    for cells, (x, y) in zip(table.rows, table.xy, strict=True):
        row = list(cells)
        row[table.x_column] = repr(float(x))
        row[table.y_column] = repr(float(y))
        writer.writerow(row)
    return out.getvalue()


def read_points(path: str | os.PathLike) -> PointTable:
    """Read a points table from a file (see :func:`parse_points`).

    Raises
    ------
    regtool.io.ImageError
        The file cannot be read, or its table is refused.
    """
    return parse_points(read_text(path), os.fspath(path))


def write_points(path: str | os.PathLike, table: PointTable) -> None:
    """Write a points table atomically (see :func:`format_points`).

    Raises
    ------
    regtool.io.ImageError
        The file cannot be written; nothing is left behind.
    """
    write_text(path, format_points(table))
