"""The model a shard serves: the classifier, which model is active, the embedded default, its checkpoint reader and the stand-in."""
