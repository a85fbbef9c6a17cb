"""Start moto's server with the fixes rekey's tests depend on.

Written against moto 5.2.5 (scripts/install-moto.sh pins it). Each patch closes a gap
between moto's auth enforcement and real AWS that would otherwise make a zero-downtime
test pass for the wrong reason or fail to see the error code at all: inactive keys,
auth error shapes, Lambda GET signatures, IAM condition evaluation (patch 5, which
also lets a test choose its caller's aws:SourceIp with an X-Forwarded-For header),
user-scoped IAM resources with policy variables (patch 10), CloudTrail LookupEvents with AWS's
paging and rate limit over a seeded history (patch 11), IAM's eventual consistency (patch 12: a
new, deactivated or reactivated key is seen by each of N hosts at its own moment), login
profiles' own creation dates (patch 13) and atomic DynamoDB conditional writes (patch 14).

Usage: python moto_launcher.py [moto_server args...]
"""

import contextvars
import datetime
import ipaddress
import re
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


# 5. moto evaluates policy conditions only for trust policies, and only StringEquals: every other
#    operator is ignored (the condition "holds"), and a statement whose condition fails is
#    DENIED, Allow or Deny alike. The incident fence (Deny unless NotIpAddress aws:SourceIp ours,
#    StringNotEqualsIfExists aws:SourceVpc/aws:SourceVpce ours, Bool aws:ViaAWSService false)
#    and the session revocation (Deny if DateLessThan aws:TokenIssueTime T) then deny
#    everything, the application included, so no test could show that the attacker is locked
#    out while the app keeps working. This patch evaluates conditions the way IAM does for
#    String(Not)Equals, String(Not)Like, (Not)IpAddress, Date{Less,Greater}Than[Equals], Bool
#    and Null, each ...IfExists too (not Null), against a request context built per request:
#    - aws:SourceIp: the client address, or the FIRST address of an X-Forwarded-For header.
#      Tests send that header to call from any IP (the attacker's 198.51.100.50) over loopback;
#      real AWS ignores it, so it must never stand in for anything but a test's caller IP;
#    - aws:TokenIssueTime: for an AssumeRole session, moto's creation time of its ASIA key;
#      absent for long-term AKIA keys (as in AWS);
#    - aws:ViaAWSService "false"; aws:SourceVpc/aws:SourceVpce absent (no VPC endpoints);
#    - aws:username (users only), aws:userid, aws:PrincipalArn (the role ARN for a session),
#      aws:PrincipalAccount, aws:PrincipalType, aws:RequestedRegion, aws:CurrentTime,
#      aws:EpochTime; sts:ExternalId for AssumeRole, as moto already passes it (an AssumeRole
#      without one now fails a trust policy's StringEquals on it, as in AWS; moto let it in).
#    A missing key makes a condition false, except ...IfExists (true) and Null, and a negated
#    operator (StringNotEquals, StringNotLike, NotIpAddress) on a missing key is true (IAM User
#    Guide, "Condition operators"). Policy values are ORed; keys and operators are ANDed.
#    Unknown operators (Numeric*, Arn*, ForAnyValue:..., ...) stay ignored, as in moto.
#    A statement whose condition does not hold is NEUTRAL: it neither allows nor denies.
#    GetCallerIdentity stays always allowed (moto and AWS agree). Bucket policies evaluated
#    outside an authorised request keep moto's own condition check.
_REQUEST_CONTEXT: contextvars.ContextVar = contextvars.ContextVar(
    "rekey_request_context", default=None
)
_UTC = datetime.timezone.utc


def _source_ip(headers):
    forwarded = headers.get("X-Forwarded-For") if headers is not None else None
    if forwarded and forwarded.split(",")[0].strip():
        return forwarded.split(",")[0].strip()
    # moto hands the request's werkzeug EnvironHeaders over as `headers`.
    return (getattr(headers, "environ", None) or {}).get("REMOTE_ADDR")


def _iso(moment):
    if moment.tzinfo is None:  # moto keeps naive UTC datetimes
        moment = moment.replace(tzinfo=_UTC)
    return moment.astimezone(_UTC).isoformat().replace("+00:00", "Z")


def _principal_context(request):
    key = request._access_key
    partition = getattr(key, "partition", "aws")
    ctx = {"aws:principalaccount": request.account_id}
    if isinstance(key, _ac.AssumedRoleAccessKey):
        from moto.sts.models import sts_backends

        session = sts_backends[request.account_id][partition].get_assumed_role_from_access_key(
            key._access_key_id
        )
        ctx["aws:principaltype"] = "AssumedRole"
        if session is not None:
            ctx["aws:principalarn"] = session.role_arn
            ctx["aws:userid"] = session.user_id
            created = getattr(session.access_key, "create_date", None)
            if created is not None:
                ctx["aws:tokenissuetime"] = _iso(created)
    else:
        user = request.backend.get_user(key._owner_user_name)
        ctx.update(
            {
                "aws:principaltype": "User",
                "aws:principalarn": user.arn,
                "aws:username": user.name,
                "aws:userid": user.id,
            }
        )
    return ctx


