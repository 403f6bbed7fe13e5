"""Tiny models for tests: an iris-shaped ONNX classifier, one-layer BERTs over the MiniLM
vocabulary, built in milliseconds (nothing is downloaded). Importable from any test folder."""

from __future__ import annotations

from typing import Any


def tiny_bert_config(tokenizer: Any, labels: list[str] | None = None) -> Any:
    """A one-layer BERT over the MiniLM vocabulary: a few MB, loads in milliseconds."""
    from transformers import BertConfig

    extra: dict[str, Any] = {}
    if labels is not None:
        extra = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {label: i for i, label in enumerate(labels)},
        }
    return BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        initializer_range=0.5,  # random weights with visibly different scores per class
        **extra,
    )


def tiny_onnx(doc: str) -> bytes:
    """A real ONNX file with iris's signature: X FP32[-1,4] -> label INT64[-1], probabilities
    FP32[-1,3]. `doc` changes the digest, so each push stores its own artifact."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "w"], ["probabilities"]),
            helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
        ],
        "tiny",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3]),
        ],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 3], [0.1] * 12)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=doc)
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
