"""The README's two set-up commands and .ci/run must not drift apart."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Set up.*?```bash\n(.*?)```", text, re.S).group(1)
    return [ln for ln in block.splitlines() if ln.strip() and not ln.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    main_job, tests = readme_commands()
    assert "gemma-edge demo" in main_job
    assert "pytest" in tests


def test_ci_runs_the_readme_install_and_test_command():
    main_job, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    install = main_job.split(" && .venv/bin/gemma-edge")[0]
    assert install in ci
    assert tests.strip() in ci