def _request_context(request):
    now = datetime.datetime.now(_UTC).replace(microsecond=0)
    ctx = {
        "aws:viaawsservice": "false",
        "aws:requestedregion": request._region,
        "aws:currenttime": _iso(now),
        "aws:epochtime": str(int(now.timestamp())),
    }
    source_ip = _source_ip(request._headers)
    if source_ip:
        ctx["aws:sourceip"] = source_ip
    try:
        ctx.update(_principal_context(request))
    except Exception:  # an identity moto cannot resolve simply has no principal keys
        pass
    return ctx


_orig_check_action_permitted = _ac.IAMRequestBase.check_action_permitted


def _check_action_permitted(self, resource):
    # The trust-policy check runs inside this call too, so it sees the same context.
    ctx = _request_context(self)
    token = _REQUEST_CONTEXT.set(ctx)
    try:
        return _orig_check_action_permitted(self, _iam_user_resource(self, resource, ctx))
    finally:
        _REQUEST_CONTEXT.reset(token)


def _policy_values(value):
    values = value if isinstance(value, list) else [value]
    return ["true" if v is True else "false" if v is False else str(v) for v in values]


def _glob(actual, pattern):
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, actual, re.DOTALL) is not None


def _in_network(actual, cidr):
    try:
        return ipaddress.ip_address(actual) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def _parse_date(text):
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):  # IAM also accepts epoch seconds
        return datetime.datetime.fromtimestamp(int(text), _UTC)
    moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=_UTC)


def _date_matcher(compare):
    def match(actual, expected):
        try:
            return compare(_parse_date(actual), _parse_date(expected))
        except ValueError:
            return False

    return match


_MATCHERS = {
    "StringEquals": lambda actual, expected: actual == expected,
    "StringLike": _glob,
    "IpAddress": _in_network,
    "DateLessThan": _date_matcher(lambda a, e: a < e),
    "DateLessThanEquals": _date_matcher(lambda a, e: a <= e),
    "DateGreaterThan": _date_matcher(lambda a, e: a > e),
    "DateGreaterThanEquals": _date_matcher(lambda a, e: a >= e),
    "Bool": lambda actual, expected: actual.lower() == expected.lower(),
}
_NEGATED = {
    "StringNotEquals": "StringEquals",
    "StringNotLike": "StringLike",
    "NotIpAddress": "IpAddress",
}


def _operator_holds(operator, keys, ctx):
    """True or False; None for an operator this patch does not know (moto ignores those)."""
    if_exists = operator.endswith("IfExists")
    base = operator[: -len("IfExists")] if if_exists else operator
    if base == "Null":
        if if_exists:
            return None
        return all(
            ("true" in [v.lower() for v in _policy_values(expected)]) == (key.lower() not in ctx)
            for key, expected in keys.items()
        )
    matcher = _MATCHERS.get(_NEGATED.get(base, base))
    if matcher is None:
        return None
    negated = base in _NEGATED
    for key, expected in keys.items():
        actual = ctx.get(key.lower())
        if actual is None:
            if if_exists or negated:
                continue
            return False
        if any(matcher(actual, v) for v in _policy_values(expected)) == negated:
            return False
    return True


_orig_check_conditions = _ac.IAMPolicyStatement._check_conditions


def _check_conditions(self, incoming_condition_values):
    ctx = _REQUEST_CONTEXT.get()
    if ctx is None:
        return _orig_check_conditions(self, incoming_condition_values)
    conditions = self._statement.get("Condition")
    if not isinstance(conditions, dict):
        return True
    ctx = dict(ctx)
    ctx.update({k.lower(): v for k, v in (incoming_condition_values or {}).items()})
    for operator, keys in conditions.items():
        if isinstance(keys, dict) and _operator_holds(operator, keys, ctx) is False:
            return False
    return True


def _statement_is_action_permitted(
    self, action, resource="*", principal=None, incoming_condition_values=None
):
    # moto's IAMPolicyStatement.is_action_permitted, except that a failed condition is NEUTRAL.
    if "NotAction" in self._statement:
        concerned = not self._check_element_matches("NotAction", action)
    else:
        concerned = self._check_element_matches("Action", action)
    if not concerned:
        return _ac.PermissionResult.NEUTRAL
    if self.is_unknown_principal(self._statement.get("Principal")):
        return _ac.PermissionResult.NEUTRAL
    if principal and not self._check_principal(principal):
        return _ac.PermissionResult.DENIED
    if not self._check_conditions(incoming_condition_values):
        return _ac.PermissionResult.NEUTRAL
    # Trust policies have no Resource: the statement decides on its own.
    if not self._statement.get("Resource"):
        return _ac.PermissionResult.PERMITTED
    if not self._check_element_matches("Resource", resource):
        return _ac.PermissionResult.NEUTRAL
    if self._statement["Effect"] == "Allow":
        return _ac.PermissionResult.PERMITTED
    return _ac.PermissionResult.DENIED


