"""Turning featurizers into deployable artefacts (ONNX; TensorRT to come), with the checks that prove them."""
