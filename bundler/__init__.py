"""Sealift's build side: bundle specs, hardware profiles, and the OCI bundles built from them."""

from __future__ import annotations

from bundler.build import BuildOptions, BuiltBundle, build_bundles, select_profiles, source_date_epoch
from bundler.bundle import BundleInfo, CheckReport, check_bundle, verify_bundle
from bundler.errors import BundleError, OutputError, SealiftError, SourceError, SpecError
from bundler.profiles import Profile, builtin_profile_dir, load_profiles
from bundler.spec import Spec, load_spec

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