# 10. IAM scopes its user actions to the user's ARN and substitutes policy variables; moto
#    authorizes every IAM call against "*" and matches `${aws:username}` literally, so a
#    self-service policy (`"Resource": "arn:aws:iam::*:user/${aws:username}"`) allows
#    nothing and a test of `rekey rotate --self` under it could not run. This gives the
#    calls that name a user (or act on the caller when `UserName` is left out, as IAM's key
#    actions do) the user's ARN as their resource, and substitutes the variables IAM knows
#    from the request context. Statements with `"Resource": "*"` match as before.
_CALLER_DEFAULT_ACTIONS = {
    "iam:CreateAccessKey",
    "iam:UpdateAccessKey",
    "iam:DeleteAccessKey",
    "iam:ListAccessKeys",
    "iam:GetUser",
    "iam:GetAccessKeyLastUsed",
}
_POLICY_VARIABLE = re.compile(r"\$\{([A-Za-z0-9:_-]+)\}")


def _param(data, name):
    value = data.get(name) if isinstance(data, dict) else None
    if isinstance(value, list):
        value = value[0] if value else None
    return value


def _iam_user_resource(request, resource, ctx):
    if resource != "*" or not request._action.startswith("iam:"):
        return resource
    user = _param(request._data, "UserName")
    if not user and request._action in _CALLER_DEFAULT_ACTIONS:
        user = ctx.get("aws:username")
    if not user:
        return resource
    return f"arn:aws:iam::{request.account_id}:user/{user}"


def _check_element_matches(self, statement_element, value):
    patterns = self._statement[statement_element]
    ctx = _REQUEST_CONTEXT.get(None) or {}
    for pattern in patterns if isinstance(patterns, list) else [patterns]:
        if statement_element in ("Resource", "NotResource"):
            # An unknown variable matches nothing, as in IAM.
            pattern = _POLICY_VARIABLE.sub(lambda m: ctx.get(m.group(1).lower(), "\0"), pattern)
        if self._match(pattern, value):
            return True
    return False


_ac.IAMRequestBase.check_action_permitted = _check_action_permitted
_ac.IAMPolicyStatement._check_element_matches = _check_element_matches
_ac.IAMPolicyStatement._check_conditions = _check_conditions
_ac.IAMPolicyStatement.is_action_permitted = _statement_is_action_permitted


# ---- rekey sweep (src/sweep/, tests/sweep.rs): patches 6-9 ------------------------------------
# 6. DescribeRegions lists every Region of every partition as enabled, gov and China included, and
#    calls af-south-1, ap-southeast-3 and eu-south-1 (opt-in Regions in AWS) enabled. AWS lists
#    only the caller's partition, and without AllRegions only the enabled Regions: in an account
#    that opted into nothing, the 17 launched before March 2019. A sweep of "every enabled Region"
#    must see that list, not 38.
import collections
import io
import json
import threading
import time

from moto.ec2.models.availability_zones_and_regions import Region as _Ec2Region
from moto.ec2.responses import availability_zones_and_regions as _azr

_AWS_DEFAULT_REGIONS = {
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "ap-south-1", "ap-northeast-1",
    "ap-northeast-2", "ap-northeast-3", "ap-southeast-1", "ap-southeast-2", "ca-central-1",
    "eu-central-1", "eu-west-1", "eu-west-2", "eu-west-3", "eu-north-1", "sa-east-1",
}


def _partition_of(region):
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def _describe_regions(self):
    from moto.core.responses import ActionResult

    self.error_on_dryrun()
    names = self._get_param("RegionNames", [])
    all_regions = str(self._get_param("AllRegions", "false")).lower() == "true"
    partition = _partition_of(self.region)
    regions = []
    for r in self.ec2_backend.describe_regions(names):
        if _partition_of(r.name) != partition:
            continue
        enabled = partition != "aws" or r.name in _AWS_DEFAULT_REGIONS
        if not (enabled or all_regions or names):
            continue
        status = "opt-in-not-required" if enabled else "not-opted-in"
        regions.append(_Ec2Region(r.name, r.endpoint, status))
    return ActionResult({"Regions": regions})


_azr.AvailabilityZonesAndRegions.describe_regions = _describe_regions


# 7. Spot requests report CreateTime 2015-01-01 whenever they were made; AWS reports when. A sweep
#    that finds spot requests made in the window by their creation time would never see one.
from moto.ec2.models import spot_requests as _spot

