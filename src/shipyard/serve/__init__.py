"""The inference server: protocols over one dataplane, batching, hot swap, workers."""
