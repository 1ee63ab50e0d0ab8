"""Hardware: sourced device and link profiles, whether a training step fits, what it costs.

    dev = odt.device("stm32f746")      # a DeviceProfile; typos get suggestions
    dev.fit(report)                    # FitReport: flash/SRAM split, headroom, roofline time
    odt.link("lorawan").transfer_s(nbytes)

Profiles are TOML files in ``odtkit/hardware/profiles/`` (package data); your own load
with ``load_profile(path)``.
"""

from ._profiles import show_device_number, show_link_number
from .catalogue import (
    DTYPES,
    KINDS,
    DeviceProfile,
    LinkProfile,
    ProfileError,
    Quantity,
    UnknownNameError,
    UnknownSpecError,
    device,
    devices,
    link,
    links,
    load_link,
    load_profile,
)
from .fit import FitReport, MemoryCheck

__all__ = [
    "DTYPES", "KINDS", "DeviceProfile", "FitReport", "LinkProfile", "MemoryCheck",
    "ProfileError", "Quantity", "UnknownNameError", "UnknownSpecError", "device", "devices",
    "link", "links", "load_link", "load_profile", "show_device_number", "show_link_number",
]
