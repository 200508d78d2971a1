"""Build the vision-app container images as one multi-arch OCI image layout.

Each image is two layers: busybox for its architecture (from Debian's busybox-static), and the
app (``app/`` beside this file, installed at ``/app``), which is the same blob on every platform.
The result is reproducible: given the same busybox binaries and ``SOURCE_DATE_EPOCH``, every
digest is the same on any machine. ``make-images.sh`` fetches busybox and calls this.

Usage: make_images.py --busybox amd64=PATH --busybox arm64=PATH --out DIR --tag 1.0.0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path, PurePosixPath

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the repository root, for scripts.oci_image

from scripts.oci_image import (  # noqa: E402
    DirEntry,
    Entry,
    Healthcheck,
    ImageConfig,
    Platform,
    PlatformImage,
    busybox_rootfs_entries,
    directory_entries,
    write_image_layout,
)

PLATFORMS = {"amd64": Platform(architecture="amd64"), "arm64": Platform(architecture="arm64", variant="v8")}
# ELF e_machine of each architecture: a wrong binary would only fail once deployed.
ELF_MACHINE = {"amd64": 62, "arm64": 183}
APPLETS = (
    "[", "awk", "cat", "echo", "env", "false", "grep", "head", "httpd", "id", "kill", "ls", "mkdir",
    "nc", "printf", "ps", "rm", "sed", "sh", "sleep", "tail", "test", "timeout", "tr", "true", "wc",
    "wget",
)  # fmt: skip
PORT = 8080


def main() -> None:
    args = _arguments()
    busyboxes = dict(_arch_path(text) for text in args.busybox)
    images = [_image(arch, path, args.tag) for arch, path in sorted(busyboxes.items())]
    top = write_image_layout(args.out, args.tag, images)
    _report(args.out, args.tag, top)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--busybox",
        action="append",
        required=True,
        metavar="ARCH=PATH",
        help=f"a static busybox binary for ARCH ({', '.join(PLATFORMS)}); repeat per arch",
    )
    parser.add_argument("--out", type=Path, required=True, help="the OCI layout directory to (re)write")
    parser.add_argument("--tag", required=True, help="the tag in index.json, e.g. 1.0.0")
    return parser.parse_args()


def _arch_path(text: str) -> tuple[str, Path]:
    arch, _, path = text.partition("=")
    if arch not in PLATFORMS or not path:
        raise SystemExit(f"--busybox {text!r}: expected ARCH=PATH with ARCH one of {', '.join(PLATFORMS)}")
    _check_elf(Path(path), arch)
    return arch, Path(path)


def _check_elf(path: Path, arch: str) -> None:
    with path.open("rb") as f:
        header = f.read(20)
    machine = int.from_bytes(header[18:20], "little") if header[:4] == b"\x7fELF" else None
    if machine != ELF_MACHINE[arch]:
        raise SystemExit(f"{path} is not an {arch} ELF binary (e_machine {machine}, expected {ELF_MACHINE[arch]})")


def _image(arch: str, busybox: Path, version: str) -> PlatformImage:
    base: list[Entry] = [
        *busybox_rootfs_entries(busybox, APPLETS),
        *(DirEntry(path=path) for path in ("/dev", "/proc", "/sys")),  # mount points
        DirEntry(path="/tmp", mode=0o1777),
    ]
    app: list[Entry] = [
        *directory_entries(HERE / "app", "/app", executable=_is_executable),
        DirEntry(path="/etc/vision"),  # the config and model are mounted here
        DirEntry(path="/models"),
    ]
    return PlatformImage(platform=PLATFORMS[arch], layers=(tuple(base), tuple(app)), config=_config(version))


def _is_executable(path: PurePosixPath) -> bool:
    return path.suffix == ".sh" or path.parent == PurePosixPath("www/cgi-bin")


def _config(version: str) -> ImageConfig:
    return ImageConfig(
        entrypoint=("/app/serve.sh",),
        env=(
            "PATH=/bin",
            "VISION_MODEL=/models/detector.model",
            "VISION_CONFIG=/etc/vision/app.conf",
            f"VISION_PORT={PORT}",
        ),
        exposed_ports=(f"{PORT}/tcp",),
        working_dir="/app",
        healthcheck=Healthcheck(
            test=("CMD", "wget", "-q", "-O-", f"http://127.0.0.1:{PORT}/healthz"),
            interval_s=5,
            timeout_s=3,
            start_period_s=2,
            retries=3,
        ),
        labels=(
            ("org.opencontainers.image.title", "vision-app"),
            ("org.opencontainers.image.description", "Sealift example: a tiny busybox inference service"),
            ("org.opencontainers.image.version", version),
        ),
    )


def _report(out: Path, tag: str, top: str) -> None:
    print(f"{out}:{tag} -> {top}")
    index = json.loads((out / "blobs" / "sha256" / top.removeprefix("sha256:")).read_text())
    for manifest in index.get("manifests", []):
        platform = "/".join(v for k in ("os", "architecture", "variant") if (v := manifest["platform"].get(k)))
        print(f"  {platform:16} {manifest['digest']}")


if __name__ == "__main__":
    main()
