"""Endpoint, region and credentials of an S3 store, read the way AWS tools read them. Pure.

In this order, each value from the first place that has it:

1. the environment: ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``; ``AWS_REGION``, else
   ``AWS_DEFAULT_REGION``; ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
   ``AWS_SESSION_TOKEN``;
2. the profile ``AWS_PROFILE`` (else ``default``) of the shared files:
   ``AWS_SHARED_CREDENTIALS_FILE`` (``~/.aws/credentials``) and ``AWS_CONFIG_FILE``
   (``~/.aws/config``, sections ``[profile NAME]``): ``aws_access_key_id``,
   ``aws_secret_access_key``, ``aws_session_token``, ``region``, ``endpoint_url``;
3. what the store library finds itself when neither gives keys: web identity
   (``AWS_WEB_IDENTITY_TOKEN_FILE``, as EKS sets it), the container endpoint
   (``AWS_CONTAINER_CREDENTIALS_*``, ECS), and the instance metadata service, which
   ``AWS_EC2_METADATA_DISABLED=true`` turns off as it does for the AWS CLI.

In Kubernetes the chart's Secret sets the variables of step 1.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

DEFAULT_REGION = "us-east-1"
#: Variables that let the library find credentials itself (web identity, containers).
AMBIENT_CREDENTIAL_ENV = ("AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                          "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


class NoCredentials(ValueError):
    """Nothing says how to sign requests and the metadata service is switched off."""


@dataclass(frozen=True)
class AwsSettings:
    """How to reach and sign for an S3 store."""

    endpoint: str | None = None
    region: str = DEFAULT_REGION
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    #: Where the keys came from ("environment", "profile NAME", "ambient"), for messages.
    source: str = "environment"

    @property
    def allow_http(self) -> bool:
        """A plain-HTTP endpoint (a store on loopback, in a cluster) is allowed when named."""
        return bool(self.endpoint and self.endpoint.startswith("http://"))


def read_text(path: str) -> str | None:
    """The file's text, None when it cannot be read (the shared files are optional)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return None


def aws_settings(environ: Mapping[str, str],
                 read: Callable[[str], str | None] = read_text) -> AwsSettings:
    """The settings from `environ` and the shared files `read` returns (see the module).

    Raises NoCredentials when no keys are found, no ambient source is configured and the
    metadata service is disabled.
    """
    def env(*names: str) -> str | None:
        for name in names:
            value = environ.get(name, "").strip()
            if value:
                return value
        return None

    profile_name = env("AWS_PROFILE", "AWS_DEFAULT_PROFILE") or "default"
    home = environ.get("HOME") or os.path.expanduser("~")
    profile = _profile(profile_name,
                       read(env("AWS_SHARED_CREDENTIALS_FILE") or f"{home}/.aws/credentials"),
                       read(env("AWS_CONFIG_FILE") or f"{home}/.aws/config"))
    key_id, secret = env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")
    source = "environment"
    token = env("AWS_SESSION_TOKEN")
    if not (key_id and secret) and profile.get("aws_access_key_id"):
        key_id, secret = profile.get("aws_access_key_id"), profile.get("aws_secret_access_key")
        token = profile.get("aws_session_token")
        source = f"profile {profile_name}"
    if not (key_id and secret):
        key_id = secret = token = None
        source = "ambient"
        if (not any(env(name) for name in AMBIENT_CREDENTIAL_ENV)
                and (env("AWS_EC2_METADATA_DISABLED") or "").lower() == "true"):
            raise NoCredentials(
                "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (in "
                "Kubernetes the chart's store Secret does), or AWS_PROFILE naming a profile "
                "with keys")
    return AwsSettings(
        endpoint=env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") or profile.get("endpoint_url"),
        region=env("AWS_REGION", "AWS_DEFAULT_REGION") or profile.get("region")
        or DEFAULT_REGION,
        access_key_id=key_id, secret_access_key=secret, session_token=token, source=source)


def _profile(name: str, credentials: str | None, config: str | None) -> dict[str, str]:
    """The profile's keys: the credentials file's ``[name]`` over the config file's
    ``[profile name]`` (``[default]`` there for the default profile)."""
    merged: dict[str, str] = {}
    section = name if name == "default" else f"profile {name}"
    for text, wanted in ((config, section), (credentials, name)):
        if not text:
            continue
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text)
        except configparser.Error:
            continue
        if parser.has_section(wanted):
            merged.update({k: v.strip() for k, v in parser.items(wanted) if v.strip()})
    return merged