_orig_spot_init = _spot.SpotInstanceRequest.__init__


def _spot_init(self, *args, **kwargs):
    self._rekey_created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    _orig_spot_init(self, *args, **kwargs)


_spot.SpotInstanceRequest.__init__ = _spot_init
_spot.SpotInstanceRequest.create_time = property(lambda self: self._rekey_created)


# 7b. SES v2 ListEmailIdentities: AWS serves it at GET /v2/email/identities, the path the AWS SDK
#     for Rust (and every SDK before botocore 1.43.105) calls; moto follows the newer botocore
#     model only (POST /v2/email/list-identities) and answers the GET with 404.
from moto.sesv2.responses import SESV2Response as _Sesv2Response

_orig_sesv2_action = _Sesv2Response._get_action


def _sesv2_action(self):
    if self.method == "GET" and self.path.rstrip("/") == "/v2/email/identities":
        self.uri_match = {}
        return "ListEmailIdentities"
    return _orig_sesv2_action(self)


_Sesv2Response._get_action = _sesv2_action


# 8. Test instrumentation, not fidelity: the emulator counts the signed requests it serves, by the
#    Region and service of their SigV4 scope (GET /moto-api/rekey/requests; POST clears), so a
#    test can hold the sweep's own request count against what the server saw; and it can answer a
#    Region slowly (POST /moto-api/rekey/region-delay?region=R&seconds=S; 0 removes), as a
#    throttled or distant Region does, so a test can show the per-Region deadline holds.
from moto.moto_api._internal import urls as _api_urls
from moto.moto_server.werkzeug_app import DomainDispatcherApplication as _Dispatcher

_REQUESTS = collections.Counter()
_REGION_DELAY = {}
_INSTRUMENT_LOCK = threading.Lock()
_SCOPE = re.compile(r"Credential=[^/,]+/\d{8}/([^/]+)/([^/]+)/aws4_request")
_orig_dispatch_call = _Dispatcher.__call__
# The bytes of a form-encoded body as sent (patch 9), for the signature check of this request.
_RAW_FORM_BODY = contextvars.ContextVar("rekey_raw_form_body", default=None)


def _dispatch_call(self, environ, start_response):
    scope = _SCOPE.search(environ.get("HTTP_AUTHORIZATION", ""))
    if scope and not environ.get("PATH_INFO", "").startswith("/moto-api"):
        region, service = scope.group(1), scope.group(2)
        with _INSTRUMENT_LOCK:
            _REQUESTS[(region, service)] += 1
            delay = _REGION_DELAY.get(region, 0)
        if delay:
            time.sleep(delay)
    raw = None
    if environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(raw)
    token = _RAW_FORM_BODY.set(raw)
    try:
        return _orig_dispatch_call(self, environ, start_response)
    finally:
        _RAW_FORM_BODY.reset(token)


_Dispatcher.__call__ = _dispatch_call


def _rekey_requests(request, full_url, headers):
    with _INSTRUMENT_LOCK:
        if request.method == "POST":
            _REQUESTS.clear()
        body = [{"region": r, "service": s, "count": n} for (r, s), n in sorted(_REQUESTS.items())]
    return 200, {"Content-Type": "application/json"}, json.dumps(body)


def _rekey_region_delay(request, full_url, headers):
    from urllib.parse import parse_qs, urlparse

    query = parse_qs(urlparse(full_url).query)
    region, seconds = query["region"][0], query["seconds"][0]
    with _INSTRUMENT_LOCK:
        if float(seconds) > 0:
            _REGION_DELAY[region] = float(seconds)
        else:
            _REGION_DELAY.pop(region, None)
    return 200, {}, "{}"


_api_urls.url_paths["{0}/moto-api/rekey/requests"] = _rekey_requests
_api_urls.url_paths["{0}/moto-api/rekey/region-delay"] = _rekey_region_delay


# 9. moto checks the signature of a form-encoded request (EC2, IAM, STS) against its own re-encoding
#    of the parsed form, which matches only clients that percent-encode exactly as botocore does;
#    AWS checks the bytes sent. The AWS SDK for Rust leaves `(` and `)` as they are, so a signed
#    CreateSnapshot whose description has them failed with AuthFailure. Sign-check the raw bytes.
_orig_create_aws_request_for_sig = _ac.IAMRequestBase._create_aws_request


def _create_aws_request_raw_form(self):
    request = _orig_create_aws_request_for_sig(self)
    raw = _RAW_FORM_BODY.get()
    if raw is not None and not self._body:
        request.data = raw
    return request


_ac.IAMRequestBase._create_aws_request = _create_aws_request_raw_form
# ---- end of rekey sweep patches ---------------------------------------------------------------


