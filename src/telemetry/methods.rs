//! The gRPC methods the server knows, read from its service descriptors, and
//! their labels as go-grpc-prometheus names them: a label never holds a path a
//! caller made up.

use std::{collections::HashMap, sync::LazyLock};

use prometheus_client::encoding::EncodeLabelSet;
use prost::Message;

/// A gRPC method, as go-grpc-prometheus labels it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabels {
    /// `unary` or `server_stream` (or `bidi_stream` for reflection).
    pub grpc_type: &'static str,
    /// The fully qualified service name.
    pub grpc_service: &'static str,
    /// The method name.
    pub grpc_method: &'static str,
}

/// A gRPC method and the code it answered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandledLabels {
    /// `unary` or a streaming kind.
    pub grpc_type: &'static str,
    /// The fully qualified service name.
    pub grpc_service: &'static str,
    /// The method name.
    pub grpc_method: &'static str,
    /// The status code's name, such as `OK` or `UNAVAILABLE`.
    pub grpc_code: &'static str,
}

/// A gRPC method the server knows, or the one "unknown" method that stands for
/// every other path: its labels, and where [`Metrics`] keeps its series.
#[derive(Debug, Clone, Copy)]
pub struct Method {
    /// The method's labels.
    pub labels: &'static MethodLabels,
    pub(super) index: usize,
}

static UNKNOWN_METHOD: MethodLabels = MethodLabels {
    grpc_type: "unknown",
    grpc_service: "unknown",
    grpc_method: "unknown",
};

/// Every gRPC method the server knows, by path, with its labels: read from the
/// service descriptors once, so that a label never holds a path a caller made up.
static KNOWN_METHODS: LazyLock<HashMap<String, Method>> = LazyLock::new(|| {
    let mut methods = HashMap::new();
    for set in [
        crate::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        let Ok(files) = prost_types::FileDescriptorSet::decode(set) else {
            continue;
        };
        for file in files.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name: &'static str =
                    Box::leak(format!("{package}.{}", service.name.unwrap_or_default()).into_boxed_str());
                for method in service.method {
                    let grpc_type = match (method.client_streaming(), method.server_streaming()) {
                        (false, false) => "unary",
                        (false, true) => "server_stream",
                        (true, false) => "client_stream",
                        (true, true) => "bidi_stream",
                    };
                    let method_name: &'static str = Box::leak(method.name.unwrap_or_default().into_boxed_str());
                    let labels = Box::leak(Box::new(MethodLabels {
                        grpc_type,
                        grpc_service: service_name,
                        grpc_method: method_name,
                    }));
                    let index = methods.len();
                    methods
                        .entry(format!("/{service_name}/{method_name}"))
                        .or_insert(Method { labels, index });
                }
            }
        }
    }
    methods
});

/// The method at `path`; the one "unknown" method for any other path.
pub fn method(path: &str) -> Method {
    KNOWN_METHODS.get(path).copied().unwrap_or(Method {
        labels: &UNKNOWN_METHOD,
        index: KNOWN_METHODS.len(),
    })
}

/// The name of a gRPC status code, as go-grpc-prometheus labels it.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// How many methods the server knows.
pub fn known_methods() -> usize {
    KNOWN_METHODS.len()
}
