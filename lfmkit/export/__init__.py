"""Export to the edge runtimes: GGUF (llama.cpp, Ollama) and ONNX (ONNX Runtime).

`write_gguf(model, path, type=...)` / `load_gguf_model(path)` live in `gguf.py`;
`export_onnx(model, outdir, ...)` lives in `onnx.py`. Both refuse, with an `ExportError`
naming the field, what their format cannot express.
"""
