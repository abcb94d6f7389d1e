"""Engine wiring only: each file calls ``transforms`` on batches and ``connectors`` for IO."""
