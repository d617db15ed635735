"""S3 settings read as AWS tools read them: environment first, then the profile."""

from __future__ import annotations

import pytest

from topology.jobs.aws import NoCredentials, aws_settings

CREDENTIALS = """
[default]
aws_access_key_id = DEFAULTKEY
aws_secret_access_key = defaultsecret

[work]
aws_access_key_id = WORKKEY
aws_secret_access_key = worksecret
"""
CONFIG = """
[profile work]
region = eu-west-3
endpoint_url = http://127.0.0.1:9000
"""


def files(mapping: dict[str, str]):
    return lambda path: mapping.get(path)


def test_environment_gives_endpoint_region_and_keys() -> None:
    settings = aws_settings({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:1", "AWS_ENDPOINT_URL":
                             "http://other", "AWS_REGION": "eu-north-1",
                             "AWS_ACCESS_KEY_ID": "K", "AWS_SECRET_ACCESS_KEY": "S",
                             "HOME": "/nowhere"}, files({}))
    assert settings.endpoint == "http://127.0.0.1:1"  # the S3-specific one wins
    assert (settings.region, settings.access_key_id, settings.secret_access_key) == (
        "eu-north-1", "K", "S")
    assert settings.allow_http and settings.source == "environment"


def test_profile_from_the_shared_files_fills_what_the_environment_lacks() -> None:
    settings = aws_settings({"AWS_PROFILE": "work", "HOME": "/h"},
                            files({"/h/.aws/credentials": CREDENTIALS,
                                   "/h/.aws/config": CONFIG}))
    assert (settings.access_key_id, settings.region, settings.endpoint) == (
        "WORKKEY", "eu-west-3", "http://127.0.0.1:9000")
    assert settings.source == "profile work"
    default = aws_settings({"HOME": "/h"}, files({"/h/.aws/credentials": CREDENTIALS}))
    assert default.access_key_id == "DEFAULTKEY" and default.region == "us-east-1"


def test_named_files_replace_the_home_ones() -> None:
    settings = aws_settings({"AWS_SHARED_CREDENTIALS_FILE": "/etc/creds", "HOME": "/h"},
                            files({"/etc/creds": CREDENTIALS}))
    assert settings.access_key_id == "DEFAULTKEY"


def test_no_keys_leave_signing_to_ambient_sources_unless_metadata_is_disabled() -> None:
    ambient = aws_settings({"HOME": "/h", "AWS_WEB_IDENTITY_TOKEN_FILE": "/var/token"}, files({}))
    assert ambient.access_key_id is None and ambient.source == "ambient"
    with pytest.raises(NoCredentials, match="AWS_ACCESS_KEY_ID"):
        aws_settings({"HOME": "/h", "AWS_EC2_METADATA_DISABLED": "true"}, files({}))
