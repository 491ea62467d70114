"""Specs the export pipeline tests run over (a module with a unique name, importable from the tests)."""

from __future__ import annotations

#: every single variant and a combination of everything, on the tiny `test` preset
VARIANT_SPECS: tuple[str, ...] = (
    "test",
    "test+cb",
    "test+cbs",
    "test+lavit",
    "test+gab",
    "test+reattn",
    "test+refiner",
    "test+cb+lavit+gab+reattn+refiner",
)
