"""Start moto's server with the three fixes rekey's tests depend on.

Written against moto 5.2.5 (scripts/install-moto.sh pins it). Each patch closes a gap
between moto's auth enforcement and real AWS that would otherwise make a zero-downtime
test pass for the wrong reason or fail to see the error code at all.

Usage: python moto_launcher.py [moto_server args...]
"""

import sys

import moto
import moto.server
from moto.core import authorization as _authorization
from moto.core.exceptions import JsonRESTError, _RESTError
from moto.iam import access_control as _ac

_PATCHED = "rekey-testbed patches applied"


# 1. Real IAM rejects an Inactive key with InvalidClientTokenId; moto accepts it, which
#    would let a test "prove" deactivation is harmless when it is not.
_orig_user_key_init = _ac.IAMUserAccessKey.__init__


def _user_key_init(self, account_id, partition, access_key_id, headers):
    _orig_user_key_init(self, account_id, partition, access_key_id, headers)
    for user in self.backend.list_users("/", None, None):
        for key in user.access_keys:
            if key.access_key_id == access_key_id and key.status != "Active":
                raise _ac.CreateAccessKeyFailure(reason="InvalidId")


_ac.IAMUserAccessKey.__init__ = _user_key_init


# 2. Auth failures are raised in one XML shape for every service,
#    <ErrorResponse><Errors><Error>, which boto3 tolerates but the Rust SDK does not:
#    - JSON-protocol clients (Secrets Manager, ECS, SSM, CloudTrail, Lambda) look for a JSON
#      body or x-amzn-ErrorType and find neither;
#    - awsQuery clients (IAM, STS) look for <ErrorResponse><Error><Code> and miss the extra
#      <Errors> level.
#    Either way the SDK reports an unhandled error with no code, so code that branches on
#    InvalidClientTokenId never sees it. EC2's own protocol does use <Errors>; it is left alone.
_orig_normal_action = _authorization.ActionAuthenticatorMixin._authenticate_and_authorize_normal_action


def _protocol(resp):
    headers = resp.headers
    content_type = (headers.get("Content-Type", "") or "").lower()
    if "json" in content_type or headers.get("X-Amz-Target"):
        return "json"
    try:
        from moto.core.utils import get_service_model

        protocol = get_service_model(resp.boto3_service_name).metadata.get("protocol")
    except Exception:
        return None
    # rest-json GETs (Lambda) carry no body and no content type.
    return "json" if protocol in ("json", "rest-json") else protocol


def _query_error_body(err):
    from xml.sax.saxutils import escape

    from moto.moto_api._internal import mock_random

    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<ErrorResponse><Error><Type>Sender</Type>"
        f"<Code>{escape(err.error_type)}</Code><Message>{escape(err.message)}</Message>"
        f"</Error><RequestId>{mock_random.uuid4()}</RequestId></ErrorResponse>"
    )


def _normal_action(self, resource="*"):
    try:
        return _orig_normal_action(self, resource)
    except _RESTError as err:
        if isinstance(err, JsonRESTError):
            raise
        protocol = _protocol(self)
        if protocol == "json":
            json_err = err.to_json()
            # call_action keeps only body and status of an auth error but merges
            # response_headers, so the type header has to travel through there.
            self.response_headers["X-Amzn-ErrorType"] = json_err.relative_error_type
            self.response_headers["Content-Type"] = "application/json"
            raise json_err from err
        if protocol == "query":
            err.description = _query_error_body(err)
            self.response_headers["Content-Type"] = "text/xml"
        raise


_authorization.ActionAuthenticatorMixin._authenticate_and_authorize_normal_action = _normal_action


# 3. moto re-signs the request to compare signatures, but for a GET it signs the parsed
#    query parameters as if they were a body, so every signed Lambda GET fails.
def _create_aws_request(self):
    from botocore.awsrequest import AWSRequest

    signed_headers = self._get_string_between(
        "SignedHeaders=", ",", self._headers["Authorization"]
    ).split(";")
    headers = self._create_headers_for_aws_request(signed_headers, self._headers)
    if str(self._method).upper() in ("GET", "HEAD", "DELETE"):
        data = b""
    else:
        data = self._body or self._data
    request = AWSRequest(method=self._method, url=self._path, data=data, headers=headers)
    request.context["timestamp"] = headers["X-Amz-Date"]
    return request


_ac.IAMRequestBase._create_aws_request = _create_aws_request


if __name__ == "__main__":
    print(f"{_PATCHED} (moto {moto.__version__})", flush=True)
    moto.server.main(sys.argv[1:])
