"""Credentials for a run's storage, from Prefect blocks."""

from __future__ import annotations

from typing import Any, cast

from prefect.blocks.core import Block
from prefect.blocks.system import Secret


def resolve_storage_options(storage_options: dict[str, Any], secret_block: str | None,
                            storage_block: str | None = None) -> dict[str, Any]:
    """``storage_options`` with the credentials of Prefect blocks merged in.

    Parameters
    ----------
    storage_options : dict
        fsspec options given as a parameter (an endpoint, no secrets).
    secret_block : str or None
        Name of a ``Secret`` block holding a JSON object of storage options.
    storage_block : str or None
        ``<block type>/<name>`` of a prefect-aws block: ``aws-credentials/...``,
        ``minio-credentials/...`` or ``s3-bucket/...`` (its credentials). Its keys (or, with
        ``assume_role_arn``, the role's temporary keys, valid as long as STS grants them: an hour
        by default), region and ``aws_client_parameters`` (endpoint, TLS, botocore config)
        become s3fs options.

    Returns
    -------
    dict
        The options for :mod:`spectroflow.storage`: the block's over ``storage_options``, the
        secret's over both (``client_kwargs`` and ``config_kwargs`` are merged key by key).
    """
    options = dict(storage_options)

    def merge(extra: dict) -> None:
        for name in ("client_kwargs", "config_kwargs"):
            if name in extra:
                extra = {**extra, name: {**options.get(name, {}), **extra[name]}}
        options.update(extra)

    if storage_block:
        try:
            from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
        except ModuleNotFoundError as exc:
            raise ValueError(
                f"storage_block {storage_block!r} needs prefect-aws, which is not installed here: "
                "pip install 'spectroflow[aws]' (or prefect-aws)") from exc

        block = Block.load(storage_block)
        if isinstance(block, S3Bucket):
            block = block.credentials
        if not isinstance(block, AwsCredentials | MinIOCredentials):
            raise ValueError(
                f"storage_block {storage_block!r} is a {type(block).__name__}; expected an "
                "AwsCredentials, MinIOCredentials or S3Bucket block (e.g. 'aws-credentials/lab')")
        session = block.get_boto3_session()  # assumes the role, if the block names one
        client = block.aws_client_parameters
        extra: dict = {"client_kwargs": {
            name: value for name, value in
            [("region_name", session.region_name), ("endpoint_url", client.endpoint_url),
             ("use_ssl", client.use_ssl), ("api_version", client.api_version),
             ("verify", str(client.verify_cert_path) if client.verify_cert_path else client.verify)]
            if value is not None}}
        if client.config:
            extra["config_kwargs"] = dict(client.config)
        found = session.get_credentials()
        if found is not None:
            keys = found.get_frozen_credentials()
            extra |= {"key": keys.access_key, "secret": keys.secret_key}
            if keys.token:
                extra["token"] = keys.token
        merge(extra)
    if secret_block:
        secret = cast(Secret, Secret.load(secret_block)).get()
        if not isinstance(secret, dict):
            raise ValueError(f"Secret block {secret_block!r} must hold a JSON object of storage "
                             "options")
        merge(secret)
    return options
