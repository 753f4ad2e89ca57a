"""Hypothesis settings profiles for kernel property tests: `dev`, `ci` and `thorough`.

| profile    | examples | randomness                 | example database | use                      |
|------------|----------|----------------------------|------------------|--------------------------|
| "dev"      | 25       | random                     | on (replays failures) | local edit-test loops |
| "ci"       | 50       | derandomized: same every run | off            | CI, reproducible reports |
| "thorough" | 500      | random                     | on               | before a release, or after a kernel rewrite |

All three set `deadline=None`: the first call of a Numba or Triton kernel compiles it, which
Hypothesis would otherwise report as a slow, flaky example. They also silence the "too slow"
health check, for the same reason. `ci` extends Hypothesis's own built-in "ci" profile (which it
loads by itself when the `CI` environment variable is set) and replaces it.

Importing this module registers the profiles; `load_profile()` activates one, picked from the
`HYPOTHESIS_PROFILE` environment variable, else "ci" when `CI` is set, else "dev".
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

PROFILE_NAMES = ("dev", "ci", "thorough")
EXAMPLES = {"dev": 25, "ci": 50, "thorough": 500}


def register_profiles() -> None:
    """Register the `dev`, `ci` and `thorough` profiles with Hypothesis (idempotent)."""
    quiet = [HealthCheck.too_slow]
    settings.register_profile(
        "dev", max_examples=EXAMPLES["dev"], deadline=None, suppress_health_check=quiet
    )
    settings.register_profile(
        "ci",
        settings.get_profile("ci"),
        max_examples=EXAMPLES["ci"],
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=True,
        suppress_health_check=quiet,
    )
    settings.register_profile(
        "thorough", max_examples=EXAMPLES["thorough"], deadline=None, suppress_health_check=quiet
    )


def default_profile() -> str:
    """The profile to use here: $HYPOTHESIS_PROFILE, else "ci" when $CI is set, else "dev"."""
    if os.environ.get("HYPOTHESIS_PROFILE"):
        return os.environ["HYPOTHESIS_PROFILE"]
    return "ci" if "CI" in os.environ else "dev"


def load_profile(name: str | None = None) -> str:
    """Activate profile `name` (default: `default_profile()`) and return its name."""
    name = default_profile() if name is None else name
    settings.load_profile(name)
    return name


register_profiles()