# ---- rekey discover: Secrets Manager authorises against the secret's ARN ------------------
# IAM evaluates Secrets Manager actions against the secret's ARN, so a policy can deny one
# secret (`Deny secretsmanager:GetSecretValue` on `arn:...:secret:locked-AbCdEf`) while the
# principal reads the others. moto checks every Secrets Manager action against "*", which a
# statement naming one ARN never matches: such a Deny is ignored and "a secret rekey cannot
# read" cannot be staged. This resolves the request's SecretId (name or ARN) to its ARN, as IAM
# does; an unknown secret stays "*" (the action then fails with moto's own not-found error).
from moto.secretsmanager import responses as _sm_responses  # noqa: E402


def _secretsmanager_resource(self):
    secret_id = self._get_param("SecretId")
    if not secret_id:
        return "*"
    try:
        return self.backend.secrets[secret_id].arn
    except Exception:  # not found, or a backend that cannot resolve it: moto's own check
        return "*"


_sm_responses.SecretsManagerResponse._determine_resource = _secretsmanager_resource
# ---- end rekey discover ----------------------------------------------------------------------


# 14. DynamoDB makes a conditional write atomic: of two PutItems conditioned on
#     attribute_not_exists(pk) that race, exactly one succeeds. moto's threaded server checks the
#     condition and writes the item without a lock, so two concurrent `rekey run`s could both
#     take the same user's lock and rotate it twice (LimitExceeded on the second CreateAccessKey).
#     One lock around every DynamoDB write restores the guarantee the lock table relies on.
import functools  # noqa: E402
import threading  # noqa: E402

from moto.dynamodb.models import DynamoDBBackend as _DynamoDBBackend  # noqa: E402

_DYNAMODB_WRITE_LOCK = threading.RLock()


def _atomic(method):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with _DYNAMODB_WRITE_LOCK:
            return method(*args, **kwargs)

    return wrapper


for _name in ("put_item", "update_item", "delete_item", "transact_write_items"):
    setattr(_DynamoDBBackend, _name, _atomic(getattr(_DynamoDBBackend, _name)))


# ---- rekey verify: IAM eventual consistency (patch 12) --------------------------------------
# 12. IAM is eventually consistent: a new key reaches the many hosts behind each STS (and other
#     service) endpoint one by one over seconds, and a deactivation (or reactivation) takes as long
#     to be seen everywhere (AWS docs "Changes that I make are not always immediately visible";
#     aws-vault PR #170; aws-rotate-iam-keys #81 failed 1 call in 10 after a passing check). moto
#     knows a key everywhere the moment it exists, so a rotation that trusts a key after a few
#     lucky checks, and an application that then breaks, would both look fine. This models N hosts;
#     after each change of a key's status (creation included) host i sees the change only
#     `delay_i` later, delay_i drawn uniformly in [0, window] per change and host; every signed
#     request lands on a random host, as calls on fresh connections do. A host that does not
#     (yet, or any longer) see the key Active answers InvalidClientTokenId, as IAM does.
#     Only changes made while the model is on are lagged; a deletion takes effect at once (moto
#     forgets the secret, and rekey never relies on a deleted key still working).
#     Off by default. POST /moto-api/rekey/propagation?endpoints=N&window=SECONDS&seed=S turns it
#     on (endpoints=0 turns it off); GET answers the settings and how many requests a lagging host
#     rejected, so a test can show the model really bit. Env REKEY_IAM_ENDPOINTS,
#     REKEY_IAM_WINDOW and REKEY_IAM_SEED set it at start.
import os
import random

from moto.iam import models as _iam_models


class _Propagation:
    def __init__(self):
        self.lock = threading.Lock()
        self.configure(0, 0.0, 0)

    def configure(self, endpoints, window, seed):
        with self.lock:
            self.endpoints = max(0, int(endpoints))
            self.window = max(0.0, float(window))
            self.delays = random.Random(seed)
            self.route = random.Random(seed + 1_000_003)
            # key id -> [(when, status before, status after, per-host delays)], in time order
            self.changes = {}
            self.lag_rejections = 0

    def on(self):
        return self.endpoints > 0

    def record(self, key_id, before, after):
        with self.lock:
            if not self.on():
                return
            delays = [self.delays.uniform(0.0, self.window) for _ in range(self.endpoints)]
            self.changes.setdefault(key_id, []).append((time.monotonic(), before, after, delays))

    def seen(self, key_id):
        """The key's status on the host this request landed on, None for a key with no lagged
        change (moto's own answer stands), "absent" for a key that host has not heard of."""
        with self.lock:
            changes = self.changes.get(key_id)
            if not self.on() or not changes:
                return None
            host = self.route.randrange(self.endpoints)
            now = time.monotonic()
            status = changes[0][1] or "absent"
            for when, _, after, delays in changes:
                if when + delays[host] <= now:
                    status = after
            return status

    def rejected(self):
        with self.lock:
            self.lag_rejections += 1

    def report(self):
        with self.lock:
            return {
                "endpoints": self.endpoints,
                "window": self.window,
                "lagged_keys": len(self.changes),
                "lag_rejections": self.lag_rejections,
            }


