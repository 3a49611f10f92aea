"""The README's first example runs as written."""

import re
from pathlib import Path


def test_readme_example_runs(capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out.split("\n")
    probe, baseline = map(float, printed[0].split())
    assert 0.8 < probe <= 1.0 and abs(probe - baseline) < 0.01  # the probe is the baseline
    assert "'weight_decay'" in printed[1] and " adamw " in printed[1]
