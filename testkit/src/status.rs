//! Durations in protobuf, and what a failed call must carry.

use tonic_types::StatusExt;

/// A protobuf duration of `millis` milliseconds.
pub fn millis(millis: i64) -> prost_types::Duration {
    prost_types::Duration {
        seconds: millis / 1000,
        nanos: ((millis % 1000) * 1_000_000) as i32,
    }
}

/// A protobuf duration as milliseconds.
pub fn as_millis(duration: &prost_types::Duration) -> i64 {
    duration.seconds * 1000 + i64::from(duration.nanos) / 1_000_000
}

/// Asserts an INVALID_ARGUMENT whose message starts with the field's name, and
/// whose details name it too: a `BadRequest` field violation and an
/// `ErrorInfo` with reason INVALID_FIELD.
pub fn assert_invalid(status: tonic::Status, field: &str) {
    assert_reason(&status, tonic::Code::InvalidArgument, "INVALID_FIELD");
    assert!(
        status.message().starts_with(&format!("{field}:")),
        "message {:?} should name {field}",
        status.message()
    );
    let details = status.get_error_details();
    let violations = &details.bad_request().expect("a BadRequest detail").field_violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert_eq!(violations[0].field, field);
    assert!(!violations[0].description.is_empty());
}

/// Asserts `status` has `code` and carries an `ErrorInfo` of the cachelock.dev
/// domain with `reason`, decoded from the status details as any client would;
/// and a `RetryInfo` with a positive delay exactly when the code is UNAVAILABLE
/// or RESOURCE_EXHAUSTED and waiting can help.
pub fn assert_reason(status: &tonic::Status, code: tonic::Code, reason: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    let details = status.get_error_details();
    let info = details
        .error_info()
        .unwrap_or_else(|| panic!("no ErrorInfo in {status:?}"));
    assert_eq!(info.reason, reason, "{status:?}");
    assert_eq!(info.domain, "cachelock.dev");
    let retry = details.retry_info().and_then(|retry| retry.retry_delay);
    let waiting_helps =
        matches!(code, tonic::Code::Unavailable | tonic::Code::ResourceExhausted) && reason != "RESPONSE_TOO_LARGE";
    assert_eq!(retry.is_some(), waiting_helps, "RetryInfo in {status:?}");
    assert!(retry.is_none_or(|delay| !delay.is_zero()), "{status:?}");
}
