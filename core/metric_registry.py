"""Every metric a search can optimize, and the facts about it that everything else reads.

    from core.metric_registry import METRICS, direction, ratio_is_meaningful
    direction("kid")              # "min": lower is better
    ratio_is_meaningful("kid")    # False: KID can be 0 or negative, so compare differences
    [m.name for m in METRICS.values() if m.in_hparams]

One place per fact: the config's validation (search.metric), the trainable's running bests, the
leaderboard's order and columns, TensorBoard's tags and HParams table, and confirm.py's choice of
ratio or difference all read this table. It imports nothing heavier than the standard library, so
validating a YAML does not pay for torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str                  # the key a trial reports (core.metrics.evaluate's dict)
    direction: str             # "min": lower is better | "max": higher is better
    can_be_nonpositive: bool   # values can be 0 or negative: a ratio of two means can flip sign or blow up
    label: str                 # how tables and plots name it
    in_hparams: bool           # TensorBoard's HParams table compares trials by its running best


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("fid", "min", can_be_nonpositive=False, label="FID", in_hparams=True),
    Metric("mifid", "min", can_be_nonpositive=False, label="MiFID", in_hparams=True),
    # KID is an unbiased estimate of a squared distance: near a good generator it is often negative.
    Metric("kid", "min", can_be_nonpositive=True, label="KID", in_hparams=True),
    Metric("precision", "max", can_be_nonpositive=True, label="precision", in_hparams=False),   # 0 when no sample is near a Monet
    Metric("recall", "max", can_be_nonpositive=True, label="recall", in_hparams=False),
)}


def direction(name: str) -> str:
    """"min" or "max": which way `name` is better."""
    return METRICS[name].direction


def ratio_is_meaningful(name: str) -> bool:
    """Whether mean(a) / mean(b) of `name` can be read as "x times the baseline": only for metrics
    whose values are always positive."""
    return not METRICS[name].can_be_nonpositive
