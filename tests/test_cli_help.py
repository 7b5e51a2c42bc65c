"""Every command's --help reads as a command line's help, not as Python type annotations."""
import re

import pytest

from cli_helpers import gencc
from gencc.cli.main import app

COMMANDS = [c.name or c.callback.__name__ for c in app.registered_commands]
# typer's raw type labels: `<bool>` on a switch, `<list[Path]>` on a repeatable one, `{path}` for an argument.
ARTEFACTS = re.compile(r"<bool>|<list\[|\{[a-z_]+\}")


@pytest.mark.parametrize("command", [None] + COMMANDS)
def test_help_has_no_python_type_metavars(command):
    r = gencc(*([command] if command else []), "--help")
    assert r.exit_code == 0, r.output
    assert not ARTEFACTS.findall(r.output), r.output


def test_help_shows_plain_argument_and_repeatable_option_names():
    out = gencc("merge", "--help").output
    assert "merge [OPTIONS] SHARDS..." in out and "<path>..." in out
    out = " ".join(gencc("sample", "--help").output.split())
    assert "--trusted-key <path>..." in out and "--resume continue" in out
