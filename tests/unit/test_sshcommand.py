"""SSH_ORIGINAL_COMMAND split into words the way the old forced command's shell did, unexpanded."""

from __future__ import annotations

import pytest

from pikud.sshcommand import ssh_words, subsystem_words


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


@pytest.mark.parametrize(("words", "expected"), [
    (["/usr/lib/openssh/sftp-server"], ["sftp"]),
    (["/usr/libexec/openssh/sftp-server", "-f", "AUTHPRIV"], ["sftp", "-f", "AUTHPRIV"]),
    (["internal-sftp"], ["sftp"]),
    (["scp", "-f", "x"], ["scp", "-f", "x"]),
    (["ps", "sftp-server"], ["ps", "sftp-server"]),
    ([], []),
])
def test_an_sftp_subsystem_line_is_the_sftp_command(words: list[str], expected: list[str]) -> None:
    assert subsystem_words(words) == expected
