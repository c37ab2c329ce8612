"""Reading cachelock's structured errors: the google.rpc.Status details of a failed call."""

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Optional

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

DOMAIN = "cachelock.dev"


@dataclass
class Details:
    """What a cachelock error says beyond its code and message."""

    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict = field(default_factory=dict)
    # field path -> description, for INVALID_ARGUMENT
    violations: dict = field(default_factory=dict)
    retry_after: Optional[timedelta] = None


def details(error: grpc.RpcError) -> Details:
    """Decodes ErrorInfo, BadRequest and RetryInfo from a failed call."""
    found = Details(code=error.code(), message=error.details())
    status = rpc_status.from_call(error)
    if status is None:
        return found  # not an answer from cachelock (a proxy, a transport failure)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.domain == DOMAIN:
                found.reason = info.reason
                found.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            found.violations = {v.field: v.description for v in bad.field_violations}
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            found.retry_after = retry.retry_delay.ToTimedelta()
    return found
