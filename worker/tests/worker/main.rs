//! Worker integration tests: executors against a model-server double.
