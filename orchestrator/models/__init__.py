"""Models: the backends that answer prompts, and the engines behind them.

backends.py (the ``Backend`` interface with declared capabilities: local (transformers), replay,
openai-compatible, vllm), engine.py (a managed vLLM server), embedded_model.py (the default CPU model),
gpu.py (the GPU profile), hub.py (base models from the local Hugging Face cache), harmony.py
(gpt-oss replies).
"""
