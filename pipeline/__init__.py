"""rootfs-pipeline: OCI images to bootable ext4 root filesystems, rootless and incremental."""

from pipeline.errors import PipelineError

__all__ = ["PipelineError"]
__version__ = "0.1.0"
