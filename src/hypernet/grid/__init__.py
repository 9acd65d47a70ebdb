"""X/Y/Z plots (A1111's script): grids of images over hypernetwork snapshots, strengths, seeds and other settings.

:mod:`hypernet.grid.axes` (axis types and value syntax), :mod:`hypernet.grid.layout` (the grid pictures),
:mod:`hypernet.grid.plot` (running one), :mod:`hypernet.grid.command` (``hypernet grid``).
"""
