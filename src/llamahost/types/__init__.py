"""Plain data shared by every layer (requests, results, images, usage outcomes): no I/O
and no imports from the rest of the package, so anything may depend on it."""