_PROPAGATION = _Propagation()
if os.environ.get("REKEY_IAM_ENDPOINTS"):
    _PROPAGATION.configure(
        int(os.environ["REKEY_IAM_ENDPOINTS"]),
        float(os.environ.get("REKEY_IAM_WINDOW", "5")),
        int(os.environ.get("REKEY_IAM_SEED", "0")),
    )

_orig_key_setattr = _iam_models.AccessKey.__setattr__


def _key_setattr(self, name, value):
    if name == "status":
        before = self.__dict__.get("status")  # None while the key is being created
        if before != value:
            _PROPAGATION.record(self.__dict__.get("access_key_id"), before, value)
    _orig_key_setattr(self, name, value)


_iam_models.AccessKey.__setattr__ = _key_setattr

_patched_user_key_init = _ac.IAMUserAccessKey.__init__  # patch 1: Inactive keys fail


def _propagated_user_key_init(self, account_id, partition, access_key_id, headers):
    seen = _PROPAGATION.seen(access_key_id)
    if seen is None:
        return _patched_user_key_init(self, account_id, partition, access_key_id, headers)
    # moto's own lookup (the secret to check the signature with; a deleted key fails here).
    _orig_user_key_init(self, account_id, partition, access_key_id, headers)
    if seen != "Active":
        _PROPAGATION.rejected()
        raise _ac.CreateAccessKeyFailure(reason="InvalidId")


_ac.IAMUserAccessKey.__init__ = _propagated_user_key_init


def _rekey_propagation(request, full_url, headers):
    from urllib.parse import parse_qs, urlparse

    if request.method == "POST":
        query = parse_qs(urlparse(full_url).query)
        one = lambda name, default: query.get(name, [default])[0]  # noqa: E731
        _PROPAGATION.configure(int(one("endpoints", "0")), float(one("window", "0")), int(one("seed", "0")))
    return 200, {"Content-Type": "application/json"}, json.dumps(_PROPAGATION.report())


_api_urls.url_paths["{0}/moto-api/rekey/propagation"] = _rekey_propagation


# 12b. Test seam, not fidelity: hold the next CreateAccessKey for a while before IAM handles it
#     (POST /moto-api/rekey/hold-create-key?seconds=S; GET says how many are held now and in all),
#     so that a test can have another actor create a key between rekey's preflight and its own
#     CreateAccessKey, a race that is otherwise a few milliseconds wide. Other requests go on.
_HOLD_CREATE = {"armed": 0, "seconds": 0.0, "holding": 0, "held": 0}
_orig_create_access_key = _iam_models.IAMBackend.create_access_key


def _held_create_access_key(self, *args, **kwargs):
    with _INSTRUMENT_LOCK:
        hold = _HOLD_CREATE["armed"] > 0
        if hold:
            _HOLD_CREATE["armed"] -= 1
            _HOLD_CREATE["holding"] += 1
            _HOLD_CREATE["held"] += 1
            seconds = _HOLD_CREATE["seconds"]
    if hold:
        try:
            time.sleep(seconds)
        finally:
            with _INSTRUMENT_LOCK:
                _HOLD_CREATE["holding"] -= 1
    return _orig_create_access_key(self, *args, **kwargs)


_iam_models.IAMBackend.create_access_key = _held_create_access_key


def _rekey_hold_create_key(request, full_url, headers):
    from urllib.parse import parse_qs, urlparse

    with _INSTRUMENT_LOCK:
        if request.method == "POST":
            _HOLD_CREATE["armed"] = 1
            _HOLD_CREATE["seconds"] = float(parse_qs(urlparse(full_url).query)["seconds"][0])
        body = dict(_HOLD_CREATE)
    return 200, {"Content-Type": "application/json"}, json.dumps(body)


_api_urls.url_paths["{0}/moto-api/rekey/hold-create-key"] = _rekey_hold_create_key
# ---- end rekey verify ---------------------------------------------------------------------


# ---- rekey incident hunt (src/incident/hunt/window.rs, tests/incident_live.rs): patch 13 ------
# 13. GetLoginProfile reports the user's CreateDate as the password's; IAM reports when the login
#     profile itself was created. The hunt finds console passwords made while rekey responds (a
#     password added to an existing user) by that date, so under moto it would never see one. This
#     records when each login profile is created and reports that.
from moto.core.responses import ActionResult as _ActionResult
from moto.core.utils import utcnow as _utcnow
from moto.iam.models import IAMBackend as _IAMBackend
from moto.iam.responses import IamResponse as _IamResponse

