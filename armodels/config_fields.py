"""Config fields added after studies were made with their dataclass.

A step's hash covers its config (pipelines.step.config_dict), so a new field would change the hash of every step
made before it and a study would train again what it already has. A field declared with `added_field` is left out
of the hash while it holds its default: old steps keep their folders, and only a config that sets the field gets a
new hash. (The field still reaches the step function and its records.)
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

OMITTED_AT_DEFAULT = "arscale.omitted_from_hash_at_default"


def added_field(default: Any) -> Any:
    """A dataclass field with `default` that the step hash leaves out while it holds that default."""
    return field(default=default, metadata={OMITTED_AT_DEFAULT: True})
