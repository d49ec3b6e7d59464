"""Shards: a deterministic, balanced, stable partition computed from the lock alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.base.digest import digest_of
from pipeline.errors import ShardError
from pipeline.oci import mediatypes as mt
from pipeline.oci.platform import Platform
from pipeline.oci.reference import parse_reference
from pipeline.oci.resolved import BlobRef, LayerRef, ResolvedImage
from pipeline.project.lockfile import LockEntry
from pipeline.project.shards import Shard, matrix, parse_shard, partition, shard_from_env

MiB = 1 << 20


def entry(name: str, *layers: tuple[str, int]) -> LockEntry:
    """An image whose layers are (label, size): the same label is the same blob."""
    ref = parse_reference(f"{name}:1")
    return LockEntry(ref=f"{name}:1", platform="linux/amd64", resolved=ResolvedImage(
        ref=ref, registry=ref.registry, repository=ref.repository,
        platform=Platform("linux", "amd64"), index_digest=None,
        manifest_digest=digest_of(b"manifest " + name.encode()),
        config=BlobRef(digest_of(b"config " + name.encode()), 100, mt.OCI_CONFIG),
        layers=tuple(LayerRef(digest_of(label.encode()), size, mt.OCI_LAYER_GZIP,
                              digest_of(label.encode() + b"!")) for label, size in layers)))


def fleet(count: int) -> dict[str, LockEntry]:
    """``count`` images over a few bases, of uneven sizes."""
    entries = {}
    for i in range(count):
        base = f"base{i % 7}"
        entries[f"img{i:03d}"] = entry(f"img{i:03d}", (base, (20 + 13 * (i % 7)) * MiB),
                                       (f"app{i}", (1 + i % 5) * MiB))
    return entries


@pytest.mark.parametrize(("text", "expected"), [
    ("1/1", Shard(1, 1)), ("2/5", Shard(2, 5)), ("1024/1024", Shard(1024, 1024)),
], ids=["one-of-one", "two-of-five", "largest"])
def test_parse_shard_accepts(text: str, expected: Shard) -> None:
    assert parse_shard(text) == expected
    assert str(expected) == text


@pytest.mark.parametrize(("text", "message"), [
    ("3", "shard=: '3' is not of the form K/N; give e.g. shard=1/4"),
    ("0/3", "shard=: shard index in '0/3' must be between 1 and 3; give e.g. shard=1/3"),
    ("4/3", "shard=: shard index in '4/3' must be between 1 and 3; give e.g. shard=1/3"),
    ("1/0", "shard=: shard count in '1/0' must be between 1 and 1024; give e.g. shard=1/4"),
    ("1/2000", "shard=: shard count in '1/2000' must be between 1 and 1024; "
               "give e.g. shard=1/4"),
    ("+1/2", "shard=: '+1/2' is not of the form K/N with whole numbers; give e.g. shard=1/4"),
    ("1/\x1b[2", "shard=: '1/\\x1b[2' is not of the form K/N with whole numbers; "
                 "give e.g. shard=1/4"),
    ("١/2", "shard=: '١/2' is not of the form K/N with whole numbers; give e.g. shard=1/4"),
], ids=["no-slash", "zero-index", "index-over-count", "zero-count", "count-over-limit",
        "sign", "control-characters", "non-ascii-digit"])
def test_parse_shard_rejects(text: str, message: str) -> None:
    with pytest.raises(ShardError) as err:
        parse_shard(text)
    assert str(err.value) == message


@pytest.mark.parametrize(("env", "expected"), [
    ({}, None),
    ({"CI_NODE_INDEX": "2", "CI_NODE_TOTAL": "3"}, Shard(2, 3)),
    ({"JOB_COMPLETION_INDEX": "0", "ROOTFS_SHARDS": "4"}, Shard(1, 4)),
    ({"JOB_COMPLETION_INDEX": "3", "ROOTFS_SHARDS": "4"}, Shard(4, 4)),
    ({"CI_NODE_INDEX": "1"}, None),
], ids=["not-sharded", "gitlab", "kubernetes-first", "kubernetes-last", "gitlab-half-set"])
def test_shard_from_env(env: dict[str, str], expected: Shard | None) -> None:
    assert shard_from_env(env) == expected


@pytest.mark.parametrize(("env", "message"), [
    ({"JOB_COMPLETION_INDEX": "0"},
     "JOB_COMPLETION_INDEX/ROOTFS_SHARDS: JOB_COMPLETION_INDEX is set but ROOTFS_SHARDS is "
     "not; set ROOTFS_SHARDS to the Job's completions"),
    ({"JOB_COMPLETION_INDEX": "4", "ROOTFS_SHARDS": "4"},
     "JOB_COMPLETION_INDEX/ROOTFS_SHARDS: shard index in '4/4' must be between 1 and 4; "
     "give e.g. shard=1/4"),
    ({"CI_NODE_INDEX": "x", "CI_NODE_TOTAL": "3"},
     "CI_NODE_INDEX/CI_NODE_TOTAL: 'x/3' is not of the form K/N with whole numbers; "
     "give e.g. shard=1/4"),
], ids=["kubernetes-without-count", "kubernetes-index-past-end", "gitlab-garbage"])
def test_shard_from_env_rejects(env: dict[str, str], message: str) -> None:
    with pytest.raises(ShardError) as err:
        shard_from_env(env)
    assert str(err.value) == message


@pytest.mark.parametrize("total", [1, 2, 3, 5, 8])
def test_partition_covers_every_image_once(total: int) -> None:
    entries = fleet(40)
    shards = partition(entries, total)
    assert len(shards) == total
    names = [n for shard in shards for n in shard]
    assert sorted(names) == sorted(entries)


def test_images_sharing_a_base_stay_together_when_balance_allows() -> None:
    entries = {f"small{i}": entry(f"small{i}", ("alpine", 3 * MiB), (f"a{i}", MiB))
               for i in range(3)}
    entries |= {f"big{i}": entry(f"big{i}", (f"debian{i}", 60 * MiB)) for i in range(2)}
    shards = partition(entries, 2)
    holder = [s for s in shards if "small0" in s][0]
    assert {"small0", "small1", "small2"} <= set(holder)


def test_shards_are_balanced_by_layer_bytes() -> None:
    entries = fleet(60)
    cost = {n: sum(layer.size for layer in e.resolved.layers) for n, e in entries.items()}
    for total in (2, 3, 4):
        loads = [sum(cost[n] for n in shard) for shard in partition(entries, total)]
        assert max(loads) <= 1.3 * sum(loads) / total, loads


def test_growing_by_one_shard_moves_a_fraction() -> None:
    entries = {f"img{i:03d}": entry(f"img{i:03d}", (f"base{i}", (5 + i % 11) * MiB))
               for i in range(200)}
    for total in (2, 4, 8):
        before = {n: k for k, shard in enumerate(partition(entries, total)) for n in shard}
        after = {n: k for k, shard in enumerate(partition(entries, total + 1)) for n in shard}
        moved = sum(before[n] != after[n] for n in entries)
        # Ideal is 1/(N+1) of the images; allow the balancing some slack, and
        # far below the ~N/(N+1) a modulo-style reshuffle would move.
        assert moved <= 2.2 * len(entries) / (total + 1), (total, moved)


def test_plan_is_identical_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    script = ("import json, sys\n"
              "sys.path.insert(0, %r)\n"
              "from tests.project.test_shards import fleet\n"
              "from pipeline.project.shards import partition\n"
              "print(json.dumps(partition(fleet(50), 4)))\n") % str(Path.cwd())
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", script], env=env, check=True,
                              capture_output=True, text=True, cwd=tmp_path)
        outputs.add(done.stdout)
    assert len(outputs) == 1
    assert json.loads(outputs.pop()) == partition(fleet(50), 4)


def test_matrix_is_a_github_actions_include_list() -> None:
    entries = fleet(9)
    doc = matrix(entries, 3)
    assert [row["shard"] for row in doc["include"]] == ["1/3", "2/3", "3/3"]
    assert doc["include"][0]["images"] == partition(entries, 3)[0]
    assert json.loads(json.dumps(doc)) == doc