_moto_create_login_profile = _IAMBackend.create_login_profile


def _create_login_profile(self, user_name, password):
    user = _moto_create_login_profile(self, user_name, password)
    user.rekey_login_profile_created = _utcnow()
    return user


def _get_login_profile(self):
    user = self.backend.get_login_profile(self._get_param("UserName"))
    return _ActionResult(
        {
            "LoginProfile": {
                "UserName": user.name,
                "CreateDate": getattr(user, "rekey_login_profile_created", user.create_date),
                "PasswordResetRequired": user.password_reset_required,
            }
        }
    )


_IAMBackend.create_login_profile = _create_login_profile
_IamResponse.get_login_profile = _get_login_profile
# ---- end rekey incident hunt -------------------------------------------------------------------


# ---- rekey incident: patch 11 ----------------------------------------------------------------
# 11. CloudTrail LookupEvents, served like AWS. moto answers it with HTTP 500 and records no events,
#     so nothing could show that `rekey incident` fences the attacker out in seconds whatever the
#     size of the key's history. AWS serves event history per Region, newest first, at most 50
#     events a page (MaxResults), with an opaque NextToken, filtered by one LookupAttribute and by
#     StartTime/EndTime, and allows 2 requests/s per account and Region, answering
#     ThrottlingException beyond (a token bucket of 2 here, refilled at the rate).
#     Tests seed the history through POST /moto-api/rekey/history (JSON): "series" describe
#     millions of events without storing them (event i of a series happens at newest - i*interval,
#     generated when a page needs it: seeding 3,000,000 events is one request), "events" are
#     single raw CloudTrail records (AssumeRole, the attacker's first calls …), "rate" scales the
#     per-Region limit so that a full read does not take minutes of CI; {"reset": true} clears.
#     REKEY_HISTORY_RATE sets the rate at start.
import base64  # noqa: E402
import bisect  # noqa: E402

from moto.cloudtrail import responses as _ct_responses  # noqa: E402

_HISTORY_LOCK = threading.Lock()
_HISTORY = {"series": [], "events": {}, "rate": float(__import__("os").environ.get("REKEY_HISTORY_RATE", "2"))}
_HISTORY_BUCKETS = {}


def _epoch(value):
    if value is None or value == "":
        return None
    if isinstance(value, (int, float)):
        return float(value)
    return _parse_date(str(value)).timestamp()


