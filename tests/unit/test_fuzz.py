"""Property-based fuzzing of every reader of outside input (Hypothesis).

Each test starts from a real, valid input (a bundle as a directory and as a tar, a medium, a
signed bundle's TUF metadata, a spec, a profile) and lets Hypothesis damage it: a JSON value
replaced anywhere in a document (re-sealed under a fresh digest where one covers it, so the damage
reaches the parser behind the digest check), bytes flipped, files cut short. Whatever it makes,
the reader ends in a result or in a Sealift error, never another exception, and within a bounded
amount of memory.

The examples per test come from ``SEALIFT_FUZZ_EXAMPLES`` (default 60, what CI runs: under a
minute in all); run longer with ``SEALIFT_FUZZ_EXAMPLES=5000 pytest tests/unit/test_fuzz.py``.
Inputs that once broke a reader are kept as ordinary regression tests beside the reader's own
(the field name holding a line break: tests/unit/test_profiles.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bundler.build import BuildOptions, build_bundles, select_profiles
from bundler.export import export
from bundler.spec import load_spec
from tests.builders import SPEC, project, signed
from updater.bundle import check_bundle
from updater.errors import SealiftError
from updater.medium import check_medium
from updater.oci import canonical_json, parse_json
from updater.profiles import builtin_profile_dir, load_profiles
from updater.trust import TrustedState
from updater.verify import verify_for_device

PROFILES = load_profiles([builtin_profile_dir()])
CPU = PROFILES["x86_64-cpu"]
EXAMPLES = int(os.environ.get("SEALIFT_FUZZ_EXAMPLES", "60"))
MEMORY_LIMIT = 64 << 20  # peak Python allocations of one reader run on one damaged input
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats(allow_nan=False)
    | st.text(max_size=40) | st.sampled_from(["sha256:" + "0" * 64, "application/vnd.sealift.model.v1", "../../etc", ""]),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)


def _ends_well(read: Callable[[], object]) -> None:
    """``read`` returns or raises a SealiftError, within MEMORY_LIMIT; anything else fails the test."""
    tracemalloc.start()
    try:
        read()
    except SealiftError as e:
        assert e.diagnostics() and "\n" not in e.diagnostics(), repr(e)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, f"{peak} bytes at peak"


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


def _damaged(data: st.DataObject, document: Any) -> Any:
    """``document`` with one value, anywhere in it, replaced by another JSON value or removed."""
    path = data.draw(st.sampled_from(list(_paths(document))))
    if not path:
        return data.draw(JSON_VALUES)
    changed = copy.deepcopy(document)
    parent = changed
    for key in path[:-1]:
        parent = parent[key]
    if data.draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = data.draw(JSON_VALUES)
    return changed


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz")
    spec = load_spec(project(root / "src"))
    built: dict[str, Path] = {}
    for fmt in ("dir", "tar"):
        (b,) = build_bundles(spec, select_profiles(spec, PROFILES, (CPU.name,)), BuildOptions(out=root / fmt, format=fmt, epoch=0))
        built[fmt] = b.path
    built["root"] = signed([built["dir"]], root / "signing")
    export([built["dir"]], root / "medium")
    built["medium"] = root / "medium"
    built["spec"] = root / "src" / "sealift.yaml"
    return built


def _copy(source: Path, to: Path) -> Path:
    if to.exists():
        shutil.rmtree(to) if to.is_dir() else to.unlink()
    if source.is_dir():
        shutil.copytree(source, to)
    else:
        shutil.copyfile(source, to)
    return to


def _put(bundle: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (bundle / "blobs" / "sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


@FUZZ
@given(raw=st.binary(max_size=512) | st.builds(lambda v: json.dumps(v).encode(), JSON_VALUES))
def test_strict_json_parses_or_refuses_anything(raw: bytes) -> None:
    _ends_well(lambda: parse_json(raw, "fuzzed"))


@FUZZ
@given(data=st.data())
def test_a_bundle_with_any_damaged_json_document_is_checked_or_refused(pristine: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                                                      data: st.DataObject) -> None:
    bundle = _copy(pristine["dir"], tmp_path_factory.getbasetemp() / "fuzz-bundle")
    layout = json.loads((bundle / "index.json").read_text())
    which = data.draw(st.sampled_from(["index.json", "top index", "a manifest", "oci-layout"]))
    if which == "index.json":
        (bundle / "index.json").write_bytes(json.dumps(_damaged(data, layout)).encode())
    elif which == "oci-layout":
        (bundle / "oci-layout").write_bytes(json.dumps(_damaged(data, {"imageLayoutVersion": "1.0.0"})).encode())
    else:
        top_digest = layout["manifests"][0]["digest"]
        top = parse_json((bundle / "blobs/sha256" / top_digest[7:]).read_bytes(), "top")
        if which == "top index":
            body = canonical_json(_damaged(data, top))
        else:  # a manifest the top index names: damaged, re-sealed into the top index
            entry = data.draw(st.sampled_from(top["manifests"]))
            manifest = parse_json((bundle / "blobs/sha256" / entry["digest"][7:]).read_bytes(), "manifest")
            changed = canonical_json(_damaged(data, manifest))
            entry.update(digest=_put(bundle, changed), size=len(changed))
            body = canonical_json(top)
        layout["manifests"][0].update(digest=_put(bundle, body), size=len(body))
        (bundle / "index.json").write_text(json.dumps(layout))
    _ends_well(lambda: check_bundle(bundle))


@FUZZ
@given(data=st.data())
def test_a_damaged_tar_bundle_is_checked_or_refused(pristine: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                                    data: st.DataObject) -> None:
    raw = bytearray(pristine["tar"].read_bytes())
    for _ in range(data.draw(st.integers(min_value=1, max_value=8))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
        raw[at] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(raw)))
    target = tmp_path_factory.getbasetemp() / "fuzz-bundle.tar"
    target.write_bytes(bytes(raw[:cut]) if data.draw(st.booleans()) else bytes(raw))
    _ends_well(lambda: check_bundle(target))


@FUZZ
@given(data=st.data())
def test_a_medium_with_a_damaged_listing_is_checked_or_refused(pristine: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                                               data: st.DataObject) -> None:
    medium = _copy(pristine["medium"], tmp_path_factory.getbasetemp() / "fuzz-medium")
    listing = json.loads((medium / "sealift-medium.json").read_text())
    (medium / "sealift-medium.json").write_bytes(json.dumps(_damaged(data, listing)).encode())
    _ends_well(lambda: check_medium(medium))


@FUZZ
@given(data=st.data())
def test_a_bundle_with_damaged_signed_metadata_is_verified_or_refused(pristine: dict[str, Path],
                                                                      tmp_path_factory: pytest.TempPathFactory,
                                                                      data: st.DataObject) -> None:
    base = tmp_path_factory.getbasetemp()
    bundle = _copy(pristine["dir"], base / "fuzz-signed")
    name = data.draw(st.sampled_from(sorted(p.name for p in (bundle / "tuf").iterdir())))
    document = json.loads((bundle / "tuf" / name).read_text())
    (bundle / "tuf" / name).write_bytes(json.dumps(_damaged(data, document)).encode())
    state = base / "fuzz-device"
    shutil.rmtree(state, ignore_errors=True)
    TrustedState(state).init(pristine["root"])
    _ends_well(lambda: verify_for_device(bundle, trust=TrustedState(state), profile=CPU))


@FUZZ
@given(data=st.data())
def test_a_damaged_spec_loads_or_is_one_input_error(pristine: dict[str, Path], tmp_path_factory: pytest.TempPathFactory,
                                                    data: st.DataObject) -> None:
    spec = tmp_path_factory.getbasetemp() / "fuzz-spec" / "sealift.yaml"
    spec.parent.mkdir(exist_ok=True)
    document = yaml.safe_load(SPEC)
    spec.write_text(yaml.safe_dump(_damaged(data, document)) if data.draw(st.booleans())
                    else data.draw(st.text(max_size=300)))
    _ends_well(lambda: load_spec(spec))


@FUZZ
@given(data=st.data())
def test_a_damaged_profile_loads_or_is_one_input_error(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    folder = tmp_path_factory.getbasetemp() / "fuzz-profiles"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    original = builtin_profile_dir() / data.draw(st.sampled_from(sorted(p.name for p in builtin_profile_dir().glob("*.yaml"))))
    document = yaml.safe_load(original.read_text())
    (folder / original.name).write_text(yaml.safe_dump(_damaged(data, document)))
    _ends_well(lambda: load_profiles([folder]))



@pytest.fixture(scope="module")
def small_delta(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, bytes, bytes]:
    """A base, the pack and index of a chunk delta on it, and the target they rebuild."""
    from bundler.chunking import chunk_delta

    root = tmp_path_factory.mktemp("small-delta")
    base = os.urandom(256 << 10)
    target = base[:100_000] + os.urandom(30_000) + base[120_000:]
    (root / "base").write_bytes(base)
    (root / "target").write_bytes(target)
    delta = chunk_delta(root / "base", root / "target", root / "pack", base_digest="sha256:" + hashlib.sha256(base).hexdigest(),
                        target_digest="sha256:" + hashlib.sha256(target).hexdigest())
    return root / "base", root / "pack", delta.index, target


@FUZZ
@given(data=st.data())
def test_a_damaged_chunk_index_is_rebuilt_from_or_refused_and_never_keeps_a_wrong_blob(
        small_delta: tuple[Path, Path, bytes, bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    from updater.chunks import MAGIC, read_index, rebuild

    base, pack, index, target = small_delta
    damaged = bytearray(index)
    how = data.draw(st.sampled_from(["flip", "cut", "header"]))
    if how == "flip":
        for at in data.draw(st.lists(st.integers(0, len(index) - 1), min_size=1, max_size=8)):
            damaged[at] ^= data.draw(st.integers(1, 255))
    elif how == "cut":
        damaged = damaged[:data.draw(st.integers(0, len(index) - 1))]
    else:
        header_end = index.index(b"\n", len(MAGIC))
        header = _damaged(data, json.loads(index[len(MAGIC):header_end]))
        damaged = bytearray(MAGIC + json.dumps(header).encode() + index[header_end:])
    out = tmp_path_factory.mktemp("rebuilt") / "blob"

    def run() -> None:
        read = read_index(bytes(damaged), "fuzzed index")
        with open(base, "rb") as old, open(pack, "rb") as new:
            rebuild(read, old, new, out, what="fuzzed delta")

    _ends_well(run)
    assert not out.exists() or out.read_bytes() == target  # whatever is kept is the blob, byte for byte
    assert [p.name for p in out.parent.iterdir()] in ([], ["blob"])  # no partial file left
