"""Every shared fact is spelled once, in crds/ftcrd: no copy of a contract literal anywhere else in the
project's source (the rules and the short allow-list of Kubernetes' own vocabulary: single_source.py)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.contract.single_source import ALLOWED, allowed_uses, source_files, violations

ROOT = Path(__file__).resolve().parents[2]


def test_no_contract_literal_outside_ftcrd():
    files = source_files(ROOT)
    folders = {f.relative_to(ROOT).parts[0] for f in files}
    assert {"operator", "api", "trainer_image", "bench", "localcluster"} <= folders, folders  # every component
    found = violations(files, ROOT)
    assert not found, "import these from crds/ftcrd (names, conditions, types):\n" + "\n".join(found)


def test_allow_list_is_short_documented_and_used():
    assert len(ALLOWED) <= 8
    assert all(why for _, _, why in ALLOWED)
    unused = [entry for entry, n in allowed_uses(source_files(ROOT), ROOT).items() if n == 0]
    assert not unused, f"allow-list entries nothing uses any more: {unused}"


PLANTED = {
    "label": 'SELECTOR = "finetune.dev/job"',
    "api group in an f-string": 'URL = f"/apis/finetune.dev/v1alpha1/{ns}"',
    "env name": 'NAME = os.environ["FTJ_NAMESPACE"]',
    "new FTJ_ env name": 'os.environ.get("FTJ_SOMETHING_NEW")',
    "mount path": 'CKPT = "/checkpoints/step-1"',
    "reason": 'REASON = "UploadFailed"',
    "plural": 'PLURAL = "finetunejobs"',
    "exit code in a pod spec": 'RULE = {"onExitCodes": {"operator": "In", "values": [2]}}',
    "exit code passed to exit": "sys.exit(3)",
    "exit code compared": 'if pod["exitCode"] == 2: pass',
}


@pytest.mark.parametrize("case", PLANTED, ids=list(PLANTED))
def test_a_planted_copy_is_caught(tmp_path: Path, case: str):
    module = tmp_path / "operator" / "planted.py"
    module.parent.mkdir()
    module.write_text(f'"""finetune.dev/job and FTJ_NAME in a docstring are fine."""\n{PLANTED[case]}\n')
    assert source_files(tmp_path) == [module]
    found = violations([module], tmp_path)
    assert len(found) == 1 and found[0].startswith("operator/planted.py:2:"), found


def test_kubernetes_vocabulary_is_allowed_only_where_listed(tmp_path: Path):
    code = textwrap.dedent(
        """
        if job_reason == "DeadlineExceeded":
            pass
        """
    )
    for rel in ("operator/ftoperator/status.py", "api/ftapi/other.py"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(code)
    found = violations(source_files(tmp_path), tmp_path)
    assert found == ["api/ftapi/other.py:2: 'DeadlineExceeded' (reason 'DeadlineExceeded')"]
