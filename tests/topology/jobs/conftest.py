"""The jobs tests' fixtures: the session's real S3 server (SeaweedFS) and its environment."""

from store_fixtures import s3_env, s3_server  # noqa: F401  (fixtures)
