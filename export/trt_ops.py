"""What TensorRT 10.3's ONNX parser takes: the op table `lint-trt` checks every bundle against (data, no logic).

Source: onnx-tensorrt `docs/operators.md` of the 10.x line, branch `10.1-GA` (commit 96e7811, "ONNX-TensorRT 10.1 GA
release"; its header reads "TensorRT 10.0 supports operators in the inclusive range of opset 9 to opset 20"), with the
parser changes of 10.2 and 10.3 from onnx-tensorrt's `docs/Changelog.md` applied:
  10.2 GA (2024-7-10): error handling, GRU/Squeeze importer changes (no table change);
  10.3 GA (2024-8-7):  `Slice` takes tensor `axes` inputs (the "`axes` must be an initializer" note is dropped).
10.3 is the floor the project supports (JetPack 6.1/6.2 on Orin). Ops the parser gained after 10.3 are in LATER with
the first version that parses them (from the same changelog, 10.4 ... 10.15): a bundle using one is flagged with it.

Types use the table's short names (FP32, FP16, BF16, FP8, INT4, INT8, UINT8, INT32, INT64, BOOL).
"""
from __future__ import annotations

SOURCE = ("onnx/onnx-tensorrt docs/operators.md @ 10.1-GA (96e7811) + docs/Changelog.md entries 10.2 GA, 10.3 GA; "
          "TensorRT 10.3")
TRT_VERSION = "10.3"
OPSET_MIN, OPSET_MAX = 9, 20  # the documented range; see OPSET_PARSED
# The parser rejects only opsets < 7 (ModelImporter.cpp) and reads Q/DQ block quantization from the scale's shape,
# not from opset 21's `block_size` attribute: opset 21 graphs (the INT4 DequantizeLinear form, GPU_FACTS.md) parse.
# lint-trt warns for opset 21 and refuses anything above it.
OPSET_PARSED = 21

# INT4 block quantization as the parser imports it (onnx-tensorrt QuantDequantLinearHelper, 10.1-GA 96e7811, the
# importer 10.2/10.3 left unchanged in the changelog): the block is inferred from the shapes (scale rank == weight
# rank, exactly one dim blocked, by a whole block), scales must be positive constants, the zero point all zeros,
# INT4 weights need an even last dim, and the DequantizeLayer's output type is the scale's type (so an FP32 scale
# makes an FP32 weight-only GEMM). TensorRT's "Working with Quantized Types": INT4 is weight-only, block sizes 64 and
# 128, the block on one of the last two dims.
INT4_BLOCKS = (64, 128)

# ONNX TensorProto element types -> the table's names (None: not a TensorRT type at all).
ONNX_TYPES: dict[int, str | None] = {
    1: "FP32", 2: "UINT8", 3: "INT8", 4: None, 5: None, 6: "INT32", 7: "INT64", 8: None, 9: "BOOL", 10: "FP16",
    11: "DOUBLE", 12: None, 13: None, 14: None, 15: None, 16: "BF16", 17: "FP8", 18: None, 19: None, 20: None,
    21: None, 22: "INT4",
}
QUANTIZED_TYPES = frozenset({"INT8", "FP8", "INT4"})  # what Q/DQ may produce or take (UINT8: refused)
IO_TYPES = frozenset({"FP32", "FP16", "BF16", "INT32", "INT64", "INT8", "UINT8", "BOOL", "FP8"})  # engine I/O

# Ops TensorRT parses only from a later version than 10.3 (onnx-tensorrt Changelog.md).
LATER: dict[str, str] = {
    "BlackmanWindow": "10.4", "HammingWindow": "10.4", "HannWindow": "10.4", "STFT": "10.5", "Attention": "10.14",
    "RotaryEmbedding": "10.15", "RMSNormalization": "10.15", "TensorScatter": "10.15",
}

# Inputs that must be build-time constants (initializer or Constant node), per the table's restrictions column.
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSum", "ReduceSumSquare")
CONST_INPUTS: dict[str, tuple[int, ...]] = {
    "CumSum": (1,), "Pad": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "TopK": (1,), "OneHot": (1,), "Dropout": (2,),
    **{op: (1,) for op in REDUCE_OPS},
}
TOPK_MAX = 3839  # "`K` input must be less than 3840"

