"""``erlang.byte_channel``: erlang_python's submodule for byte channels."""
from ._channels import ByteChannel, ByteChannelClosed

__all__ = ["ByteChannel", "ByteChannelClosed"]
