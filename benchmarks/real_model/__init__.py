"""The real-model benchmark: llmframe against a local llama.cpp server (see README.md here)."""
