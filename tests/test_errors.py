"""pipeline.errors: every error pickles whole, so a worker's error reaches the run unchanged."""

from __future__ import annotations

import pickle

import pytest

import pipeline.errors as errors
from pipeline.errors import (
    BadDigest,
    BadReference,
    CorruptTar,
    DigestMismatch,
    ManifestError,
    PathOutsideRoot,
    PipelineError,
    PlatformNotFound,
    RegistryError,
    SettingError,
    ToolError,
)

LAYER = "sha256:" + "ab" * 32

ERRORS = [
    pytest.param(ManifestError("unknown key 'sise'", path="images.toml", line=7, image="a",
                               key="sise"), id="manifest"),
    pytest.param(BadReference("Alpine", "repository must be lowercase"), id="reference"),
    pytest.param(BadDigest("sha256:xyz", "not hex"), id="digest"),
    pytest.param(PlatformNotFound("alpine:3", "linux/s390x", ["linux/amd64"]), id="platform"),
    pytest.param(RegistryError("404 MANIFEST_UNKNOWN", method="GET", url="https://r/v2/x",
                               status=404, code="MANIFEST_UNKNOWN", retry_after=2.0),
                 id="registry"),
    pytest.param(DigestMismatch("blob", "sha256:aa", "sha256:bb"), id="mismatch"),
    pytest.param(CorruptTar(LAYER, "bad checksum", member="etc/passwd"), id="layer"),
    pytest.param(PathOutsideRoot(LAYER, "'..' leaves the root", member="../x"), id="unsafe"),
    pytest.param(ToolError("debugfs", "set_inode_field failed", returncode=1,
                           stderr="a\nb"), id="tool"),
    pytest.param(SettingError("ROOTFS_FROZEN", "2", "0 or 1"), id="setting"),
]


@pytest.mark.parametrize("err", ERRORS)
def test_errors_pickle_with_message_and_attributes(err: PipelineError) -> None:
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err)
    assert str(back) == str(err)
    assert vars(back) == vars(err)


def test_every_error_class_is_exported_and_a_pipeline_error() -> None:
    classes = {name for name, value in vars(errors).items()
               if isinstance(value, type) and issubclass(value, PipelineError)}
    assert classes == set(errors.__all__)


def test_setting_error_names_the_setting_and_what_is_allowed() -> None:
    assert str(SettingError("ROOTFS_FROZEN", "2", "0 or 1")) == (
        "ROOTFS_FROZEN='2' is not valid: expected 0 or 1")
