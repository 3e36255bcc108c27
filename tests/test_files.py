"""Atomic writes: the whole new content or the old one, never half, and no temporary left over."""

from __future__ import annotations

import os

import pytest

from corea_jax.files import save_figure, write_atomic


def test_write_atomic_replaces_the_file_whole_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "report.json"
    path.write_text("old")
    write_atomic(path, '{"new": true}\n')
    assert path.read_text() == '{"new": true}\n' and os.listdir(tmp_path) == ["report.json"]
    write_atomic(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_keeps_the_old_file(tmp_path):
    from matplotlib.figure import Figure

    path = tmp_path / "plot.png"
    path.write_bytes(b"old")

    class Broken(Figure):
        def savefig(self, *args, **kwargs):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        save_figure(Broken(), path)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["plot.png"]
    save_figure(Figure(), path)
    assert path.read_bytes()[:4] == b"\x89PNG"
