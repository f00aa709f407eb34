"""The container launcher's mount plan (processnode.launch.plan), without mounting anything: volumes parents
first, and the project's own files bound back wherever a volume would hide them."""

from __future__ import annotations

from processnode.launch import inside_only, plan
from processnode.launchspec import keep_paths


def targets(mounts):
    return [(m["target"], bool(m.get("keep"))) for m in mounts]


def test_parents_before_children():
    mounts = [
        {"source": "/s/token", "target": "/var/run/secrets/kubernetes.io/serviceaccount"},
        {"source": "/s/firebase", "target": "/var/run/secrets"},
        {"source": "/s/hosts", "target": "/etc/hosts"},
    ]
    assert [t for t, _ in targets(plan(mounts, []))] == [
        "/etc/hosts",
        "/var/run/secrets",
        "/var/run/secrets/kubernetes.io/serviceaccount",
    ]


def test_a_volume_over_the_checkout_gets_the_checkout_bound_back():
    # The newcomer's case: a clone under /tmp and the API pod's emptyDir at /tmp.
    mounts = [{"source": "/state/pods/p/volumes/tmp", "target": "/tmp"}, {"source": "/h", "target": "/etc/hosts"}]
    got = plan(mounts, ["/tmp/lc-demo", "/root/.cache/finetune-operator/venv-1"])
    assert targets(got) == [("/tmp", False), ("/etc/hosts", False), ("/tmp/lc-demo", True)]
    assert got[-1]["source"] == "/tmp/lc-demo"


def test_a_volume_exactly_at_a_kept_path_is_covered_again():
    got = plan([{"source": "/v", "target": "/work/clone/"}], ["/work/clone"])
    assert targets(got) == [("/work/clone", False), ("/work/clone", True)]


def test_kept_paths_that_no_volume_hides_are_left_alone():
    mounts = [{"source": "/v", "target": "/data"}, {"source": "/w", "target": "/tmpfoo"}]
    assert targets(plan(mounts, ["/tmp/clone", "/data2/venv"])) == [("/data", False), ("/tmpfoo", False)]


def test_a_volume_inside_the_checkout_stays_on_top():
    mounts = [{"source": "/a", "target": "/tmp"}, {"source": "/b", "target": "/tmp/clone/scratch"}]
    assert targets(plan(mounts, ["/tmp/clone"])) == [
        ("/tmp", False),
        ("/tmp/clone", True),
        ("/tmp/clone/scratch", False),
    ]


def test_mount_points_inside_a_read_only_volume_are_made_first():
    mounts = plan(
        [
            {"source": "/ro", "target": "/srv", "readOnly": True},
            {"source": "/x", "target": "/srv/a/b"},
            {"source": "/y", "target": "/srv/a/b/c"},
            {"source": "/z", "target": "/other"},
        ],
        [],
    )
    i = [m["target"] for m in mounts].index("/srv")
    assert [m["target"] for m in mounts if inside_only(mounts, mounts.index(m), i)] == ["/srv/a/b"]


def test_keep_paths():
    paths = keep_paths("/tmp/clone/", "/cache/venv", extra=["", "relative", "/"])
    assert paths[:2] == ["/tmp/clone", "/cache/venv"]
    assert all(p.startswith("/") and p != "/" for p in paths)
    assert len(paths) == len(set(paths))
