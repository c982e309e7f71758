"""Keep a new canvas' first paint short: vispy's shader-source parse, memoised by source.

Every time a vispy program is (re)built, ``Program._parse_variables_from_code`` strips comments from its
GLSL with a backtracking regular expression and scans it for declarations: 10–20 ms of pure Python a
program on this CPU, and a napari canvas builds about ten on its first paint (the image, labels, text and
overlay visuals). The three-plane view's extra canvases build the very programs the main canvas already
built, source for source, so their first paint repeated ~175 ms of identical parsing on the UI thread
(``bench/bench_reading_room.py``). The parse is a pure function of the source text, so its result is kept
by source and copied into each new program; nothing else of vispy changes.

The same holds for text: napari draws each canvas' letters from glyphs it turns into signed-distance
fields on the CPU (vispy's ``SDFRendererCPU``, ~5 ms a glyph, per canvas), so the three-plane view's edge
letters recomputed the main canvas' glyphs; that output, too, depends only on the glyph bitmap and the
target size, and is kept by those.

And each text visual re-sent the same constant texture on every draw: vispy's ``TextVisual`` assigns its font's
spatial-filter kernel (16×1024 RGBA, loaded once per font) to its program before each draw, and gloo answers
an array assigned to a sampler by uploading it again. Under Mesa's software OpenGL each such upload also waits
for the drawing still queued against that texture: a napari canvas carries about eight text visuals (edge
letters, scale bar, colour-bar labels), so every repaint spent some 20 ms on uploads of unchanged data. The
same array object assigned again to a program that already holds it is now skipped.

Installed by the desktop window and by the three-plane view (AnomaLens's own actions), once per process;
a vispy without those methods is left as it is.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any

import numpy as np

#: Shader sources kept (each a few kB; a napari session uses a few dozen distinct programs).
MAX_SOURCES = 256
#: Glyph fields kept (each under 4 kB at napari's 64-px storage size).
MAX_GLYPHS = 512

_state: dict[str, Any] = {"installed": False, "hits": 0, "misses": 0}


def install() -> bool:
    """Memoise vispy's shader-variable parse and CPU glyph fields (once per process); True when in place."""
    if _state["installed"]:
        return True
    try:
        from vispy.gloo.program import Program
        from vispy.visuals.text.text import SDFRendererCPU
    except ImportError:
        return False
    if not _memoise_parse(Program):
        return False
    _memoise_glyphs(SDFRendererCPU)
    _upload_kernel_once(Program)
    _state["installed"] = True
    return True


def _memoise_parse(program_cls: Any) -> bool:
    original = getattr(program_cls, "_parse_variables_from_code", None)
    if original is None or not hasattr(program_cls, "_process_pending_variables"):
        return False
    cache: OrderedDict[str, dict] = OrderedDict()

    def parse(self: Any, update_variables: bool = True) -> None:
        shaders = getattr(self, "_shaders", None)
        if not shaders:
            return original(self, update_variables=update_variables)
        source = "\n\n".join(sh.code for sh in shaders)
        known = cache.get(source)
        if known is None:
            _state["misses"] += 1
            original(self, update_variables=False)
            cache[source] = dict(self._code_variables)
            if len(cache) > MAX_SOURCES:
                cache.popitem(last=False)
        else:
            _state["hits"] += 1
            cache.move_to_end(source)
            self._code_variables = dict(known)
        if update_variables:
            self._process_pending_variables()

    parse.__wrapped__ = original  # type: ignore[attr-defined]
    program_cls._parse_variables_from_code = parse
    return True


def _memoise_glyphs(renderer_cls: Any) -> bool:
    original = getattr(renderer_cls, "render_to_texture", None)
    if original is None:
        return False
    fields: OrderedDict[tuple, np.ndarray] = OrderedDict()

    def render_to_texture(self: Any, data: Any, texture: Any, offset: Any, size: Any) -> None:
        arr = np.ascontiguousarray(data)
        key = (arr.shape, arr.dtype.str, tuple(int(v) for v in size), hashlib.blake2b(arr.tobytes()).digest())
        field = fields.get(key)
        if field is None:
            _state["misses"] += 1
            w, h = key[2]
            scratch = np.zeros((h, w, 3), np.uint8)
            original(self, arr, scratch, (0, 0), (w, h))
            fields[key] = field = scratch
            if len(fields) > MAX_GLYPHS:
                fields.popitem(last=False)
        else:
            _state["hits"] += 1
            fields.move_to_end(key)
        w, h = key[2]
        texture[offset[1]:offset[1] + h, offset[0]:offset[0] + w, :] = field

    render_to_texture.__wrapped__ = original  # type: ignore[attr-defined]
    renderer_cls.render_to_texture = render_to_texture
    return True


#: The sampler vispy's text visual re-assigns, unchanged, before every draw.
KERNEL_UNIFORM = "u_kernel"


def _upload_kernel_once(program_cls: Any) -> bool:
    original = getattr(program_cls, "__setitem__", None)
    if original is None:
        return False

    def setitem(self: Any, name: str, data: Any) -> None:
        if name == KERNEL_UNIFORM and isinstance(data, np.ndarray):
            if self.__dict__.get("_anomalens_kernel") is data and self._user_variables.get(name) is not None:
                return  # the texture made from this very array is still the program's
            original(self, name, data)
            self.__dict__["_anomalens_kernel"] = data
            return
        original(self, name, data)

    setitem.__wrapped__ = original  # type: ignore[attr-defined]
    program_cls.__setitem__ = setitem
    return True


def stats() -> tuple[int, int]:
    """(hits, misses) of both caches so far in this process."""
    return int(_state["hits"]), int(_state["misses"])
