"""Uploads and files: the Llama API's resumable upload protocol, files sealed at rest in
chunks (database or S3), and dataset checks at completion. A vertical slice: protocol
(wire models), service, storage (the chunk stores), datasets, router (``attach``)."""
