"""``erlang.channel``: erlang_python's submodule for channels."""
from ._channels import Channel, ChannelClosed, reply

__all__ = ["Channel", "ChannelClosed", "reply"]
