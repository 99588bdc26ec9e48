"""The core: the model's owner, the engine, chats, replies, batches, options, settings and the prompt cache."""
