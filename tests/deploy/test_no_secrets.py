"""No secret value is ever committed: a scan of every file git tracks (and every untracked, not-ignored file,
so a key is caught before it is added).

Kubernetes Secret manifests may only hold placeholders (``REPLACE_ME``, empty values, an empty key list);
anywhere else, private keys, service-account JSON with a ``private_key``, cloud/API token shapes and literal
bearer tokens fail the test with the file and line. Placeholders that look like tokens (``$FTAPI_KEY``,
``<your-key>``, ``sk-demo-…``) are allowed.
"""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SELF = Path(__file__).resolve()
MAX_BYTES = 2_000_000
SKIP_SUFFIXES = {".lock", ".png", ".jpg", ".gz", ".safetensors", ".bin", ".pt", ".whl"}

# Each pattern is assembled from parts so this file does not match itself when scanned by other tools.
PATTERNS: dict[str, re.Pattern[str]] = {
    "PEM private key": re.compile("-----BEGIN ((RSA|EC|DSA|OPENSSH|ENCRYPTED|PGP) )?PRIVATE" + " KEY"),
    "service-account private_key": re.compile(r'"private_key"\s*:\s*"(?!REPLACE|<|\$|")[^"]{16,}'),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "AWS secret access key": re.compile(r"(?i)aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+]{40}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b"),
    "Google OAuth client secret": re.compile(r"\bGOCSPX-[0-9A-Za-z_\-]{20,}"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{34,}\b"),
    "OpenAI-style secret key": re.compile(r"\bsk-(proj-)?[A-Za-z0-9]{32,}\b"),
    "JSON web token": re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),
    "literal bearer token": re.compile(r"(?i)\bbearer\s+([A-Za-z0-9\-._~+/]{24,}=*)"),
}
PLACEHOLDER = re.compile(r"(?i)(replace|example|placeholder|changeme|your|demo|dummy|fake|test|xxxx|\$|<|\{)")
SECRET_VALUE_OK = re.compile(r"(?is)^\s*(|\[\s*\]|.*REPLACE_ME.*)\s*$")


def repo_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    files = []
    for name in out.split("\0"):
        path = ROOT / name
        if name and path.is_file() and path.resolve() != SELF and path.suffix not in SKIP_SUFFIXES:
            files.append(path)
    return files


def scan_text(text: str) -> list[tuple[int, str]]:
    """(line number, pattern name) of every suspected secret in ``text``."""
    hits = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for name, pattern in PATTERNS.items():
            for m in pattern.finditer(line):
                token = m.group(m.lastindex or 0) if name == "literal bearer token" else m.group(0)
                if name == "literal bearer token" and PLACEHOLDER.search(token):
                    continue
                hits.append((lineno, name))
    return hits


def test_scanner_catches_what_it_should():
    pem = "-----BEGIN RSA PRIVATE" + " KEY-----"
    sa = '{"type": "service_account", "private_key": "' + "MIIEv" + "Q" * 40 + '"}'
    assert scan_text(pem)
    assert scan_text(sa)
    assert scan_text("AKIA" + "ABCDEFGHIJKLMNOP")
    assert scan_text("Authorization: Bearer " + "a8Fk2" * 8)
    assert scan_text("hf_" + "a" * 34)
    # Placeholders pass.
    assert not scan_text('curl -H "Authorization: Bearer $FTAPI_KEY"')
    assert not scan_text("Authorization: Bearer <your-api-key-goes-here>")
    assert not scan_text('{"private_key": "REPLACE_ME"}')


def test_no_secret_patterns_in_tree():
    findings = []
    for path in repo_files():
        if path.stat().st_size > MAX_BYTES:
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        findings += [f"{path.relative_to(ROOT)}:{line}: {name}" for line, name in scan_text(text)]
    assert not findings, "secret-like values committed:\n" + "\n".join(findings)


def _secret_docs(path: Path) -> list[dict]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError:
        return []
    return [d for d in docs if isinstance(d, dict) and d.get("kind") == "Secret"]


def test_kubernetes_secrets_hold_placeholders_only():
    checked = 0
    bad = []
    for path in repo_files():
        if path.suffix not in {".yaml", ".yml"}:
            continue
        for doc in _secret_docs(path):
            checked += 1
            values = dict(doc.get("stringData") or {})
            for key, value in (doc.get("data") or {}).items():
                try:
                    values[key] = base64.b64decode(str(value)).decode()
                except ValueError:
                    values[key] = str(value)
            for key, value in values.items():
                if not SECRET_VALUE_OK.match(str(value)):
                    bad.append(f"{path.relative_to(ROOT)}: Secret {doc['metadata'].get('name')} key {key}")
    assert not bad, (
        "Secrets with non-placeholder values (use REPLACE_ME and create real ones out of git):\n" + "\n".join(bad)
    )
    assert checked >= 1, "expected at least the Firebase Secret template under deploy/"


@pytest.mark.parametrize("name", ["tenant/firebase-secret.yaml"])
def test_firebase_template_is_a_placeholder(name):
    text = (ROOT / "deploy" / "base" / name).read_text()
    assert "REPLACE_ME" in text and "private_key" not in text
