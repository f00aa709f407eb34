"""Operator settings: one declaration per knob, read from FTO_* by one loop over the fields. No cluster."""

from __future__ import annotations

import dataclasses

import pytest
from ftoperator.children import RetryBudget
from ftoperator.settings import Settings


def test_every_field_is_read_from_its_environment_variable():
    """A new field is a new FTO_ variable without any other code: each one round-trips from the environment."""
    samples = {bool: "true", int: "7", float: "2.5", str: "x-value", tuple: "a b"}
    for field in dataclasses.fields(Settings):
        default = getattr(Settings(), field.name)
        raw = "3Gi" if field.name.endswith("_size_limit") else samples[type(default)]
        value = getattr(Settings.from_env({Settings.env_name(field.name): raw}), field.name)
        assert value != default, field.name


def test_values_are_converted_by_type():
    s = Settings.from_env(
        {
            "FTO_RESYNC_SECONDS": "1.5",
            "FTO_HANDLER_RETRIES": "3",
            "FTO_STANDALONE": "yes",
            "FTO_NAMESPACES": "team-a, team-b  team-c",
            "FTO_TRAINER_ENTRYPOINT": "python '/opt/my trainer.py'",
            "FTO_EVENT_LEVEL": "info",
            "FTO_LOG_FORMAT": "PLAIN",
            "FTO_CHECKPOINT_SIZE_LIMIT": "none",
            "FTO_WORKSPACE_SIZE_LIMIT": "20Gi",
            "FTO_LIVENESS_ENDPOINT": "none",
            "FTO_TRAINER_IMAGE": "  ",  # empty: the default stays
        }
    )
    assert s.resync_seconds == 1.5 and s.handler_retries == 3 and s.standalone is True
    assert s.namespaces == ("team-a", "team-b", "team-c")
    assert s.trainer_entrypoint == ("python", "/opt/my trainer.py")
    assert (s.event_level, s.log_format) == ("INFO", "plain")
    assert (s.checkpoint_size_limit, s.workspace_size_limit) == ("", "20Gi")
    assert s.liveness_endpoint == ""
    assert s.trainer_image == Settings().trainer_image


@pytest.mark.parametrize(
    ("key", "raw", "words"),
    [
        ("FTO_HANDLER_RETRIES", "many", "must be an integer"),
        ("FTO_RESYNC_SECONDS", "soon", "must be a number"),
        ("FTO_STANDALONE", "maybe", "must be a boolean"),
        ("FTO_CHECKPOINT_SIZE_LIMIT", "lots", "must be a Kubernetes quantity"),
    ],
)
def test_bad_values_name_the_variable(key, raw, words):
    with pytest.raises(ValueError, match=rf"{key} {words}.*{raw}"):
        Settings.from_env({key: raw})


def test_default_retry_budget_fits_the_handler_timeout():
    """Every retry the defaults allow starts before the timeout: the last attempt, not a timeout, decides."""
    budget = RetryBudget.from_settings(Settings())
    assert budget.retries_fit()
    assert not budget.exhausted(budget.attempts - 1, sum(budget.delay(n) for n in range(1, budget.attempts - 1)))
    assert budget.exhausted(budget.attempts, 0)


def test_every_setting_is_documented():
    from tests.support.cluster import ROOT

    docs = (ROOT / "docs" / "operator.md").read_text()
    missing = [Settings.env_name(f.name) for f in dataclasses.fields(Settings) if Settings.env_name(f.name) not in docs]
    assert not missing, f"docs/operator.md does not list {missing}"
