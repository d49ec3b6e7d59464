"""The bench world: a loopback registry holding a realistic image set.

Images (repository ``bench/<name>``):

- ``app00`` ... ``app<N-1>`` tag ``v1``: the Debian-like base plus one small
  top layer each (the batch); ``app00:v2`` has a new top layer (the tag bump).
- ``layers:v1``: base, the harness's update layer and two more layers with
  whiteouts and opaque directories.
- ``big:v1``: base plus a tree of mixed files and a layer of large files,
  about 1 GiB uncompressed.

Generating the blobs costs tens of seconds of gzip, so a generated world is
kept under ``<cache>/<key>/`` (the registry's storage directory after the
pushes, and ``world.json``), keyed by every parameter and by the source of
every module that shapes the bytes. Each bench run hard-links that storage
into its own directory and starts the real registry (tests/harness) on it,
so runs never change the cache and a rerun starts in about a second.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.harness.images import make_image
from tests.harness.push import push_blob, push_manifest
from tests.harness.registry import Registry, start_registry

from .blobs import LayerBlob, push_layer, write_layer
from .recipes import MiB, bulk_files, bulk_tree, debian_layers, top_layer, whiteout_layers

__all__ = ["WorldSpec", "WorldImage", "World", "open_world", "ensure_world"]

# Bump when the generation changes in a way the source hashes below miss.
WORLD_FORMAT = 1
_REPO_ROOT = Path(__file__).resolve().parents[1]
# Modules whose source decides the bytes of the world.
_SHAPING_SOURCES = ("tests/harness/debian.py", "tests/harness/tarball.py",
                    "tests/harness/layers.py", "tests/harness/images.py",
                    "bench/content.py", "bench/recipes.py", "bench/blobs.py", "bench/world.py")
GENERATE_WORKERS = 2
Log = Callable[[str], None]
_CACHE_NAME = re.compile(r"\.?[0-9a-f]{16}(\.[0-9]+\.tmp)?")


@dataclass(frozen=True, slots=True, kw_only=True)
class WorldSpec:
    """Every parameter of the generated world; its key names the cache entry."""

    base_budget: int = 240 * MiB
    """Regular-file budget handed to the harness's debian_like (~200 MB of tar)."""
    base_files: int = 7000
    batch: int = 10
    top_bytes: int = 2 * MiB
    bulk_tree_bytes: int = 416 * MiB
    bulk_files_bytes: int = 416 * MiB
    seed: int = 1

    def key(self) -> str:
        h = hashlib.sha256(json.dumps({"format": WORLD_FORMAT, **asdict(self)},
                                      sort_keys=True).encode())
        for rel in _SHAPING_SOURCES:
            h.update(rel.encode() + b"\0" + (_REPO_ROOT / rel).read_bytes())
        return h.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class WorldImage:
    name: str
    """The name in images.toml and out/<name>.ext4."""
    repository: str
    tag: str
    layers: tuple[LayerBlob, ...]
    manifest_digest: str

    @property
    def uncompressed_bytes(self) -> int:
        return sum(layer.uncompressed_size for layer in self.layers)

    @property
    def compressed_bytes(self) -> int:
        return sum(layer.size for layer in self.layers)

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "repository": self.repository, "tag": self.tag,
                "manifest_digest": self.manifest_digest,
                "layers": [layer.to_json() for layer in self.layers]}

    @classmethod
    def from_json(cls, d: dict[str, object]) -> WorldImage:
        raw_layers: list[dict[str, object]] = d["layers"]  # type: ignore[assignment]
        layers = tuple(LayerBlob.from_json(x) for x in raw_layers)
        return cls(str(d["name"]), str(d["repository"]), str(d["tag"]), layers,
                   str(d["manifest_digest"]))


@dataclass(frozen=True, slots=True)
class World:
    """A generated world: its images, and (once running) the registry serving them."""

    spec: WorldSpec
    images: dict[str, WorldImage]
    """Keyed ``repository-name:tag``, e.g. ``app03:v1``."""
    generate_seconds: float
    registry: Registry | None = field(default=None, compare=False)

    def image(self, name: str, tag: str = "v1") -> WorldImage:
        return self.images[f"{name}:{tag}"]

    def ref(self, image: WorldImage) -> str:
        assert self.registry is not None, "internal error: the world's registry is not running"
        return f"{self.registry.host}/{image.repository}:{image.tag}"

    def blob_path(self, layer: LayerBlob) -> Path:
        """Where the running registry stores ``layer`` (distribution's filesystem driver)."""
        assert self.registry is not None, "internal error: the world's registry is not running"
        hexd = layer.file_name
        return (self.registry.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd
                / "data")

    @property
    def batch(self) -> list[WorldImage]:
        return [self.image(f"app{i:02d}") for i in range(self.spec.batch)]


# Generation jobs: module-level so a process pool can run them side by side.

def _job_debian(spec: WorldSpec, blobs: Path) -> list[LayerBlob]:
    base, update = debian_layers(size=spec.base_budget, files=spec.base_files, seed=spec.seed)
    return [write_layer(base, blobs, "base"), write_layer(update, blobs, "debian-update")]