# Inputs whose type the table's types column describes; others are indices, shapes, axes, conditions (int64/bool).
# Ops not listed: every input.
DATA_INPUTS: dict[str, tuple[int, ...]] = {
    "Resize": (0,), "Upsample": (0,), "Slice": (0,), "Pad": (0,), "Reshape": (0,), "Expand": (0,), "Tile": (0,),
    "TopK": (0,), "Gather": (0,), "GatherElements": (0,), "GatherND": (0,), "Squeeze": (0,), "Unsqueeze": (0,),
    "Split": (0,), "CumSum": (0,), "ScatterND": (0, 2), "ScatterElements": (0, 2), "Scatter": (0, 2),
    "Where": (1, 2), "Clip": (0,), "QuantizeLinear": (0,), "DequantizeLinear": (0,), "OneHot": (2,), "Trilu": (0,),
    "Dropout": (0,), "ConstantOfShape": (), "Range": (0, 1, 2), "Pow": (0,), "Einsum": (0, 1),
    "LayerNormalization": (0,), "GroupNormalization": (0,), "Cast": (0,), "CastLike": (0,), "Shape": (0,),
    "Size": (0,), "EyeLike": (0,), "Flatten": (0,), "Identity": (0,), "Transpose": (0,), "DepthToSpace": (0,),
    "SpaceToDepth": (0,), "ReverseSequence": (0,), "NonZero": (0,), "If": (), "Loop": (), "Scan": (),
    **{op: (0,) for op in REDUCE_OPS},
}
RESIZE_MODES = frozenset({"nearest", "linear"})
RESIZE_COORDS = frozenset({"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"})
RESIZE_NEAREST = frozenset({"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"})

