"""The RustyDB wire protocol, sans-IO: bytes in, events out; events in, bytes out.

One module per concept: ``errors`` (one base carrying the wire's error code),
``frames`` (length-prefixed msgpack frames, bulk frames, FrameDecoder),
``scan`` (structure limits checked before unpacking), ``events`` (each
message as a dataclass, both directions), ``messages`` (validation, and
events to maps and back), ``scram`` (SCRAM-SHA-256 helpers) and
``connection`` (ClientSide and ServerSide, the state machines the socket code
wraps; its docstring draws the conversation).
"""
