"""The pure parts of proxy/acme.py: ACME_ROOT_CA, which names can get a certificate, the record."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from pikud.errors import EnvError, SpecError
from pikud.proxy.acme import Issued, fingerprint, issuable, root_ca
from pikud.proxy.acme_sh import find_acme_sh
from pikud.settings import load_settings


@pytest.mark.parametrize("value", [
    "letsencrypt", "letsencrypt_test", "zerossl", "buypass", "google", "LetsEncrypt.org",
    "https://acme-v02.api.letsencrypt.org/directory", "https://localhost:14000/dir",
    "http://ca.internal/acme/acme/directory", "https://acme.zerossl.com/v2/DV90",
])
def test_root_ca_accepts_names_and_urls(value: str) -> None:
    assert root_ca({"ACME_ROOT_CA": f" {value} "}) == value


@pytest.mark.parametrize("value", [
    "letsencrypt'; rm -rf ~; '", "$(id)", "`id`", "lets encrypt", "--debug", "-x",
    "https://ca.example/dir?x=1&y=2", "https://ca.example/$HOME", "ftp://ca.example/dir",
    "https://", "https://ca.example/dir\nLe_API=x", "zerossl\"", "a" * 80, "1letsencrypt",
])
def test_root_ca_refuses_what_could_reach_a_shell(value: str) -> None:
    with pytest.raises(EnvError) as caught:
        root_ca({"ACME_ROOT_CA": value})
    assert caught.value.key == "ACME_ROOT_CA" and "ACME_ROOT_CA" in str(caught.value)


def test_root_ca_unset_or_empty() -> None:
    assert root_ca({}) is None
    assert root_ca({"ACME_ROOT_CA": "  "}) is None


def test_issuable_names() -> None:
    names, skipped = issuable(("Shop.Example.com", "www.example.com", "shop.example.com", "_",
                               "*.example.com", "10.0.0.1", "2001:db8::1", "localhost",
                               "app.localhost", "intranet", "box.local", "x.test", "y.example",
                               "z.internal", "nas.home.arpa", "under_score.example.com"))
    assert names == ("shop.example.com", "www.example.com")
    assert skipped == (
        "_: the catch-all name",
        "*.example.com: a wildcard needs acme.sh's DNS challenge, which pikud does not run",
        "10.0.0.1: an IP address", "2001:db8::1: an IP address",
        "localhost: not a public name", "app.localhost: not a public name",
        "intranet: not a public name", "box.local: not a public name",
        "x.test: not a public name", "y.example: not a public name",
        "z.internal: not a public name", "nas.home.arpa: not a public name",
        "under_score.example.com: public CAs refuse '_' in names")


def test_fingerprint_and_record(tmp_path: Path) -> None:
    crt, key = tmp_path / "a.crt", tmp_path / "a.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=a",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "x509", "-in", str(crt), "-outform", "DER"],
                         check=True, capture_output=True).stdout
    assert fingerprint(crt) == hashlib.sha256(der).hexdigest()
    chain = tmp_path / "chain.crt"
    chain.write_text(crt.read_text() + crt.read_text().replace("A", "B"))
    assert fingerprint(chain) == fingerprint(crt)          # the first certificate counts
    assert fingerprint(key) is None and fingerprint(tmp_path / "missing") is None

    record = tmp_path / "a.acme"
    assert Issued.read(record) is None
    issued = Issued(("a.example.com", "b.example.com"), "letsencrypt", "ab12", ("old.example",))
    issued.write(record)
    assert Issued.read(record) == issued
    record.write_text('{"names": ["a.example"], "server": null, "fingerprint": "ab"}')
    assert Issued.read(record) == Issued(("a.example",), None, "ab")    # written before retired
    record.write_text("{not json")
    assert Issued.read(record) is None


def test_find_acme_sh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    program = tmp_path / "acme.sh"
    program.write_text("#!/bin/sh\n")
    assert find_acme_sh(str(program)) is None               # not executable
    program.chmod(0o755)
    assert find_acme_sh(str(program)) == program
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_acme_sh() == program
    home = tmp_path / "home"
    (home / ".acme.sh").mkdir(parents=True)
    standard = home / ".acme.sh" / "acme.sh"
    standard.write_text("#!/bin/sh\n")
    standard.chmod(0o755)
    monkeypatch.setenv("PATH", "/nowhere")
    monkeypatch.setenv("HOME", str(home))
    assert find_acme_sh() == standard
    standard.unlink()
    assert find_acme_sh() is None


def test_settings_acme_sh(tmp_path: Path) -> None:
    path = tmp_path / "pikud.toml"
    assert load_settings(path).acme_sh is None
    path.write_text('acme_sh = "/opt/acme.sh/acme.sh"\n')
    assert load_settings(path).acme_sh == "/opt/acme.sh/acme.sh"
    for bad in ('"acme.sh"', '["/x"]', '"/x y"'):
        path.write_text(f"acme_sh = {bad}\n")
        with pytest.raises(SpecError) as caught:
            load_settings(path)
        assert caught.value.key == "acme_sh"
