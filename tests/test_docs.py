"""The runnable example of the regimes page runs as written."""

import re
from pathlib import Path


def test_regimes_page_example_runs(capsys):
    page = (Path(__file__).parents[1] / "docs" / "regimes.md").read_text()
    code = page.split("## A runnable example", 1)[1]
    code = re.search(r"```python\n(.*?)```", code, re.DOTALL).group(1)
    exec(compile(code, "docs/regimes.md", "exec"), {})
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(lines) == 4
    assert all(0.5 < float(line.split()[0]) <= 1.0 for line in lines)
