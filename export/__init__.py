"""Export: Janus checkpoints (HF or original deepseek-ai format) -> ONNX bundle. Needs torch + transformers."""
