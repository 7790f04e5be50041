"""Images in: an upload checked and decoded into the model's uint8 input."""