def _job_small(spec: WorldSpec, blobs: Path) -> list[LayerBlob]:
    out = [write_layer(top_layer(i, 1, size=spec.top_bytes, seed=spec.seed), blobs,
                       f"top-app{i:02d}-v1") for i in range(spec.batch)]
    out.append(write_layer(top_layer(0, 2, size=spec.top_bytes, seed=spec.seed), blobs,
                           "top-app00-v2"))
    first, second = whiteout_layers(seed=spec.seed)
    out += [write_layer(first, blobs, "whiteouts-1"), write_layer(second, blobs, "whiteouts-2")]
    return out


def _job_tree(spec: WorldSpec, blobs: Path) -> list[LayerBlob]:
    return [write_layer(bulk_tree(spec.bulk_tree_bytes, seed=spec.seed), blobs, "bulk-tree")]


def _job_files(spec: WorldSpec, blobs: Path) -> list[LayerBlob]:
    return [write_layer(bulk_files(spec.bulk_files_bytes, seed=spec.seed), blobs,
                        "bulk-files")]


def _images(spec: WorldSpec, layers: dict[str, LayerBlob]) -> list[tuple[str, str,
                                                                        list[LayerBlob]]]:
    base = layers["base"]
    images = [(f"app{i:02d}", "v1", [base, layers[f"top-app{i:02d}-v1"]])
              for i in range(spec.batch)]
    images.append(("app00", "v2", [base, layers["top-app00-v2"]]))
    images.append(("layers", "v1", [base, layers["debian-update"], layers["whiteouts-1"],
                                    layers["whiteouts-2"]]))
    images.append(("big", "v1", [base, layers["bulk-tree"], layers["bulk-files"]]))
    return images


def _generate(spec: WorldSpec, dest: Path, log: Log) -> World:
    started = time.monotonic()
    blobs = dest / "blobs"
    jobs = (_job_debian, _job_tree, _job_files, _job_small)
    with ProcessPoolExecutor(GENERATE_WORKERS) as pool:
        futures = [pool.submit(job, spec, blobs) for job in jobs]
        made = [layer for f in futures for layer in f.result()]
    layers = {layer.name: layer for layer in made}
    log(f"world: {len(layers)} layer blobs written in {time.monotonic() - started:.1f} s")
    images: dict[str, WorldImage] = {}
    first_repo: dict[str, str] = {}
    with start_registry(dest / "registry") as registry, registry.client() as client:
        for name, tag, stack in _images(spec, layers):
            repository = f"bench/{name}"
            for layer in stack:
                push_layer(client, repository, layer, blobs,
                           mount_from=first_repo.get(layer.digest))
                first_repo.setdefault(layer.digest, repository)
            image = make_image([layer.harness_layer() for layer in stack])
            push_blob(registry, repository, image.config)
            digest = push_manifest(registry, repository, tag, image.manifest, image.media_type)
            images[f"{name}:{tag}"] = WorldImage(name, repository, tag, tuple(stack), digest)
    shutil.rmtree(blobs)
    world = World(spec, images, round(time.monotonic() - started, 1))
    (dest / "world.json").write_text(json.dumps(
        {"spec": asdict(spec), "generate_seconds": world.generate_seconds,
         "images": {k: v.to_json() for k, v in images.items()}}, indent=1, sort_keys=True))
    return world


def ensure_world(spec: WorldSpec, cache: Path, log: Log) -> Path:
    """The cache directory of ``spec``'s world, generating it first if missing."""
    final = cache / spec.key()
    if (final / "world.json").is_file():
        return final
    for stale in cache.glob("*") if cache.is_dir() else ():
        # Worlds of other parameters or older generator code: only a cache.
        if _CACHE_NAME.fullmatch(stale.name) and stale != final:
            log(f"world: removing stale cached world {stale}")
            shutil.rmtree(stale, ignore_errors=True)
    tmp = cache / f".{spec.key()}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    log(f"world: generating {final} (cached for later runs)")
    try:
        world = _generate(spec, tmp, log)
        # The registry's log and config belong to the generating run only.
        for name in ("registry.log", "config.yml"):
            (tmp / "registry" / name).unlink(missing_ok=True)
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"world: generated in {world.generate_seconds:.1f} s")
    return final


def _load(spec: WorldSpec, cached: Path) -> World:
    d = json.loads((cached / "world.json").read_text())
    images = {k: WorldImage.from_json(v) for k, v in d["images"].items()}
    return World(spec, images, float(d["generate_seconds"]))


@contextlib.contextmanager
def open_world(spec: WorldSpec, *, cache: Path, run_dir: Path,
               log: Log) -> Iterator[World]:
    """Serve ``spec``'s world from a registry whose storage lives under ``run_dir``."""
    cached = ensure_world(spec, cache, log)
    world = _load(spec, cached)
    root = run_dir / "registry"
    # Hard links: the registry only reads blobs and writes new files by
    # rename, so the cached storage is never modified through them.
    shutil.copytree(cached / "registry" / "storage", root / "storage", copy_function=os.link)
    with start_registry(root) as registry:
        yield World(spec, world.images, world.generate_seconds, registry)
