"""Runtime: runs a bundle (prompting, CFG batching, KV cache, sampling, decode loop, chat). No torch here."""
