"""The module layer: resolve a handle into a verified local folder, load it, inspect it."""
