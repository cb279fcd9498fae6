"""The Ray Tune side of one trial: the trainable, its stoppers, its progress lines and its results row."""
