"""Serving runtimes: ONNX Runtime / OpenVINO export and parity (`runtimes`), the swap (`swap`), auto and int8 (`choice`)."""
