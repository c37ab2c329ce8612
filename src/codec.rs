//! The protobuf codec every generated service uses (build.rs names it): a
//! request that is not valid protobuf — invalid UTF-8 in a string, a truncated
//! field — is the caller's error, INVALID_ARGUMENT, not INTERNAL.

use tonic::{
    Status,
    codec::{BufferSettings, Codec, DecodeBuf, Decoder},
};
use tonic_prost::ProstCodec;

use crate::error::Error;

/// The protobuf codec of every service, with decoding errors reported as the
/// caller's: INVALID_ARGUMENT. (gRPC's own libraries say INTERNAL, which here
/// means a fault of the service, logged for its operators.)
#[derive(Debug, Clone, Default)]
pub struct CheckedCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = CheckedDecoder<<ProstCodec<T, U> as Codec>::Decoder>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder {
            inner: self.inner.decoder(),
        }
    }
}

/// A decoder whose errors are INVALID_ARGUMENT.
#[derive(Debug)]
pub struct CheckedDecoder<D> {
    inner: D,
}

impl<D> Decoder for CheckedDecoder<D>
where
    D: Decoder<Error = Status>,
{
    type Item = D::Item;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.inner
            .decode(buf)
            .map_err(|status| Error::Malformed(status.message().to_owned()).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.inner.buffer_settings()
    }
}
