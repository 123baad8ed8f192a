"""SSH_ORIGINAL_COMMAND split into words the way the old forced command's shell did, unexpanded."""

from __future__ import annotations

import pytest

from pikud.sshcommand import ssh_words


@pytest.mark.parametrize(("command", "words"), [
    ("", []),
    ("   ", []),
    ("ps myapp", ["ps", "myapp"]),
    ("ps /etc/*", ["ps", "/etc/*"]),                               # no pathname expansion
    ("run app ls ~ $HOME `id` $(id) {a,b} [ab]", ["run", "app", "ls", "~", "$HOME", "`id`",
                                                  "$(id)", "{a,b}", "[ab]"]),
    ("git-receive-pack 'app'", ["git-receive-pack", "'app'"]),     # quotes stay, as before
    ("config:set app GREETING=\"hello world\" N=1",
     ["config:set", "app", 'GREETING="hello', 'world"', "N=1"]),
    ("run app echo 'it''s'", ["run", "app", "echo", "'it''s'"]),   # unbalanced is fine
    (" \tlogs\napp  -t ", ["logs", "app", "-t"]),                  # IFS: space, tab, newline
    ("run app a\u00a0b\x0bc", ["run", "app", "a\u00a0b\x0bc"]),    # not IFS: stays in the word
])
def test_ssh_words(command: str, words: list[str]) -> None:
    assert ssh_words(command) == words
