"""Sphinx configuration: the user guide (docs/*.md through MyST), the API
reference (autosummary + numpydoc, one page per name in ``__all__``) and the
gallery of ``examples/`` (sphinx-gallery).

Build with ``python -m sphinx -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import os
import re
import sys

import sklearn_finetune

sys.path.insert(0, os.path.dirname(__file__))  # gallery_order.py, for sphinx-gallery

project = "sklearn_finetune"
author = "the sklearn_finetune developers"
copyright = "the sklearn_finetune developers"
release = version = sklearn_finetune.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
]

root_doc = "index"
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb"]
templates_path = ["_templates"]

# MyST: the user guide's Markdown pages, unchanged. Links between .md files
# resolve to the pages; "#anchor" links need heading anchors.
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

# API reference: one page per public name (docs/api.rst), made by autosummary.
autosummary_generate = True
autodoc_typehints = "none"  # the numpydoc sections already give the types
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False
# Every public class and function has a See Also and an Examples section
# (numpydoc's SA01, EX01); their methods are documented on the class's page.
numpydoc_validation_checks = {"SA01", "EX01"}
numpydoc_validation_exclude = {r"\.[A-Z]\w*\.\w+$"}  # sklearn_finetune.<Class>.<method>

intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "sklearn": ("https://scikit-learn.org/stable", None),
    "torch": ("https://docs.pytorch.org/docs/stable", None),
    "skorch": ("https://skorch.readthedocs.io/en/stable", None),
}
# Nothing is reachable from CI or this machine: intersphinx inventories are
# only fetched when SPHINX_INTERSPHINX=1.
if os.environ.get("SPHINX_INTERSPHINX") != "1":
    intersphinx_mapping = {}


# The gallery: examples/*.py. Those matching filename_pattern run at build
# time (small, CPU, a few minutes together on two cores; images.py adds 10-40 s);
# the others (all of MR; the UCR datasets, whose aeon would downgrade numpy and
# pandas in the docs environment) are shown with the output of their last full
# run, pasted into their docstring with the commit it came from, and their
# figure from docs/_static/.
EXECUTED = ("quickstart.py", "regimes.py", "label_efficiency.py", "images.py")
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": "/(" + "|".join(re.escape(name) for name in EXECUTED) + ")$",
    "ignore_pattern": r"__init__\.py",
    "download_all_examples": False,
    "plot_gallery": "True",
    "within_subsection_order": "gallery_order.GalleryOrder",
    "remove_config_comments": True,
    "show_memory": False,
    "min_reported_time": 10,
    "capture_repr": (),
    "matplotlib_animations": False,
    "doc_module": ("sklearn_finetune",),
    "backreferences_dir": "auto_examples/backreferences",
}

#: The user guide's pages (docs/*.md, as listed in index.md's toctree).
USER_GUIDE = (
    "regimes",
    "encoders",
    "heads",
    "training",
    "embed-once",
    "scikit-learn",
    "checkpoints",
    "text",
    "probes",
    "saving",
    "reliability",
    "scaling",
)

html_theme = "pydata_sphinx_theme"
html_title = f"sklearn_finetune {release}"
html_theme_options = {
    "navbar_align": "left",
    # API reference, Examples, Benchmarks; the user guide's pages under "More"
    # and in the home page's list.
    "header_links_before_dropdown": 3,
    "show_toc_level": 2,
    # An API page is one long class: give it the width of the right sidebar.
    "secondary_sidebar_items": {
        "generated/*": [],
        "auto_examples/*": [],  # its download links are at the end of the page
        # The user guide's pages: their sections on the right.
        **{page: ["page-toc"] for page in (*USER_GUIDE, "benchmarks")},
    },
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
html_show_sourcelink = False
html_last_updated_fmt = None
html_static_path = ["_static"]
html_css_files = ["wide-tables.css"]
# No left sidebar where it would hold only a heading: the home page, the API
# index, the benchmarks and the user guide's pages (not in a section of their own).
html_sidebars = {"index": [], "api": [], "benchmarks": [], **{page: [] for page in USER_GUIDE}}
