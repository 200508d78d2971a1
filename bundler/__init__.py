"""Sealift's build side: bundle specs, hardware profiles, and the OCI bundles built from them."""

from __future__ import annotations

from bundler.build import BuildOptions, BuiltBundle, build_bundles, select_profiles, source_date_epoch
from bundler.errors import OutputError, SourceError
from bundler.spec import Spec, load_spec
from updater.bundle import BundleInfo, CheckReport, check_bundle, verify_bundle
from updater.errors import BundleError, SealiftError, SpecError
from updater.profiles import Profile, builtin_profile_dir, load_profiles

__all__ = [
    "BuildOptions",
    "BuiltBundle",
    "BundleError",
    "BundleInfo",
    "CheckReport",
    "OutputError",
    "Profile",
    "SealiftError",
    "SourceError",
    "Spec",
    "SpecError",
    "build_bundles",
    "builtin_profile_dir",
    "check_bundle",
    "load_profiles",
    "load_spec",
    "select_profiles",
    "source_date_epoch",
    "verify_bundle",
]