SUPPORTED: dict[str, str] = {  # op -> data types (the table's "Supported Types" column)
    "Abs": "FP32 FP16 BF16 INT32 INT64",
    "Acos": "FP32 FP16 BF16",
    "Acosh": "FP32 FP16 BF16",
    "Add": "FP32 FP16 BF16 INT32 INT64",
    "And": "BOOL",
    "ArgMax": "FP32 FP16 BF16 INT32 INT64",
    "ArgMin": "FP32 FP16 BF16 INT32 INT64",
    "Asin": "FP32 FP16 BF16",
    "Asinh": "FP32 FP16 BF16",
    "Atan": "FP32 FP16 BF16",
    "Atanh": "FP32 FP16 BF16",
    "AveragePool": "FP32 FP16 BF16",
    "BatchNormalization": "FP32 FP16 BF16",
    "Cast": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "CastLike": "FP32 FP16 BF16 INT32 INT64 UINT8 BOOL",
    "Ceil": "FP32 FP16 BF16",
    "Celu": "FP32 FP16 BF16",
    "Clip": "FP32 FP16 BF16",
    "Concat": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Constant": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ConstantOfShape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Conv": "FP32 FP16 BF16",
    "ConvTranspose": "FP32 FP16 BF16",
    "Cos": "FP32 FP16 BF16",
    "Cosh": "FP32 FP16 BF16",
    "CumSum": "FP32 FP16 BF16",
    "DeformConv": "FP32 FP16",
    "DepthToSpace": "FP32 FP16 BF16 INT32 INT64",
    "DequantizeLinear": "INT8 FP8 INT4",
    "Div": "FP32 FP16 BF16 INT32 INT64",
    "Dropout": "FP32 FP16 BF16",
    "Einsum": "FP32 FP16 BF16",
    "Elu": "FP32 FP16 BF16",
    "Equal": "FP32 FP16 BF16 INT32 INT64",
    "Erf": "FP32 FP16 BF16",
    "Exp": "FP32 FP16 BF16",
    "Expand": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "EyeLike": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Flatten": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Floor": "FP32 FP16 BF16",
    "GRU": "FP32 FP16 BF16",
    "Gather": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherElements": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "GatherND": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Gelu": "FP32 FP16 BF16 INT8 INT32 INT64",
    "Gemm": "FP32 FP16 BF16",
    "GlobalAveragePool": "FP32 FP16 BF16",
    "GlobalLpPool": "FP32 FP16 BF16",
    "GlobalMaxPool": "FP32 FP16 BF16",
    "Greater": "FP32 FP16 BF16 INT32 INT64",
    "GreaterOrEqual": "FP32 FP16 BF16 INT32 INT64",
    "GridSample": "FP32 FP16",
    "GroupNormalization": "FP32 FP16 BF16",
    "HardSigmoid": "FP32 FP16 BF16",
    "HardSwish": "FP32 FP16 BF16",
    "Hardmax": "FP32 FP16 BF16",
    "Identity": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "If": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "ImageScaler": "FP32 FP16 BF16",
    "InstanceNormalization": "FP32 FP16 BF16",
    "IsInf": "FP32 FP16 BF16",
    "IsNaN": "FP32 FP16 BF16 INT32 INT64",
    "LRN": "FP32 FP16 BF16",
    "LSTM": "FP32 FP16 BF16",
    "LayerNormalization": "FP32 FP16 BF16",
    "LeakyRelu": "FP32 FP16 BF16",
    "Less": "FP32 FP16 BF16 INT32 INT64",
    "LessOrEqual": "FP32 FP16 BF16 INT32 INT64",
    "Log": "FP32 FP16 BF16",
    "LogSoftmax": "FP32 FP16 BF16",
    "Loop": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "LpNormalization": "FP32 FP16 BF16",
    "LpPool": "FP32 FP16 BF16",
    "MatMul": "FP32 FP16 BF16",
    "Max": "FP32 FP16 BF16 INT32 INT64",
    "MaxPool": "FP32 FP16 BF16",
    "Mean": "FP32 FP16 BF16 FP8 INT32 INT64",
    "MeanVarianceNormalization": "FP32 FP16 BF16",
    "Min": "FP32 FP16 BF16 INT32 INT64",
    "Mish": "FP32 FP16",
    "Mod": "FP32 FP16 BF16 INT32 INT64",
    "Mul": "FP32 FP16 BF16 INT32 INT64",
    "Neg": "FP32 FP16 BF16 INT32 INT64",
    "NonMaxSuppression": "FP32 FP16",
    "NonZero": "FP32 FP16",
    "Not": "BOOL",
    "OneHot": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Or": "BOOL",
    "PRelu": "FP32 FP16 BF16",
    "Pad": "FP32 FP16 BF16 INT32 INT64",
    "ParametricSoftplus": "FP32 FP16 BF16",
    "Pow": "FP32 FP16 BF16",
    "QuantizeLinear": "FP32 FP16 BF16",
    "RNN": "FP32 FP16 BF16",
    "RandomNormal": "FP32 FP16 BF16",
    "RandomNormalLike": "FP32 FP16 BF16",
    "RandomUniform": "FP32 FP16 BF16",
    "RandomUniformLike": "FP32 FP16 BF16",
    "Range": "FP32 FP16 BF16 INT32 INT64",
    "Reciprocal": "FP32 FP16 BF16",
    "ReduceL1": "FP32 FP16 BF16 INT32 INT64",
    "ReduceL2": "FP32 FP16 BF16 INT32 INT64",
    "ReduceLogSum": "FP32 FP16 BF16 INT32 INT64",
    "ReduceLogSumExp": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMax": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMean": "FP32 FP16 BF16 INT32 INT64",
    "ReduceMin": "FP32 FP16 BF16 INT32 INT64",
    "ReduceProd": "FP32 FP16 BF16 INT32 INT64",
    "ReduceSum": "FP32 FP16 BF16 INT32 INT64",
    "ReduceSumSquare": "FP32 FP16 BF16 INT32 INT64",
    "Relu": "FP32 FP16 BF16 INT32 INT64",
    "Reshape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Resize": "FP32 FP16 BF16",
    "ReverseSequence": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "RoiAlign": "FP32 FP16",
    "Round": "FP32 FP16 BF16",
    "ScaledTanh": "FP32 FP16 BF16",
    "Scan": "FP32 FP16 BF16",
    "Scatter": "FP32 FP16 BF16 INT32 INT64",
    "ScatterElements": "FP32 FP16 BF16 INT32 INT64",
    "ScatterND": "FP32 FP16 BF16 INT32 INT64",
    "Selu": "FP32 FP16 BF16",
    "Shape": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Shrink": "FP32 FP16 BF16 INT32 INT64",
    "Sigmoid": "FP32 FP16 BF16",
    "Sign": "FP32 FP16 BF16 INT32 INT64",
    "Sin": "FP32 FP16 BF16",
    "Sinh": "FP32 FP16 BF16",
    "Size": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Slice": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Softmax": "FP32 FP16 BF16",
    "Softplus": "FP32 FP16 BF16",
    "Softsign": "FP32 FP16 BF16",
    "SpaceToDepth": "FP32 FP16 BF16 INT32 INT64",
    "Split": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Sqrt": "FP32 FP16 BF16",
    "Squeeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Sub": "FP32 FP16 BF16 INT32 INT64",
    "Sum": "FP32 FP16 BF16 INT32 INT64",
    "Tan": "FP32 FP16 BF16",
    "Tanh": "FP32 FP16 BF16",
    "ThresholdedRelu": "FP32 FP16 BF16",
    "Tile": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "TopK": "FP32 FP16 BF16 INT32 INT64",
    "Transpose": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Trilu": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Unsqueeze": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Upsample": "FP32 FP16 BF16",
    "Where": "FP32 FP16 BF16 INT32 INT64 BOOL",
    "Xor": "BOOL",
}

UNSUPPORTED: frozenset[str] = frozenset({  # "N" rows of the table
    "AffineGrid", "Bernoulli", "BitShift", "BitwiseAnd", "BitwiseNot", "BitwiseOr", "BitwiseXor", "BlackmanWindow",
    "CenterCropPad", "Col2Im", "Compress", "ConcatFromSequence", "ConvInteger", "DFT", "Det", "DynamicQuantizeLinear",
    "HammingWindow", "HannWindow", "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "MelWeightMatrix",
    "Multinomial", "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement", "QLinearConv",
    "QLinearMatMul", "RegexFullMatch", "STFT", "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceErase",
    "SequenceInsert", "SequenceLength", "SequenceMap", "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat",
    "StringNormalizer", "StringSplit", "TfIdfVectorizer", "Unique",
})
