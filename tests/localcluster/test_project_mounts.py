"""A pod's volumes never hide the project from its own containers, wherever the clone and the venv are.

The process node runs containers from the checkout (``PYTHONPATH``) and the venv (``PATH``). A volume mounted over
one of their parents (the API's ``emptyDir`` at ``/tmp`` with a clone under ``/tmp``: ``No module named ftapi``)
must not shadow them: the launcher binds them back on top.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.cluster import Cluster, py_container, wait_for

pytestmark = pytest.mark.cluster

# Over the checkout's parent (its siblings disappear, the checkout must not) and over the venv's parent.
CHECKOUT_COVER = ROOT.parent if ROOT.parent != Path("/") else ROOT
VENV_COVER = Path(sys.prefix).parent


def test_volumes_over_the_checkout_and_the_venv_hide_neither(cluster: Cluster, namespace: str):
    script = f"""
    import json, os, sys
    import ftapi, ftcrd, fttrainer  # from the checkout, through PYTHONPATH
    open("written-in-the-working-directory", "w").write("x")
    print(json.dumps({{
        "python": sys.executable,
        "api": os.path.dirname(ftapi.__file__),
        "cover": sorted(os.listdir({str(CHECKOUT_COVER)!r})),
        "venv_cover": sorted(os.listdir({str(VENV_COVER)!r})),
        "cwd": os.getcwd(),
    }}))
    """
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "covered"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                py_container(
                    script,
                    volumeMounts=[
                        {"name": "scratch", "mountPath": str(CHECKOUT_COVER)},
                        {"name": "ca", "mountPath": str(VENV_COVER), "readOnly": True},
                    ],
                )
            ],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "ca", "configMap": {"name": "kube-root-ca.crt"}},
            ],
        },
    }
    cluster.apply(pod, namespace)
    phase = wait_for(
        lambda: (
            cluster.get_json("pod", "covered", namespace=namespace)["status"].get("phase") in ("Succeeded", "Failed")
            and cluster.get_json("pod", "covered", namespace=namespace)["status"]["phase"]
        ),
        90,
        0.3,
        "pod covered finished",
    )
    log = cluster.pod_log(namespace, "covered")
    assert phase == "Succeeded", log
    seen = json.loads(log.strip().splitlines()[-1])
    assert seen["api"] == str(ROOT / "api" / "ftapi")
    assert seen["python"].startswith(sys.prefix)
    if CHECKOUT_COVER != ROOT:
        # The emptyDir really covers the parent: of all that is there on the host, only the checkout shows.
        assert seen["cover"] == [ROOT.name]
    assert "ca.crt" in seen["venv_cover"]  # the read-only ConfigMap volume is there, with the venv on top of it
    # The default working directory is the pod's own, even under a volume over one of its parents.
    pod_dir = cluster.pod_dir(namespace, "covered")
    assert seen["cwd"] == str(pod_dir / "workdir")
    assert (pod_dir / "workdir" / "written-in-the-working-directory").read_text() == "x"
