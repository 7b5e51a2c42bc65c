"""Running the CLI in-process and checking the one-line user-error contract, shared by the CLI tests."""
from typer.testing import CliRunner

from gencc.cli.main import app

runner = CliRunner()


def gencc(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *words):
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gencc: error: "), result.output
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in result.output