def _series_event(series, i):
    moment = series["newest"] - i * series["interval"]
    when = datetime.datetime.fromtimestamp(moment, _UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    record = {
        "eventVersion": "1.09",
        "userIdentity": {
            "type": "IAMUser",
            "principalId": "AIDAREKEYHISTORY",
            "arn": series.get("arn", ""),
            "accountId": series.get("account", "123456789012"),
            "accessKeyId": series["access_key_id"],
            "userName": series.get("user_name", ""),
        },
        "eventTime": when,
        "eventSource": series.get("event_source", "sts.amazonaws.com"),
        "eventName": series.get("event_name", "GetCallerIdentity"),
        "awsRegion": series["region"],
        "sourceIPAddress": series["source_ip"],
        "userAgent": series.get("user_agent", "aws-sdk-rust/1.3"),
        "requestParameters": None,
        "responseElements": None,
        "requestID": f"{series['id']}-{i:09d}",
        "eventID": f"{series['id']}-{i:09d}",
        "readOnly": True,
        "eventType": "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": series.get("account", "123456789012"),
    }
    return moment, record


def _matches(record, attribute):
    if attribute is None:
        return True
    key, value = attribute
    identity = record.get("userIdentity") or {}
    if key == "AccessKeyId":
        return identity.get("accessKeyId") == value
    if key == "Username":
        return identity.get("userName") == value
    if key == "EventName":
        return record.get("eventName") == value
    if key == "EventSource":
        return record.get("eventSource") == value
    if key == "EventId":
        return record.get("eventID") == value
    return False


def _series_range(series, start, end):
    """Indices [lo, hi) of a series whose times fall in [start, end]."""
    newest, step, count = series["newest"], series["interval"], series["count"]
    lo = 0 if end is None or end >= newest else int(-(-(newest - end) // step))
    hi = count if start is None else min(count, int((newest - start) // step) + 1)
    return max(lo, 0), max(hi, 0)


def _throttled(region):
    now = time.monotonic()
    with _HISTORY_LOCK:
        rate = _HISTORY["rate"]
        tokens, at = _HISTORY_BUCKETS.get(region, (2.0, now))
        tokens = min(2.0, tokens + (now - at) * rate)
        if tokens < 1.0:
            _HISTORY_BUCKETS[region] = (tokens, now)
            return True
        _HISTORY_BUCKETS[region] = (tokens - 1.0, now)
        return False


def _lookup_events(self):
    from moto.core.exceptions import JsonRESTError as _Json

    region = self.region
    if _throttled(region):
        raise _Json("ThrottlingException", "Rate exceeded")
    attributes = self._get_param("LookupAttributes") or []
    if len(attributes) > 1:
        raise _Json("InvalidLookupAttributesException", "You cannot specify more than one lookup attribute.")
    attribute = (attributes[0]["AttributeKey"], attributes[0]["AttributeValue"]) if attributes else None
    start, end = _epoch(self._get_param("StartTime")), _epoch(self._get_param("EndTime"))
    limit = max(1, min(50, int(self._get_param("MaxResults") or 50)))
    token = self._get_param("NextToken")
    with _HISTORY_LOCK:
        series = [s for s in _HISTORY["series"] if s["region"] == region and _matches(_series_event(s, 0)[1], attribute)]
        explicit = _HISTORY["events"].get(region, ([], []))
    # One cursor per series and one over the explicit events, all newest first.
    cursors = json.loads(base64.b64decode(token)) if token else {}
    heads = []
    for s in series:
        lo, hi = _series_range(s, start, end)
        at = max(lo, cursors.get(s["id"], lo))
        heads.append(["s", s, at, hi])
    times, records = explicit
    # `times` ascending (negated newest-first keys): find the window.
    lo = 0 if end is None else bisect.bisect_left(times, -end)
    hi = len(times) if start is None else bisect.bisect_right(times, -start)
    heads.append(["x", None, max(lo, cursors.get("x", lo)), hi])
    page = []
    while len(page) < limit:
        best = None
        for h in heads:
            kind, s, at, hi = h
            if kind == "x":
                while at < hi and not _matches(records[at], attribute):
                    at += 1
                h[2] = at
                if at >= hi:
                    continue
                moment = -times[at]
            else:
                if at >= hi:
                    continue
                moment = s["newest"] - at * s["interval"]
            if best is None or moment > best[0]:
                best = (moment, h)
        if best is None:
            break
        h = best[1]
        if h[0] == "x":
            page.append((best[0], records[h[2]]))
        else:
            page.append(_series_event(h[1], h[2]))
        h[2] += 1
    more = any(h[2] < h[3] for h in heads)
    events = []
    for moment, record in page:
        identity = record.get("userIdentity") or {}
        events.append(
            {
                "EventId": record.get("eventID"),
                "EventName": record.get("eventName"),
                "ReadOnly": str(record.get("readOnly", True)).lower(),
                "AccessKeyId": identity.get("accessKeyId"),
                "EventTime": moment,
                "EventSource": record.get("eventSource"),
                "Username": identity.get("userName"),
                "Resources": [],
                "CloudTrailEvent": json.dumps(record),
            }
        )
    body = {"Events": events}
    if more:
        state = {(h[1]["id"] if h[0] == "s" else "x"): h[2] for h in heads}
        body["NextToken"] = base64.b64encode(json.dumps(state).encode()).decode()
    return json.dumps(body)


_ct_responses.CloudTrailResponse.lookup_events = _lookup_events


def _rekey_history(request, full_url, headers):
    # A form-encoded body was already read by patch 8, which keeps its bytes.
    body = getattr(request, "data", None) or _RAW_FORM_BODY.get() or b"{}"
    spec = json.loads(body)
    with _HISTORY_LOCK:
        if spec.get("reset"):
            _HISTORY["series"].clear()
            _HISTORY["events"].clear()
            _HISTORY_BUCKETS.clear()
        if "rate" in spec:
            _HISTORY["rate"] = float(spec["rate"])
        for s in spec.get("series", []):
            s = dict(s)
            s["id"] = s.get("id") or f"series{len(_HISTORY['series'])}"
            s["newest"] = _epoch(s["newest"])
            s["interval"] = float(s["interval"])
            s["count"] = int(s["count"])
            _HISTORY["series"].append(s)
        for record in spec.get("events", []):
            region = record.get("awsRegion", "us-east-1")
            times, records = _HISTORY["events"].setdefault(region, ([], []))
            key = -_epoch(record["eventTime"])
            at = bisect.bisect_right(times, key)
            times.insert(at, key)
            records.insert(at, record)
        total = sum(s["count"] for s in _HISTORY["series"]) + sum(len(t) for t, _ in _HISTORY["events"].values())
    return 200, {"Content-Type": "application/json"}, json.dumps({"events": total, "rate": _HISTORY["rate"]})


_api_urls.url_paths["{0}/moto-api/rekey/history"] = _rekey_history
# ---- end rekey incident patch 11 --------------------------------------------------------------


if __name__ == "__main__":
    print(f"{_PATCHED} (moto {moto.__version__})", flush=True)
    moto.server.main(sys.argv[1:])
