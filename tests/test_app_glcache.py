"""The viewer's caches of vispy's pure steps (app/glcache.py) give what vispy itself gives, and the start-up
heap freeze and the build's collection hold (app/heap.py) leave collection as they found it."""

from __future__ import annotations

import gc

import numpy as np
import pytest

pytest.importorskip("vispy")

VERT = """
uniform mat4 u_transform;  // a comment with uniform vec2 not_a_variable;
attribute vec2 a_position;
varying vec4 v_color;
void main() { gl_Position = u_transform * vec4(a_position, 0.0, 1.0); v_color = vec4(1.0); }
"""
FRAG = """
uniform float u_gain[3];
varying vec4 v_color;
void main() { gl_FragColor = v_color * u_gain[0]; }
"""


def test_the_parse_cache_gives_vispys_own_variables_and_is_used() -> None:
    from vispy.gloo import Program

    from anomalens.app import glcache

    expected = sorted(Program(VERT, FRAG).variables)  # installed or not, the first parse of a source is vispy's
    assert glcache.install()
    hits = glcache.stats()[0]
    first, second = Program(VERT, FRAG), Program(VERT, FRAG)
    assert sorted(first.variables) == sorted(second.variables) == expected
    assert ("uniform", "vec2", "not_a_variable") not in expected  # comments stripped, as vispy does
    assert glcache.stats()[0] >= hits + 1
    second["u_gain[1]"] = 2.0  # a program's variables stay its own: setting one does not touch the cache
    assert sorted(Program(VERT, FRAG).variables) == expected
    other = Program(VERT.replace("v_color", "v_tint"), FRAG.replace("v_color", "v_tint"))
    assert ("varying", "vec4", "v_tint") in other.variables  # another source is parsed anew


def test_the_glyph_cache_writes_vispys_own_field_at_each_offset() -> None:
    from vispy.visuals.text.text import SDFRendererCPU

    from anomalens.app import glcache

    rng = np.random.default_rng(0)
    data = np.zeros((96, 80), np.uint8)
    data[30:66, 24:56] = (rng.random((36, 32)) > 0.3) * 255
    vispys_own = getattr(SDFRendererCPU.render_to_texture, "__wrapped__", SDFRendererCPU.render_to_texture)
    reference = np.zeros((40, 40, 3), np.uint8)
    vispys_own(SDFRendererCPU(), data, reference, (2, 3), (20, 24))
    assert reference.any()
    assert glcache.install()
    renderer = SDFRendererCPU()
    for offset in ((2, 3), (10, 12)):  # a miss (or a hit from an earlier test), then a hit written elsewhere
        texture = np.zeros((40, 40, 3), np.uint8)
        hits = glcache.stats()[0]
        renderer.render_to_texture(data, texture, offset, (20, 24))
        if offset == (10, 12):
            assert glcache.stats()[0] == hits + 1  # the second glyph came from the cache
        x, y = offset
        assert np.array_equal(texture[y:y + 24, x:x + 20], reference[3:27, 2:22])
        assert not texture[:y].any() and not texture[:, :x].any()  # nothing outside the glyph's region


def test_the_collection_hold_turns_collection_back_on_only_if_it_turned_it_off() -> None:
    from anomalens.app.heap import CollectionHold

    assert gc.isenabled()
    hold = CollectionHold()
    hold.start()
    assert not gc.isenabled()
    hold.release()
    hold.release()  # twice (the build's end, then a close) is harmless
    assert gc.isenabled()
    gc.disable()  # someone else turned it off: the hold leaves it off
    try:
        other = CollectionHold()
        other.start()
        other.release()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_the_start_up_freeze_runs_once_and_leaves_collection_on() -> None:
    import subprocess
    import sys

    code = ("import gc\nfrom anomalens.app import heap\nn = heap.freeze_startup_heap()\n"
            "assert n > 0 and gc.get_freeze_count() == n, n\nassert heap.freeze_startup_heap() == 0\n"
            "assert gc.isenabled()\nprint('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr  # in a process of its own: no freeze here


KERNEL_FRAG = """
uniform sampler2D u_kernel;
varying vec4 v_color;
void main() { gl_FragColor = v_color * texture2D(u_kernel, vec2(0.5, 0.5)); }
"""


def test_a_text_kernel_assigned_again_unchanged_is_not_uploaded_again(monkeypatch: pytest.MonkeyPatch) -> None:
    from vispy.gloo import Program
    from vispy.gloo.texture import BaseTexture

    from anomalens.app import glcache

    assert glcache.install()
    uploads: list[tuple[int, ...]] = []
    own_set_data = BaseTexture.set_data

    def counted(self, data, *args, **kwargs):
        uploads.append(np.shape(data))
        return own_set_data(self, data, *args, **kwargs)

    monkeypatch.setattr(BaseTexture, "set_data", counted)
    kernel = np.zeros((16, 1024, 4), np.uint8)
    program = Program(VERT, KERNEL_FRAG)
    program["u_kernel"] = kernel  # the first assignment makes the texture (its data with it)
    texture = program._user_variables["u_kernel"]
    for _ in range(3):  # what vispy's TextVisual does before every draw
        program["u_kernel"] = kernel
    assert uploads == [] and program._user_variables["u_kernel"] is texture
    program["u_kernel"] = kernel.copy()  # other data (another font's kernel) is uploaded as vispy would
    assert uploads == [(16, 1024, 4)]
    program.set_shaders(VERT, KERNEL_FRAG)  # new sources forget the texture: the next assignment is vispy's again
    program["u_kernel"] = kernel
    assert "u_kernel" in program._user_variables or "u_kernel" in program._pending_variables
    other = Program(VERT, KERNEL_FRAG)  # another program holding nothing yet takes the same array
    other["u_kernel"] = kernel
    assert other._user_variables["u_kernel"] is not texture
