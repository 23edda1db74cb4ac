"""The site layer: named places in a model, resolved from one table per architecture family."""

from steer.sites.resolve import ACTIVATION_SITES, SITE_NAMES, Site, SiteMap
from steer.sites.table import ArchTable, arch_table, known_architectures, register_architecture

__all__ = [
    "ACTIVATION_SITES",
    "SITE_NAMES",
    "ArchTable",
    "Site",
    "SiteMap",
    "arch_table",
    "known_architectures",
    "register_architecture",
]
