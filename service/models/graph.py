"""Frozen graphs: freeze a Keras model into a GraphDef, parse one back, list its layers.

TensorFlow is imported inside functions so that importing this module never starts TF
threads (a daemon must be able to fork after importing the package).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class FrozenGraph:
    graph_def_bytes: bytes
    input_tensor: str   # e.g. "image:0"
    output_tensor: str  # e.g. "probabilities:0"


def freeze_keras_model(model: Any, input_shape: tuple[int, ...]) -> FrozenGraph:
    """Trace the model, fold variables into constants and give the tensors stable names."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    spec = tf.TensorSpec((None, *input_shape), tf.float32, name=INPUT_NAME)

    @tf.function
    def serve(image):
        return {OUTPUT_NAME: tf.identity(model(image, training=False), name=OUTPUT_NAME)}

    concrete = serve.get_concrete_function(spec)
    frozen = convert_variables_to_constants_v2(concrete)
    graph_def = frozen.graph.as_graph_def()
    input_name = frozen.inputs[0].name
    output_name = frozen.outputs[0].name
    # Rename the traced placeholder/output to stable names that do not depend on tracing.
    graph_def = _rename_nodes(graph_def, {input_name.split(":")[0]: INPUT_NAME,
                                          output_name.split(":")[0]: OUTPUT_NAME})
    return FrozenGraph(graph_def.SerializeToString(), f"{INPUT_NAME}:0", f"{OUTPUT_NAME}:0")


def _rename_nodes(graph_def: Any, renames: dict[str, str]) -> Any:
    renames = {old: new for old, new in renames.items() if old != new}
    if not renames:
        return graph_def
    taken = {node.name for node in graph_def.node} - set(renames)
    clash = taken & set(renames.values())
    for node in graph_def.node:
        if node.name in clash:  # move an unrelated node out of the way of a stable name
            renames[node.name] = node.name + "_orig"
    for node in graph_def.node:
        node.name = renames.get(node.name, node.name)
        node.input[:] = [_renamed_input(name, renames) for name in node.input]
    return graph_def


def _renamed_input(name: str, renames: dict[str, str]) -> str:
    control = name.startswith("^")
    base, _, port = name.lstrip("^").partition(":")
    base = renames.get(base, base)
    return ("^" if control else "") + base + (f":{port}" if port else "")


def parse_graph_def(data: bytes) -> Any:
    """Parse serialized GraphDef bytes; ``ValueError`` if they are not a GraphDef."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except (DecodeError, RuntimeWarning) as exc:
        raise ValueError(f"not a GraphDef: {exc}") from None
    if not graph_def.node:
        raise ValueError("the GraphDef holds no nodes")
    return graph_def


def import_graph(graph_def: Any) -> Any:
    """Import a GraphDef into a fresh ``tf.Graph`` with no name prefix."""
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    return graph


def list_layers(graph: Any) -> list[dict[str, Any]]:
    """The compute ops of a graph with their output shapes (constants and identities left out)."""
    skip = {"Const", "Identity", "NoOp"}
    layers = []
    for op in graph.get_operations():
        if op.type in skip:
            continue
        shapes = [_shape_list(t.shape) for t in op.outputs]
        layers.append({"name": op.name, "op": op.type, "shape": shapes[0] if shapes else None})
    return layers


def _shape_list(shape: Any) -> list[int | None] | None:
    try:
        return [None if d is None else int(d) for d in shape.as_list()]
    except ValueError:  # unknown rank
        return None


def run_frozen(frozen: FrozenGraph, batch: np.ndarray) -> np.ndarray:
    """One-off ``session.run`` on a frozen graph (for verification, not for serving)."""
    import tensorflow as tf

    graph = import_graph(parse_graph_def(frozen.graph_def_bytes))
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(frozen.output_tensor, {frozen.input_tensor: batch})
