"""permessage-deflate whose compressor is kept only while a connection streams.

A compressor kept between messages (context takeover) lets each batch refer
back to the previous one: a stream of re-marks repeats its field names, its
symbols and most digits of its prices from one window to the next, and
compresses to about 18% of its JSON at level 1 with a window of 2**13 against
21% when each message compresses alone (a captured S4 stream; 12.5% at level
6). But a compressor is about 70 KiB (its window and hash tables): kept by
ten thousand idle connections it would be most of their memory (S3).

So the server negotiates context takeover (it does not send
``server_no_context_takeover``; the client keeps its window, as it must then)
and decides per connection when to use it. ``StreamingDeflate`` compresses
each message with a fresh compressor, freed once the message is out, until
the session says the connection streams (``keep_context(True)``: it sends
batches); then one compressor is kept across messages until the session says
it went quiet (``keep_context(False)``), which frees it.

Dropping the context between two messages is always allowed: a fresh
compressor's output refers to nothing before it, and the client's
decompressor takes it as the next blocks of the same stream. A client that
asks for ``server_no_context_takeover`` gets it, and a fresh compressor per
message, as from websockets' own extension.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import PerMessageDeflate, ServerPerMessageDeflateFactory
from websockets.typing import ExtensionParameter


class StreamingDeflate(PerMessageDeflate):
    def __init__(
        self,
        remote_no_context_takeover: bool,
        local_no_context_takeover: bool,
        remote_max_window_bits: int,
        local_max_window_bits: int,
        compress_settings: dict[str, int] | None = None,
    ) -> None:
        # A fresh compressor per message until the session says the connection streams.
        super().__init__(
            remote_no_context_takeover, True, remote_max_window_bits, local_max_window_bits, compress_settings
        )
        # Negotiated: the client keeps its window, so this side may keep a compressor.
        self.may_keep_context = not local_no_context_takeover

    @property
    def keeps_context(self) -> bool:
        return not self.local_no_context_takeover

    def keep_context(self, keep: bool) -> None:
        """Keep one compressor across messages from now on, or free it (between messages only)."""
        if not self.may_keep_context or keep == self.keeps_context:
            return
        self.local_no_context_takeover = not keep
        if keep:
            self.encoder = zlib.compressobj(wbits=-self.local_max_window_bits, **self.compress_settings)
        else:
            self.__dict__.pop("encoder", None)


class StreamingDeflateFactory(ServerPerMessageDeflateFactory):
    """websockets' server factory, answering with a ``StreamingDeflate``."""

    def process_request_params(
        self, params: Sequence[ExtensionParameter], accepted_extensions: Sequence[Extension]
    ) -> tuple[list[ExtensionParameter], PerMessageDeflate]:
        response, negotiated = super().process_request_params(params, accepted_extensions)
        extension = StreamingDeflate(
            negotiated.remote_no_context_takeover,
            negotiated.local_no_context_takeover,
            negotiated.remote_max_window_bits,
            negotiated.local_max_window_bits,
            negotiated.compress_settings,
        )
        return response, extension


def streaming_deflate(extensions: Sequence[Extension]) -> StreamingDeflate | None:
    """The connection's ``StreamingDeflate``, if it negotiated one."""
    for extension in extensions:
        if isinstance(extension, StreamingDeflate):
            return extension
    return None
