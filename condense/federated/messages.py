"""Client updates as Flower messages: payload <-> ArrayRecord, and the bytes a reply takes on the wire.

Bytes are measured, never estimated: a reply's RecordDict is serialized with Flower's own protobuf serde (what its
transport sends) and the server decodes what it parses back from those bytes.
"""
from __future__ import annotations

import numpy as np

from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

from condense.federated.compress import Payload

WEIGHT_KEY = "num-examples"


def reply(payload: Payload, n_examples: int, loss: float) -> RecordDict:
    """The RecordDict a client sends back: its encoded update and its metrics (FedAvg weights by num-examples)."""
    return RecordDict({"arrays": ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in payload.items()}),
                       "metrics": MetricRecord({WEIGHT_KEY: int(n_examples), "train-loss": float(loss)})})


def payload_of(content: RecordDict) -> Payload:
    return {k: a.numpy() for k, a in content["arrays"].items()}


def wire(content: RecordDict) -> tuple[RecordDict, int]:
    """`content` serialized with Flower's protobuf serde and parsed back: (what the server receives, its bytes).

    Example:
        >>> rd, n = wire(reply({"values": np.zeros(100, np.float32)}, 10, 0.0))
        >>> n > 400, payload_of(rd)["values"].shape
        (True, (100,))
    """
    proto = recorddict_to_proto(content)
    data = proto.SerializeToString()
    return recorddict_from_proto(type(proto).FromString(data)), len(data)


def message_bytes(content: RecordDict) -> int:
    """Bytes of `content` serialized as Flower sends it."""
    return len(recorddict_to_proto(content).SerializeToString())
