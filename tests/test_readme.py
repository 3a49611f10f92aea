"""The README's first example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs(capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    assert 0.5 < float(printed[0]) <= 1.0
    assert "'head'" in printed[1] and "'lr'" in printed[1]
