"""What this machine lets the runtime offer: probed once at start-up.

Owns: the start-up probe of CRIU (VERSION, then CHECK, then FEATURE_CHECK) and of runc,
the decision of which features are offered, and the clear refusal (`FeatureUnavailable`)
a request gets when it needs one that is missing: no usable CRIU at all, a CRIU whose
self-check fails, incremental dumps without memory dirty tracking, or no runc.

Must not: refuse to start because something is missing (containers of the other kind,
and every query, still work), or probe again per request: the kernel does not change
while the runtime runs.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass

from runtime.criu import (
    CRIU_MINIMUM_VERSION,
    CriuBinary,
    CriuError,
    CriuFeatures,
    CriuVersion,
)
from runtime.errors import FeatureUnavailable

__all__ = ["CriuSupport", "find_runc"]

log = logging.getLogger("runtime.capabilities")


@dataclass(frozen=True)
class CriuSupport:
    """The outcome of the CRIU probe."""

    binary: CriuBinary | None
    version: CriuVersion | None = None
    features: CriuFeatures | None = None
    # Why checkpoints cannot be offered at all; empty when they can.
    problem: str = ""

    @classmethod
    async def probe(cls, path: str | None = None) -> CriuSupport:
        """VERSION, CHECK and FEATURE_CHECK against *path*, or the CRIU `locate` finds."""
        try:
            if path is None:
                binary = await CriuBinary.locate()
                version = await binary.version()
            else:
                binary = CriuBinary(path)
                version = await binary.version()
        except CriuError as error:
            return cls(None, problem=f"no usable CRIU: {error.reason}")
        if not version.at_least(CRIU_MINIMUM_VERSION):
            return cls(
                None,
                version,
                problem=f"CRIU {version} at {binary.path} is too old for this kernel "
                "(4.1 or newer is needed on kernels >= 6.13)",
            )
        try:
            await binary.check()
        except CriuError as error:
            return cls(
                None,
                version,
                problem=f"CRIU {version} at {binary.path} fails its self-check: {error.reason}",
            )
        try:
            features = await binary.features()
        except CriuError as error:
            log.warning("CRIU feature check failed (%s); offering no optional features", error)
            features = CriuFeatures(mem_track=False, lazy_pages=False, pidfd_store=False)
        return cls(binary, version, features)

    def require(self) -> CriuBinary:
        """The CRIU to use, or `FeatureUnavailable` saying why there is none."""
        if self.binary is None:
            raise FeatureUnavailable(f"checkpoint and restore are not available: {self.problem}")
        return self.binary

    def require_incremental(self) -> None:
        self.require()
        if self.features is None or not self.features.mem_track:
            raise FeatureUnavailable(
                "incremental checkpoints (preDump, parentCheckpoint) need memory dirty "
                "tracking, which this kernel does not offer (CRIU's feature check reports "
                "mem_track unavailable); take a full checkpoint instead"
            )

    def describe(self) -> str:
        if self.binary is None:
            return "criu unavailable"
        offered = ["dump", "restore"]
        if self.features is not None and self.features.mem_track:
            offered.append("incremental")
        return f"criu {self.version} ({', '.join(offered)})"


def find_runc(explicit: str | None) -> str | None:
    """The runc to use: *explicit* if given (even if missing: then runc is unavailable)."""
    if explicit is not None:
        return explicit if shutil.which(explicit) is not None else None
    return shutil.which("runc")
