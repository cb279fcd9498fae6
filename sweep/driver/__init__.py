"""The sweep driver, in its phases: inputs checked before any cluster work (:mod:`.inputs`), the Tune wiring
(:mod:`.tuner`), the trials collected into the outcome (:mod:`.outcome`), and :class:`SweepDriver`, which runs them
in order (:mod:`.sweep_driver`)."""

from sweep.driver.outcome import SweepOutcome
from sweep.driver.sweep_driver import SweepDriver

__all__ = ["SweepDriver", "SweepOutcome"]
