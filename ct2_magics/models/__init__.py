"""Models: turning smollm2, a path, a .gguf or a Hub repo id into a local CTranslate2 model; conversion; tokenizer files."""
