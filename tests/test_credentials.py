"""Credentials from the blocks Prefect users keep them in (prefect-aws's AwsCredentials,
MinIOCredentials, S3Bucket), used by the flow on a moto server that checks them."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import pytest
from prefect.client.orchestration import get_client
from test_flow import flow_logs

from spectroflow.flows.spectrograms import spectrogram_flow
from spectroflow.orchestration.credentials import resolve_storage_options
from spectroflow.params import DaskSettings

from conftest import DATA, moto_server_checking_credentials

try:
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters
except ModuleNotFoundError:  # the aws extra is not installed
    AWS = False
else:
    AWS = True
needs_aws = pytest.mark.skipif(not AWS, reason="the aws extra: pip install -e '.[test,aws]'")

pytestmark = pytest.mark.slow
ONE_WAV = [str(sorted((DATA / "birdsongrec/Bird0/Wave").glob("*.wav"))[0])]
WRONG_SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYWRONGSECRET"
ONE_WORKER = DaskSettings(n_workers=1)


def _policy(action: str) -> str:
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": action, "Resource": "*"}]})


@dataclass
class Lab:
    """A moto server that checks credentials, and who may do what on it."""

    endpoint: str
    user: tuple[str, str]  #: keys that may only assume ``role``
    role: str  #: ARN of a role that may do anything on S3
    writer: tuple[str, str]  #: keys that may do anything on S3


@pytest.fixture
def iam_s3():
    """A moto server that checks credentials (IAM auth on), with the bucket "lab"; yields a
    :class:`Lab`.

    Its first nine requests go unchecked: they create the users, their keys and policies, the
    role, its policy and the bucket.
    """
    import boto3

    with moto_server_checking_credentials(unchecked=9) as url:
        bootstrap = dict(endpoint_url=url, region_name="us-east-1",
                         aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam = boto3.client("iam", **bootstrap)

        def user(name: str, action: str) -> tuple[str, str]:
            iam.create_user(UserName=name)
            created = iam.create_access_key(UserName=name)["AccessKey"]
            iam.put_user_policy(UserName=name, PolicyName=action, PolicyDocument=_policy(action))
            return created["AccessKeyId"], created["SecretAccessKey"]

        lab, writer = user("lab", "sts:AssumeRole"), user("writer", "s3:*")
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]}
        role = iam.create_role(RoleName="writer", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        iam.put_role_policy(RoleName="writer", PolicyName="s3", PolicyDocument=_policy("s3:*"))
        boto3.client("s3", **bootstrap).create_bucket(Bucket="lab")
        yield Lab(url, lab, role["Arn"], writer)


def assert_secret_hidden(state, secret: str) -> None:
    """``secret`` is in none of the run's parameters, state message, result or logs."""
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert secret not in json.dumps(run.parameters) and secret not in (state.message or "")
    assert secret not in repr(state.result(raise_on_failure=False))
    messages = flow_logs(state.state_details.flow_run_id)
    assert messages and all(secret not in m for m in messages)


@needs_aws
def test_a_block_becomes_s3fs_options_merged_over_the_parameters(prefect_api):
    AwsCredentials(
        aws_access_key_id="AKIAEXAMPLE", aws_secret_access_key="example-secret",
        aws_session_token="example-token", region_name="eu-west-3",
        aws_client_parameters=AwsClientParameters(
            endpoint_url="https://s3.example.org", verify=False,
            config={"retries": {"max_attempts": 2}}),
    ).save("example", overwrite=True)
    options = resolve_storage_options(
        {"client_kwargs": {"endpoint_url": "https://old.example.org", "proxies": {}},
         "skip_instance_cache": True},
        None, "aws-credentials/example")
    assert options == {
        "key": "AKIAEXAMPLE", "secret": "example-secret", "token": "example-token",
        "client_kwargs": {"endpoint_url": "https://s3.example.org", "proxies": {},
                          "region_name": "eu-west-3", "use_ssl": True, "verify": False},
        "config_kwargs": {"retries": {"max_attempts": 2}},
        "skip_instance_cache": True,
    }


@needs_aws
def test_a_block_of_another_type_is_refused_naming_the_types_expected(prefect_api):
    from prefect.blocks.system import Secret

    Secret(value={"key": "k"}).save("not-aws", overwrite=True)
    with pytest.raises(ValueError, match="is a Secret; expected an AwsCredentials, MinIO"):
        resolve_storage_options({}, None, "secret/not-aws")


def assert_writes_one(destination: str, storage_block: str, secret: str) -> None:
    """A run with ``storage_block`` writes its one recording, and its secret shows nowhere."""
    state = spectrogram_flow(source=ONE_WAV, destination=destination, storage_block=storage_block,
                             dask=ONE_WORKER, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 1}
    assert_secret_hidden(state, secret)


@needs_aws
def test_aws_credentials_block_writes_and_wrong_keys_fail_as_credentials(prefect_api, iam_s3,
                                                                          monkeypatch):
    (key, secret), client = iam_s3.user, AwsClientParameters(endpoint_url=iam_s3.endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", iam_s3.endpoint)  # for the role's STS call only
    AwsCredentials(aws_access_key_id=key, aws_secret_access_key=secret, region_name="us-east-1",
                   assume_role_arn=iam_s3.role, aws_client_parameters=client,
                   ).save("lab-writer", overwrite=True)
    assert_writes_one("s3://lab/role", "aws-credentials/lab-writer", secret)

    # The user's own keys may not write: the run above wrote with the role's.
    AwsCredentials(aws_access_key_id=key, aws_secret_access_key=secret,
                   aws_client_parameters=client).save("lab-user", overwrite=True)
    state = spectrogram_flow(source=ONE_WAV, destination="s3://lab/user",
                             storage_block="aws-credentials/lab-user", return_state=True)
    assert state.is_failed() and "Access Denied" in (state.message or ""), state.message

    AwsCredentials(aws_access_key_id="AKIAWRONGWRONGWRONG", aws_secret_access_key=WRONG_SECRET,
                   aws_client_parameters=client).save("lab-wrong", overwrite=True)
    state = spectrogram_flow(source=ONE_WAV, destination="s3://lab/wrong",
                             storage_block="aws-credentials/lab-wrong", return_state=True)
    assert state.is_failed(), state.message
    assert "Access Key Id you provided does not exist" in (state.message or ""), state.message
    assert_secret_hidden(state, WRONG_SECRET)


@needs_aws
def test_minio_credentials_and_s3_bucket_blocks_with_their_endpoint_write(prefect_api, iam_s3):
    (key, secret), client = iam_s3.writer, AwsClientParameters(endpoint_url=iam_s3.endpoint)
    minio = MinIOCredentials(minio_root_user=key, minio_root_password=secret,
                             aws_client_parameters=client)
    minio.save("lab", overwrite=True)
    assert_writes_one("s3://lab/minio", "minio-credentials/lab", secret)

    S3Bucket(bucket_name="lab", credentials=minio).save("lab", overwrite=True)
    state = spectrogram_flow(source=ONE_WAV, destination="s3://lab/bucket",
                             storage_block="s3-bucket/lab", dask=ONE_WORKER, return_state=True)
    assert state.is_completed(), state.message
    assert state.result()["counts"] == {"written": 1}


def test_a_block_without_the_aws_extra_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prefect_aws", None)  # as if not installed
    with pytest.raises(ValueError, match=r"'aws-credentials/lab' needs prefect-aws.*spectroflow\[aws\]"):
        resolve_storage_options({}, None, "aws-credentials/lab")
