"""The order of sphinx-gallery's pages (``within_subsection_order`` in conf.py)."""

from __future__ import annotations


class GalleryOrder:
    """The gallery's order: the README's main example first, then the executed ones."""

    ORDER = ("quickstart.py", "label_efficiency.py", "regimes.py", "images.py", "text.py")

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        rank = self.ORDER.index(filename) if filename in self.ORDER else len(self.ORDER)
        return rank, filename
